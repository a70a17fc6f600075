"""Wiring: the service objects of one process, built from configuration on first use.

Nothing is built at import time, so tests and the local stack set the environment
(moto, endpoints, table names) first; `reset()` forgets everything for the next test.
"""

import threading
from typing import TYPE_CHECKING

from chalicelib.auth.logins import Authenticator, LoginThrottle
from chalicelib.auth.users import UserStore
from chalicelib.common import aws
from chalicelib.common.config import LAMBDA_RUN_LIMIT, Settings
from chalicelib.common.model import Engine
from chalicelib.notebooks.service import NotebookService
from chalicelib.runs.dispatch import RunDispatch
from chalicelib.runs.engines import Dispatcher, EngineRouter, FargateTasks, LambdaDispatcher
from chalicelib.runs.fargate_pool import FargatePool
from chalicelib.runs.queue import FairQueue
from chalicelib.runs.reaper import Reaper
from chalicelib.runs.records import RunRecords
from chalicelib.runs.service import RunService
from chalicelib.runs.start import RunStarter
from chalicelib.runs.webhooks import Webhooks
from chalicelib.schedules.locks import ScheduleLocks
from chalicelib.schedules.rules import ScheduleRules
from chalicelib.schedules.scheduler import Scheduler
from chalicelib.storage.files import NotebookFiles
from chalicelib.storage.notebook_table import NotebookTable
from chalicelib.storage.run_table import RunTable

if TYPE_CHECKING:
    from chalicelib.runner.executor import RunExecutor


class Services:
    """Everything a request or a runner needs, sharing one configuration."""

    def __init__(self, settings: Settings):
        self.settings = settings
        region = settings.region
        users_table = aws.dynamodb_table(settings.users_table, region)
        self.users = UserStore(users_table, settings.password_scrypt_n)
        throttle = LoginThrottle(
            users_table, settings.login_attempts, settings.login_window, settings.login_source_attempts
        )
        self.authenticator = Authenticator(self.users, throttle=throttle)
        self.files = NotebookFiles(aws.client("s3", region), settings.bucket)
        notebook_table = NotebookTable(aws.dynamodb_table(settings.notebooks_table, region))
        self.notebooks = NotebookService(notebook_table, self.files, settings)
        self.dispatcher = _dispatcher(settings)
        run_table = RunTable(aws.dynamodb_table(settings.runs_table, region), notebook_table)
        # Deliveries of runs that end in the API go to the runner function (`invoke`),
        # whatever engine ran the run.
        self.webhooks = Webhooks(self.notebooks, notebook_table, run_table, self.dispatcher, settings)
        self.run_dispatch = RunDispatch(
            run_table, self.notebooks, self.files, self.dispatcher, settings, webhooks=self.webhooks
        )
        starter = RunStarter(run_table, self.notebooks, self.files, settings, self.run_dispatch)
        self.records = RunRecords(run_table, settings)
        self.runs = RunService(
            run_table,
            self.notebooks,
            self.files,
            self.dispatcher,
            settings,
            starter,
            webhooks=self.webhooks,
        )
        self.schedule_rules = ScheduleRules(aws.client("events", region), notebook_table, settings, self.runner_arn)
        self.scheduler = Scheduler(
            self.schedule_rules,
            self.notebooks,
            notebook_table,
            ScheduleLocks(notebook_table),
            settings,
            self.dispatcher,
        )
        self.queue = FairQueue(run_table, settings)
        self.fargate_pool = FargatePool(self.queue, self.dispatcher, self.run_dispatch)
        self.reaper = Reaper(run_table, self.runs, self.run_dispatch, self.dispatcher)
        self.notebooks.add_dependent(self.scheduler)
        self.notebooks.add_dependent(self.runs)
        self._runner_arn = settings.runner_arn
        self._runner_executor: "RunExecutor | None" = None

    def runner_arn(self) -> str:
        """The runner function's ARN, the target of schedule rules."""
        if self._runner_arn is None:
            account = aws.client("sts", self.settings.region).get_caller_identity()["Account"]
            self._runner_arn = (
                f"arn:aws:lambda:{self.settings.region}:{account}:function:{self.settings.runner_function}"
            )
        return self._runner_arn

    def runner_executor(self, kernel_uid=None) -> "RunExecutor":
        """The executor of this process, a Lambda container, a local Lambda worker or a
        Fargate task (whose kernels run as `kernel_uid`): one per process, since its
        runner ends every process a run leaves below this one.

        The process is made non-dumpable first, so kernels (same user) cannot read its
        credentials or settings through /proc or attach to it.
        """
        if self._runner_executor is None:
            # Imported here: the API function never loads the runner (pyproject.toml's import contract).
            from chalicelib.runner import sandbox
            from chalicelib.runner.notebook_runner import NotebookRunner, prepare_lambda_environment

            shared_tmp = prepare_lambda_environment()  # before the first kernel: only /tmp is writable
            sandbox.forbid_inspection()
            runner = NotebookRunner(
                self.settings.run_timeout,
                shared_tmp=shared_tmp,
                sweep_whole_user=shared_tmp is not None,
                preload=self.settings.preload_modules,
                kernel_uid=kernel_uid,
            )
            self._runner_executor = self.executor_on(runner)
        return self._runner_executor

    def executor_on(self, runner) -> "RunExecutor":
        """A RunExecutor of these services that executes runs on `runner` (runner.NotebookRunner)."""
        from chalicelib.runner.executor import RunExecutor  # as above: only where runs execute

        return RunExecutor(
            self.records,
            self.run_dispatch,
            self.webhooks,
            self.files,
            self.scheduler,
            self.schedule_rules,
            runner,
            queue=self.queue,
            fargate_pool=self.fargate_pool,
            reaper=self.reaper,
        )


def _dispatcher(settings: Settings) -> Dispatcher:
    """Lambda and, where the deployment configures ECS, Fargate for the longer runs; in the
    local stack, its local Lambda (AWS_ENDPOINT_URL_LAMBDA points boto3 at it), for any run."""
    region = settings.region
    if settings.local_stack:
        return LambdaDispatcher(aws.client("lambda", region), settings.runner_function, engine=Engine.LOCAL)
    on_lambda = LambdaDispatcher(aws.client("lambda", region), settings.runner_function, engine=Engine.LAMBDA)
    cluster, task_definition = settings.ecs_cluster, settings.ecs_task_definition
    if not settings.fargate or cluster is None or task_definition is None:
        return on_lambda
    tasks = FargateTasks(
        aws.client("ecs", region),
        cluster,
        task_definition,
        settings.ecs_container,
        settings.ecs_subnets,
        settings.ecs_security_groups,
        settings.ecs_assign_public_ip,
    )
    return EngineRouter(on_lambda, tasks, LAMBDA_RUN_LIMIT)


_lock = threading.Lock()
_current = None


def get() -> Services:
    """This process's services, built on first use from the environment."""
    global _current
    with _lock:
        if _current is None:
            _current = Services(Settings.from_env())
        return _current


def reset() -> None:
    """Forget the services and AWS clients, so the next use reads the environment again."""
    global _current
    with _lock:
        _current = None
    aws.reset()
