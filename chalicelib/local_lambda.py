"""The local stand-in for the runner function: a pool of worker processes.

Each worker is a process of its own, as each warm Lambda container is: it runs one
invocation at a time through the same handler as the Lambda, keeps the next kernel
started ahead of need, and after every run ends every process that run left behind
(see sandbox.py). Separate processes also keep each worker's kernels and run state
out of the API server's memory.
"""
import logging
import multiprocessing
import signal

from .sandbox import SandboxError, forbid_inspection

log = logging.getLogger(__name__)


def _work(events) -> None:
    """One worker: handle events from the queue until a None arrives (or SIGTERM)."""
    forbid_inspection()  # before anything: the environment holds the embedded AWS's credentials
    # Ctrl-C reaches the whole process group; the stack stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    from . import services

    executor = services.get().runner_executor()
    try:
        executor.prewarm()
        while True:
            event = events.get()
            if event is None:
                return
            try:
                executor.handle(event)
            except SandboxError:
                log.exception("worker unfit for another run: it stops")  # as a Lambda container would
                return
            except Exception:  # noqa: BLE001 - a worker outlives any one event
                log.exception("local runner failed on %s", event)
    finally:
        executor.close()


class LocalDispatcher:
    """Hands runs to a bounded pool of worker processes, first come first served."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")  # a clean interpreter, no copied locks
        self._events = context.Queue()
        self._processes = [
            context.Process(target=_work, args=(self._events,), name=f"runner-{i}", daemon=True)
            for i in range(max(1, workers))
        ]

    def start(self) -> None:
        """Start the workers (each reads the environment, AWS endpoint included, as it is now)."""
        for process in self._processes:
            process.start()

    def dispatch(self, event: dict) -> None:
        """Queue `event` for the next free worker."""
        self._events.put(event)

    def stop(self, timeout: float = 10.0) -> None:
        """Let the workers finish what they are doing, then end them and their kernels."""
        for _ in self._processes:
            self._events.put(None)
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker still shuts its kernel down
                process.join(timeout)
