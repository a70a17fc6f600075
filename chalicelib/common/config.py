"""Configuration, read from environment variables in this one place.

Every setting has a default that suits the local stack; a deployment sets the
environment variables in `.chalice/config.json`. `AWS_ENDPOINT_URL` is not read here:
boto3 honours it itself, which is how tests and the local stack redirect AWS.
"""

import os
from dataclasses import dataclass
from typing import Optional

from chalicelib.common.model import Pool

SIX_MB = 6 * 1024 * 1024
# After its run timeout, a runner gets this long to report (stop the kernel, store the
# output, record the end) before the API declares it lost.
REPORT_GRACE_SECONDS = 60
# The longest run timeout Lambda takes: its 15 minutes less that grace.
LAMBDA_RUN_LIMIT = 900.0 - REPORT_GRACE_SECONDS


def _int(env, name, default):
    return _number(env, name, default, int)


def _float(env, name, default):
    return _number(env, name, default, float)


def _number(env, name, default, kind):
    """The setting `name` as a `kind` number, `default` when unset or empty; a ValueError
    naming the setting when it is not such a number."""
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None


def _list(env, name) -> tuple:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """What the service needs to know about where it runs."""

    region: str = "us-east-1"
    bucket: str = "notebooks-files"
    notebooks_table: str = "notebooks"
    runs_table: str = "notebooks-runs"
    users_table: str = "notebooks-users"
    # name:password,... seeded by the local stack only; never read in a deployment.
    local_users: str = "admin:admin"
    cors_origin: Optional[str] = None
    max_ids: int = 1000
    max_body_bytes: int = SIX_MB
    runner_function: str = "notebooks-dev-runner"
    runner_arn: Optional[str] = None
    local_workers: int = os.cpu_count() or 1
    # Served by the local stack (`make dev`, `chalice local --stage local`), not by AWS.
    local_stack: bool = False
    # A run's default timeout (at most LAMBDA_RUN_LIMIT, as schedules fire the runner
    # function directly). A run asking for longer than LAMBDA_RUN_LIMIT runs on Fargate,
    # up to the maximum.
    run_timeout: float = LAMBDA_RUN_LIMIT
    max_run_timeout: float = 12 * 3600.0
    # The Fargate engine (all four set by the deployment's template; unset: no Fargate).
    ecs_cluster: Optional[str] = None
    ecs_task_definition: Optional[str] = None
    ecs_subnets: tuple = ()
    ecs_security_groups: tuple = ()
    ecs_container: str = "runner"
    ecs_assign_public_ip: bool = True
    # How long a queued run may wait for a runner before it is failed.
    queue_timeout: float = 6 * 3600.0
    # The fair queue (docs/fair-share.md): runs executing at once on the runner function
    # (its reserved concurrency; the local stack: its workers), and per user.
    runner_capacity: int = 10
    # Of the runner function's capacity, invocations kept free of runs, for what must not
    # wait behind them: drains (the Fargate pool's among them), the reaper, webhook
    # deliveries, failed events. The template keeps 2.
    runner_headroom: int = 0
    # Fargate tasks running at once (the deployment's own bound; the account's Fargate vCPU
    # quota bounds it too): the fair queue's Fargate pool.
    fargate_capacity: int = 10
    # Unset: half the capacity (see `running_per_user`).
    max_running: Optional[int] = None
    # How often the reaper ends the runs past their deadline (the local stack's clock;
    # a deployment's EventBridge rule has its own rate).
    reap_interval: float = 120.0
    timezone: str = "UTC"
    rule_prefix: str = "notebooks-"
    # Failed logins allowed per user and source address in a window; past them, that
    # user's logins from that address are 429 until it ends.
    login_attempts: int = 5
    login_window: float = 300.0
    # Failed logins allowed per source address (whatever the users) in a window: the
    # limit on password spraying. 0: none.
    login_source_attempts: int = 50
    # scrypt's N for new password hashes: OWASP's 2^17 (128 MiB a check). Lower only in tests.
    password_scrypt_n: int = 2**17

    # Lambda returns at most 6 MB; a larger JSON answer is served from S3 (303).
    max_response_bytes: int = SIX_MB
    # The largest executed notebook the runner stores; beyond it outputs are dropped.
    max_output_bytes: int = 64 * 1024 * 1024
    # A run's `parameters`, as JSON; a run record must stay under DynamoDB's 400 KB.
    max_parameters_bytes: int = 64 * 1024
    # A run's live log (runs/log.py): past it, its first and last parts around a marker.
    max_log_bytes: int = 1024 * 1024
    # Webhook URLs on loopback (http://127.0.0.1, http://localhost): the local stack's
    # `local` stage sets it; a deployment never does.
    webhook_allow_loopback: bool = False
    # Per-user quotas.
    max_scheduled: int = 200
    # The deployment's scheduled notebooks, all users together: one EventBridge rule each,
    # kept below the account's rule quota per region (300 by default).
    max_scheduled_total: int = 250
    # Unset: what one user's runner slots finish within the queue timeout at the default
    # run timeout (see `active_runs_quota`), so no run waits past it for its turn.
    max_active_runs: Optional[int] = None
    max_runs_kept: int = 100
    # Modules the runner's waiting kernel imports before its run (NOTEBOOKS_PRELOAD_MODULES,
    # comma-separated; empty: none), so a notebook importing them pays nothing.
    preload_modules: tuple = ("numpy", "pandas", "matplotlib")
    # AWS calls one request makes at once (what AWS cannot batch).
    aws_concurrency: int = 16
    # A Delete removes this many notebooks' schedule rules itself, and hands the rest to
    # the runner function: two EventBridge calls each, which EventBridge cannot batch.
    rules_removed_in_request: int = 100

    @property
    def fargate(self) -> bool:
        """Whether the deployment has a Fargate engine for runs longer than Lambda's."""
        return bool(self.ecs_cluster and self.ecs_task_definition and self.ecs_subnets)

    def longest_run(self) -> float:
        """The longest timeout a run may ask for: the maximum where runs can take it (Fargate,
        or the local stack's workers), else what fits in Lambda."""
        if self.fargate or self.local_stack:
            return self.max_run_timeout
        return min(self.max_run_timeout, LAMBDA_RUN_LIMIT)

    def runner_slots(self, pool: Pool = Pool.RUNNER) -> int:
        """Runs the pool executes at once, its capacity in the fair queue: the Lambda
        runner's (less its headroom) or the local stack's workers, or the Fargate tasks'."""
        if pool == Pool.FARGATE:
            return max(1, self.fargate_capacity)
        return max(1, self.local_workers if self.local_stack else self.runner_capacity - self.runner_headroom)

    def running_per_user(self, pool: Pool = Pool.RUNNER) -> int:
        """Runs one user may have executing at once in the pool: `max_running`, by default
        half the pool's capacity; at least 1, at most the capacity."""
        slots = self.runner_slots(pool)
        wanted = self.max_running if self.max_running is not None else slots // 2
        return max(1, min(wanted, slots))

    def active_runs_quota(self) -> int:
        """Runs one user may have queued or running: `max_active_runs`, by default what
        the user's slots finish within the queue timeout at the default run timeout."""
        if self.max_active_runs is not None:
            return self.max_active_runs
        return self.running_per_user() * max(1, int(self.queue_timeout // self.run_timeout))

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """Build settings from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or d.region,
            bucket=env.get("NOTEBOOKS_BUCKET", d.bucket),
            notebooks_table=env.get("NOTEBOOKS_TABLE", d.notebooks_table),
            runs_table=env.get("NOTEBOOKS_RUNS_TABLE", d.runs_table),
            users_table=env.get("NOTEBOOKS_USERS_TABLE", d.users_table),
            local_users=env.get("NOTEBOOKS_USERS", d.local_users),
            cors_origin=env.get("NOTEBOOKS_CORS_ORIGIN") or None,
            max_ids=_int(env, "NOTEBOOKS_MAX_IDS", d.max_ids),
            max_body_bytes=_int(env, "NOTEBOOKS_MAX_BODY_BYTES", d.max_body_bytes),
            runner_function=env.get("NOTEBOOKS_RUNNER_FUNCTION", d.runner_function),
            runner_arn=env.get("NOTEBOOKS_RUNNER_ARN") or None,
            local_workers=_int(env, "NOTEBOOKS_LOCAL_WORKERS", d.local_workers),
            local_stack=env.get("NOTEBOOKS_LOCAL_STACK") == "true",
            run_timeout=_float(env, "NOTEBOOKS_RUN_TIMEOUT", d.run_timeout),
            max_run_timeout=_float(env, "NOTEBOOKS_MAX_RUN_TIMEOUT", d.max_run_timeout),
            ecs_cluster=env.get("NOTEBOOKS_ECS_CLUSTER") or None,
            ecs_task_definition=env.get("NOTEBOOKS_ECS_TASK_DEFINITION") or None,
            ecs_subnets=_list(env, "NOTEBOOKS_ECS_SUBNETS"),
            ecs_security_groups=_list(env, "NOTEBOOKS_ECS_SECURITY_GROUPS"),
            ecs_container=env.get("NOTEBOOKS_ECS_CONTAINER") or d.ecs_container,
            ecs_assign_public_ip=env.get("NOTEBOOKS_ECS_ASSIGN_PUBLIC_IP", "true").lower() != "false",
            queue_timeout=_float(env, "NOTEBOOKS_QUEUE_TIMEOUT", d.queue_timeout),
            runner_capacity=_int(env, "NOTEBOOKS_RUNNER_CAPACITY", d.runner_capacity),
            runner_headroom=_int(env, "NOTEBOOKS_RUNNER_HEADROOM", d.runner_headroom),
            fargate_capacity=_int(env, "NOTEBOOKS_FARGATE_CAPACITY", d.fargate_capacity),
            max_running=_int(env, "NOTEBOOKS_MAX_RUNNING", d.max_running),
            reap_interval=_float(env, "NOTEBOOKS_REAP_SECONDS", d.reap_interval),
            timezone=env.get("NOTEBOOKS_TIMEZONE") or d.timezone,
            rule_prefix=env.get("NOTEBOOKS_RULE_PREFIX", d.rule_prefix),
            login_attempts=_int(env, "NOTEBOOKS_LOGIN_ATTEMPTS", d.login_attempts),
            login_window=_float(env, "NOTEBOOKS_LOGIN_WINDOW", d.login_window),
            login_source_attempts=_int(env, "NOTEBOOKS_LOGIN_SOURCE_ATTEMPTS", d.login_source_attempts),
            password_scrypt_n=_int(env, "NOTEBOOKS_PASSWORD_SCRYPT_N", d.password_scrypt_n),
            max_response_bytes=_int(env, "NOTEBOOKS_MAX_RESPONSE_BYTES", d.max_response_bytes),
            max_output_bytes=_int(env, "NOTEBOOKS_MAX_OUTPUT_BYTES", d.max_output_bytes),
            max_parameters_bytes=_int(env, "NOTEBOOKS_MAX_PARAMETERS_BYTES", d.max_parameters_bytes),
            max_log_bytes=_int(env, "NOTEBOOKS_MAX_LOG_BYTES", d.max_log_bytes),
            webhook_allow_loopback=env.get("NOTEBOOKS_WEBHOOK_ALLOW_LOOPBACK", "").lower() == "true",
            max_scheduled=_int(env, "NOTEBOOKS_MAX_SCHEDULED", d.max_scheduled),
            max_scheduled_total=_int(env, "NOTEBOOKS_MAX_SCHEDULED_TOTAL", d.max_scheduled_total),
            max_active_runs=_int(env, "NOTEBOOKS_MAX_ACTIVE_RUNS", d.max_active_runs),
            max_runs_kept=_int(env, "NOTEBOOKS_MAX_RUNS_KEPT", d.max_runs_kept),
            preload_modules=_list(env, "NOTEBOOKS_PRELOAD_MODULES")
            if "NOTEBOOKS_PRELOAD_MODULES" in env
            else d.preload_modules,
            aws_concurrency=_int(env, "NOTEBOOKS_AWS_CONCURRENCY", d.aws_concurrency),
            rules_removed_in_request=_int(env, "NOTEBOOKS_RULES_REMOVED_IN_REQUEST", d.rules_removed_in_request),
        )
