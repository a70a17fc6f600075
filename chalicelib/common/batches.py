"""Many AWS calls in one request: fixed-size chunks, and a bounded pool of threads.

A request may name up to 1,000 notebooks. AWS batches what it can (BatchGetItem: 100
keys, TransactWriteItems: 100 actions, DeleteObjects: 1,000 keys); what it cannot batch
(an EventBridge rule, a Lambda invocation, a Query per notebook) runs on a few threads
at once, so 1,000 calls take the time of about 1,000 / workers.
"""

from concurrent.futures import ThreadPoolExecutor


def chunks(items: list, size: int) -> list:
    """`items` cut into lists of at most `size`, in order."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def in_parallel(work, items: list, workers: int) -> list:
    """`[work(item) for item in items]`, on up to `workers` threads; results in order.

    Every call runs to its end; then the first exception (in `items` order), if any, is
    raised, so a caller that undoes work knows all of it has stopped.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
    for future in futures:
        future.result()  # raises the first failure
    return [future.result() for future in futures]
