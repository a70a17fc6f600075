"""The runner as an ECS Fargate task, for runs longer than Lambda allows.

`python -m chalicelib.fargate_task <run_id>` executes that one run with the same handler
as the runner function, in the same image, then exits: a task serves one run, so nothing
of it is left for another.
"""
import json
import logging
import sys

from . import services


def main(argv) -> int:
    """Run the run named in argv[1]; 0 whatever the notebook did (its outcome is recorded)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if len(argv) != 2:
        print("usage: python -m chalicelib.fargate_task RUN_ID", file=sys.stderr)
        return 2
    result = services.get().runner_executor().handle({"run_id": argv[1]})
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
