"""The Lambda simulation: what `make package` builds, run the way Lambda runs it.

The API function's package is unzipped; the runner's is the image's task tree
(build/runner-image/task/, what the Dockerfile copies into /var/task). Each function
runs in its own mount namespace with
- its code read-only at /var/task, Lambda's runtime stand-in (lambda_bootstrap.py) at
  /var/runtime and this machine's Python 3.13 (the one running the tests: `make test`'s
  venv), without its site-packages, at /var/lang;
- a private 512 MB /tmp, the only writable place;
- an unprivileged user that has no entry in /etc/passwd, so `~` resolves to nothing,
  and no HOME;
- a clean environment: Lambda's variables plus the template's function environment
  (names resolved as CloudFormation would), with the embedded AWS (moto's server on
  loopback) as its AWS. The Lambda service itself (the API's asynchronous Invoke of the
  runner) is this test, which records the event and hands it to the runner.

The API function gets API Gateway proxy events for the seed's samples, a run and its
output as ipynb and HTML; the runner gets the event the API dispatched and the event the
schedule's rule carries, one after the other in one warm process, then a notebook of the
data stack (numpy, pandas, scipy, matplotlib) whose HTML output shows its plot, twice: the
second run's kernel had the preloaded modules waiting.

Every compiled library of both packages is checked against Amazon Linux 2023's glibc
(2.34): its wheel's tags, and the glibc symbol versions each shared object needs.
"""

import base64
import errno
import json
import logging
import marshal
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from chalicelib.auth.users import UserStore
from chalicelib.common.config import Settings
from chalicelib.common.model import Pool
from chalicelib.runs.queue import FairQueue
from chalicelib.storage.notebook_table import NotebookTable
from chalicelib.storage.run_table import RunTable, index_status
from chalicelib.storage.tables import ACTIVE_STATUS, create_tables
from deploy import package
from deploy import template as deployment
from deploy.template import PACKAGED_JUPYTER_DATA, RUNTIME
from devstack.embedded_aws import EmbeddedAws as GuardedMoto
from devstack.state import StateFolder
from tests.local_stack import code_notebook

pytestmark = pytest.mark.sim

HERE = Path(__file__).resolve().parent
STACK = "notebooks-sim"
STAGE = "sim"
REGION = "us-east-1"
ACCOUNT = "123456789012"
SANDBOX_UID = 993  # Lambda's own user id; no entry in this machine's /etc/passwd
PASSWORD = "sim-secret"
SIM_ACCESS_KEY_ID = "ASIASIMULATION"  # the functions' credentials, as Lambda's role would give
SIM_SECRET_ACCESS_KEY = "simulated-secret"
# Physical names CloudFormation would give the stack's resources.
PHYSICAL = {
    "NotebookFiles": "notebooks-sim-notebookfiles-1a2b3c",
    "NotebooksTable": "notebooks-sim-NotebooksTable-1A2B3C",
    "RunsTable": "notebooks-sim-RunsTable-1A2B3C",
    "UsersTable": "notebooks-sim-UsersTable-1A2B3C",
    "APIHandler": f"{STACK}-api",
    "Runner": f"{STACK}-runner",
}
# The stack's parameters: their defaults (so no Fargate: FargateEnabled is false), the Stage.
PARAMETERS = {
    **{name: str(parameter["Default"]) for name, parameter in deployment.PARAMETERS.items()},
    "Stage": STAGE,
    "AWS::StackName": STACK,
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


def _unavailable() -> str:
    """Why the simulation cannot run here, or ""."""
    if f"python{sys.version_info.major}.{sys.version_info.minor}" != RUNTIME:
        return f"needs this machine's Python to be Lambda's {RUNTIME}"
    if os.geteuid() != 0:
        return "needs root (mount namespaces, bind mounts, setpriv)"
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a mount namespace here: {probe.stderr.strip()}"
    return ""


simulation_only = pytest.mark.skipif(bool(_unavailable()), reason=f"Lambda simulation skipped: {_unavailable()}")


def resolve(value):
    """A template value with Ref, Fn::GetAtt, Fn::Sub, Fn::Join and Fn::If resolved
    against this stack."""
    if not isinstance(value, dict):
        return str(value)
    [(function, argument)] = value.items()
    if function == "Ref":
        return PHYSICAL.get(argument) or PARAMETERS[argument]
    if function == "Fn::GetAtt":
        logical_id, attribute = argument
        assert attribute == "Arn" and logical_id in ("APIHandler", "Runner"), argument
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{PHYSICAL[logical_id]}"
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}", lambda match: resolve({"Ref": match.group(1)}), argument)
    if function == "Fn::Join":  # of a comma-delimited list parameter
        separator, listed = argument
        return separator.join(item for item in resolve(listed).split(",") if item)
    if function == "Fn::If":
        condition, when_true, otherwise = argument
        if condition == "RunnerConcurrencyReserved":
            return resolve(when_true if PARAMETERS["RunnerReservedConcurrency"] != "0" else otherwise)
        assert condition == "FargateEnabled", condition
        return resolve(otherwise)
    raise AssertionError(f"unexpected intrinsic {function}")


class EmbeddedAws:
    """Moto's server on loopback, with the stack's bucket, tables and one user."""

    def __init__(self, state: Path):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's own request log
        # The local stack's embedded AWS: it answers only requests signed with the functions' key.
        self.server = GuardedMoto(StateFolder(str(state)), SIM_ACCESS_KEY_ID, SIM_SECRET_ACCESS_KEY)
        self.server.start()
        self.url = self.server.endpoint
        settings = Settings(
            bucket=PHYSICAL["NotebookFiles"],
            notebooks_table=PHYSICAL["NotebooksTable"],
            runs_table=PHYSICAL["RunsTable"],
            users_table=PHYSICAL["UsersTable"],
        )
        self.client("s3").create_bucket(Bucket=settings.bucket)
        create_tables(self.client("dynamodb"), settings)
        users = boto3.resource("dynamodb", **self._options()).Table(settings.users_table)
        UserStore(users).add("admin", PASSWORD)  # as the operator's `chalicelib.auth.users add` would

    def _options(self) -> dict:
        return {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": SIM_ACCESS_KEY_ID,
            "aws_secret_access_key": SIM_SECRET_ACCESS_KEY,
        }

    def client(self, service: str):
        return boto3.client(service, **self._options())


class LambdaService:
    """The Lambda service's Invoke API, as far as the API function uses it: it records
    each asynchronous invocation (function name, event) and accepts it."""

    def __init__(self):
        self.invocations = []
        recorded = self.invocations

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                match = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if match and self.headers.get("X-Amz-Invocation-Type") == "Event":
                    recorded.append((match.group(1), json.loads(body)))
                    self.send_response(202)
                else:
                    self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def lambda_environment(function: str, template: dict, aws: EmbeddedAws, lambda_service: LambdaService) -> dict:
    """What Lambda puts in a python3.13 function's environment, the template's variables
    for that function, and where the (embedded) AWS is."""
    properties = template["Resources"][function]["Properties"]
    name = PHYSICAL[function]
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(properties["MemorySize"]),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{RUNTIME}",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": SIM_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SIM_SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": "simulated-token",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PATH": "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib"
        ":/var/task:/var/task/lib:/opt/lib",
        "PYTHONPATH": "/var/runtime",
        # A .zip function's handler, or an image function's command (the Dockerfile's CMD).
        "_HANDLER": properties.get("Handler") or properties["ImageConfig"]["Command"][0],
        "SIMULATED_TIMEOUT_SECONDS": str(properties["Timeout"]),
        # The embedded AWS, and this test as the Lambda service.
        "AWS_ENDPOINT_URL": aws.url,
        "AWS_ENDPOINT_URL_LAMBDA": lambda_service.url,
    }
    env.update({key: resolve(value) for key, value in properties["Environment"]["Variables"].items()})
    return env


def sandbox_script(root: Path, task: Path, env: dict, command: str, as_user: bool = True) -> str:
    """The shell script that runs `command` (arguments of /var/lang's Python) as Lambda
    runs a function (see the module's docstring): in the mount namespace the script makes,
    as the sandbox's user, or with `as_user=False` as root, as ECS runs a task's image."""
    runtime = root / "runtime"
    runtime.mkdir()
    shutil.copy(HERE / "lambda_bootstrap.py", runtime / "bootstrap.py")
    empty = root / "empty"
    empty.mkdir()
    python = Path(sys.base_prefix)  # this machine's Python 3.13, as Lambda's /var/lang
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    user = f"setpriv --reuid={SANDBOX_UID} --regid={SANDBOX_UID} --clear-groups --no-new-privs" if as_user else ""
    return f"""set -e
mount --make-rprivate /
# Lambda's /var: the package, the runtime and the language, all read-only.
mount -t tmpfs -o size=1m,mode=0755 tmpfs /var
mkdir /var/task /var/runtime /var/lang
for pair in "{task}:/var/task" "{runtime}:/var/runtime" "{python}:/var/lang"; do
  mount --bind "${{pair%%:*}}" "${{pair#*:}}"
  mount -o remount,bind,ro "${{pair#*:}}"
done
mount --bind "{empty}" /var/lang/lib/{version}/site-packages
mount -o remount,ro /var
# A private /tmp of Lambda's default size.
mount -t tmpfs -o size=512m,mode=1777 tmpfs /tmp
cd /var/task
exec env -i {" ".join(shlex.quote(f"{key}={value}") for key, value in env.items())} \\
  {user} /var/lang/bin/{version} {command}
"""


class SimulatedFunction:
    """One warm Lambda container of one function: a process in its own mount (and pid)
    namespace, fed events one at a time."""

    def __init__(self, root: Path, task: Path, env: dict):
        script = sandbox_script(root, task, env, "/var/runtime/bootstrap.py")
        self.log = open(root / "log.txt", "w+")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.init = self._answer()
        assert "init_error" not in self.init, self.init["init_error"] + self.output()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"the function ended:\n{self.output()}"
        return json.loads(line)

    def invoke(self, event: dict):
        """The handler's result for `event`."""
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        assert "error" not in answer, answer["error"] + "\n" + answer["trace"] + self.output()
        return answer["result"]

    def output(self) -> str:
        """The function's log so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # pid 1 of its namespace: everything in it goes too
            self.process.wait()
        self.log.close()


def route_of(template: dict, path: str) -> tuple:
    """(resource, path parameters) of `path` in the deployed API, as API Gateway matches
    it: literal segments before {parameters}."""
    paths = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    segments = path.rstrip("/").split("/")
    candidates = []
    for resource in paths:
        parts = resource.split("/")
        if len(parts) != len(segments):
            continue
        if all(part == segment or part.startswith("{") for part, segment in zip(parts, segments, strict=True)):
            parameters = {
                part[1:-1]: segment for part, segment in zip(parts, segments, strict=True) if part.startswith("{")
            }
            candidates.append((len(parameters), resource, parameters))
    assert candidates, f"no route for {path}"
    _, resource, parameters = min(candidates)
    return resource, parameters or None


class ApiGateway:
    """API Gateway in front of the simulated API function: requests as proxy events."""

    def __init__(self, function: SimulatedFunction, template: dict):
        self.function = function
        self.template = template
        self.authorization = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

    def request(self, method: str, path: str, body=None, query=None) -> dict:
        resource, parameters = route_of(self.template, path)
        headers = {
            "Authorization": self.authorization,
            "Content-Type": "application/json",
            "Host": "abcdef1234.execute-api.us-east-1.amazonaws.com",
        }
        event = {
            "resource": resource,
            "path": path,
            "httpMethod": method,
            "headers": headers,
            "multiValueHeaders": {key: [value] for key, value in headers.items()},
            "queryStringParameters": query,
            "multiValueQueryStringParameters": {key: [value] for key, value in query.items()} if query else None,
            "pathParameters": parameters,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": resource,
                "httpMethod": method,
                "path": "/api" + path,
                "stage": "api",
                "requestId": str(uuid.uuid4()),
                "accountId": ACCOUNT,
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "lambda-simulation"},
            },
            "body": body if body is None or isinstance(body, str) else json.dumps(body),
            "isBase64Encoded": False,
        }
        return self.function.invoke(event)

    def json(self, method: str, path: str, body=None, query=None, expect=200):
        response = self.request(method, path, body, query)
        assert response["statusCode"] == expect, response
        return json.loads(response["body"])


@dataclass
class Built:
    template: dict
    template_file: Path
    zipped: Path  # the API function's package
    image_task: Path  # the runner image's /var/task


@pytest.fixture(scope="module")
def built():
    """The template, the package and the image's tree, built as `make package` builds them."""
    template, zipped, task = package.build(package.BUILD)
    return Built(json.loads(template.read_text()), template, zipped, task)


def zip_files(zipped: Path) -> dict:
    """{path: a function reading its bytes} of a .zip package."""
    archive = zipfile.ZipFile(zipped)
    return {name: (lambda name=name: archive.read(name)) for name in archive.namelist()}


def tree_files(folder: Path) -> dict:
    """{path: a function reading its bytes} of a folder, as zip_files names them."""
    return {str(path.relative_to(folder)): path.read_bytes for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module", params=["zip", "image"])
def packaged(request, built):
    """(the files of the zip or of the image's tree, the requirements files it holds)."""
    if request.param == "zip":
        return zip_files(built.zipped), package.ZIP_REQUIREMENTS
    return tree_files(built.image_task), package.IMAGE_REQUIREMENTS


def test_the_package_holds_app_and_chalicelib_and_nothing_of_the_dev_stack_deploy_or_tests(packaged, built):
    files, _ = packaged
    assert "app.py" in files and "chalicelib/services.py" in files
    assert package.unshipped(files) == []
    for artifact in (built.zipped, built.image_task):
        package.check_contents(artifact)  # as `make package` checks it


def _pins(text: str) -> dict:
    """{normalised name: version} of `name==version` lines."""
    pins = {}
    for line in text.splitlines():
        name, equals, version = line.partition("==")
        if equals and not line.startswith("#"):
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def _metadata_field(text: str, field: str) -> str:
    return re.search(rf"^{field}: (.+)$", text, re.M).group(1).strip()


def test_the_package_holds_exactly_the_pinned_versions_that_the_tests_test(packaged):
    files, requirements = packaged
    tested = _pins((package.ROOT / "constraints.txt").read_text())
    versions = {}
    for name, read in files.items():
        if re.fullmatch(r"[^/]+\.dist-info/METADATA", name):
            metadata = read().decode()
            versions[
                _pins(f"{_metadata_field(metadata, 'Name')}=={_metadata_field(metadata, 'Version')}").popitem()[0]
            ] = _metadata_field(metadata, "Version")
    assert versions and all(tested.get(name) == version for name, version in versions.items()), {
        name: (version, tested.get(name)) for name, version in versions.items() if tested.get(name) != version
    }
    for requirement in requirements:
        assert set(_pins((package.ROOT / requirement).read_text())) <= set(versions), requirement
    assert "chalice" not in versions  # Chalice's runtime module comes from Chalice's own packager
    # The data stack is the image's alone: the zip stays small.
    assert ("numpy" in versions) == ("requirements-runner.txt" in requirements)


CPYTHON = "cp" + RUNTIME.removeprefix("python").replace(".", "")  # cp313
CACHE_TAG = "cpython-" + CPYTHON[2:]  # the bytecode's: Lambda's Python reads only its own


def _runs_on_amazon_linux_2023(tag: str) -> bool:
    """Whether a wheel tag (python-abi-platform) fits Lambda's python3.13 on Amazon Linux
    2023: CPython 3.13 (or the stable ABI of an earlier 3.x), x86_64, glibc 2.34 or older."""
    python, abi, platform = tag.split("-")
    if platform == "any":
        return True
    glibc = re.fullmatch(r"manylinux_2_(\d+)_x86_64", platform)
    stable_abi = abi == "abi3" and python.startswith("cp3") and int(python[3:]) <= int(CPYTHON[3:])
    return (python == abi == CPYTHON or stable_abi) and (
        platform in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64")
        or bool(glibc and int(glibc.group(1)) <= package.LAMBDA_GLIBC_MINOR)
    )


def _glibc_needed(shared_object: bytes) -> int:
    """The newest glibc 2.x symbol version a shared object names (its version needs), or 0."""
    return max((int(minor) for minor in re.findall(rb"GLIBC_2\.(\d+)", shared_object)), default=0)


def test_compiled_libraries_are_built_for_amazon_linux_2023(packaged):
    files, _ = packaged
    assert package.LAMBDA_GLIBC_MINOR == 34  # Amazon Linux 2023
    compiled = []
    for name, read in files.items():
        if name.endswith(".dist-info/WHEEL"):
            tags = re.findall(r"^Tag: (.+)$", read().decode(), re.M)
            assert any(_runs_on_amazon_linux_2023(tag) for tag in tags), (name, tags)
            compiled += [name] if not any(tag.endswith("-any") for tag in tags) else []
    assert len(compiled) >= 5, compiled  # pyzmq, tornado, psutil, pyyaml, rpds-py, ...
    assert _runs_on_amazon_linux_2023("cp313-cp313-manylinux_2_34_x86_64")
    assert _runs_on_amazon_linux_2023("cp313-cp313-manylinux_2_28_x86_64")
    assert _runs_on_amazon_linux_2023("cp311-abi3-manylinux2014_x86_64")
    assert not _runs_on_amazon_linux_2023("cp313-cp313-manylinux_2_35_x86_64")
    assert not _runs_on_amazon_linux_2023("cp313-cp313-manylinux_2_28_aarch64")
    assert not _runs_on_amazon_linux_2023("cp311-cp311-manylinux2014_x86_64")
    assert not _runs_on_amazon_linux_2023("cp314-abi3-manylinux2014_x86_64")
    # What the loader checks: no shared object, bundled libraries (numpy.libs, ...) included,
    # needs a glibc symbol newer than 2.34.
    shared_objects = {name: read for name, read in files.items() if re.search(r"\.so(\.[\d.]+)?$", name)}
    assert len(shared_objects) >= 10, sorted(shared_objects)  # the zip has 15, the image hundreds
    needed = {name: _glibc_needed(read()) for name, read in shared_objects.items()}
    too_new = {name: f"GLIBC_2.{minor}" for name, minor in needed.items() if minor > package.LAMBDA_GLIBC_MINOR}
    assert not too_new, too_new
    assert max(needed.values()) > 26  # current releases: built on newer glibc than Amazon Linux 2's


def test_every_module_is_compiled_ahead_for_a_read_only_task_root(packaged):
    files, _ = packaged
    names = set(files)
    sources = [name for name in names if name.endswith(".py")]
    for source in sources:
        folder, _, module = source.rpartition("/")
        compiled = f"{folder}/__pycache__/{module[:-3]}.{CACHE_TAG}.pyc".lstrip("/")
        assert compiled in names, source
    # PEP 552 flags: hash-based (1), source not checked (no 2): valid whatever the time stamps.
    app_bytecode = files[f"__pycache__/app.{CACHE_TAG}.pyc"]()
    assert int.from_bytes(app_bytecode[4:8], "little") == 1
    assert marshal.loads(app_bytecode[16:]).co_filename == "/var/task/app.py"  # alike wherever built
    assert {"app.py", "chalicelib/runs/service.py", "chalice/app.py", "IPython/__init__.py"} <= set(sources)
    assert not [name for name in names if name.startswith("bin/")]
    assert PACKAGED_JUPYTER_DATA.replace("/var/task/", "") + "/nbconvert/templates/lab/index.html.j2" in names


def test_the_templates_docker_context_is_the_tree_the_simulation_runs(built):
    metadata = built.template["Resources"]["Runner"]["Metadata"]
    context = built.template_file.parent / metadata["DockerContext"]
    assert (context / metadata["Dockerfile"]).read_text() == package.DOCKERFILE.read_text()
    assert (context / package.IMAGE_TASK).resolve() == built.image_task.resolve()
    # Lambda runs an image as a user of its own: everything must be readable by others.
    unreadable = [path for path in built.image_task.rglob("*") if not path.stat().st_mode & 0o004]
    assert not unreadable, unreadable[:5]


@dataclass
class Simulation:
    template: dict
    tasks: dict  # logical id: its /var/task (the unzipped package, or the image's tree)
    aws: EmbeddedAws
    lambda_service: LambdaService
    functions: dict  # logical id: its warm SimulatedFunction


@pytest.fixture(scope="module")
def simulation(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("lambda")
    unzipped = root / "task"
    with zipfile.ZipFile(built.zipped) as archive:
        archive.extractall(unzipped)
    tasks = {"APIHandler": unzipped, "Runner": built.image_task}
    aws, lambda_service = EmbeddedAws(root / "aws-state"), LambdaService()
    functions = {}
    try:
        for function in ("APIHandler", "Runner"):
            (root / function).mkdir()
            functions[function] = SimulatedFunction(
                root / function, tasks[function], lambda_environment(function, built.template, aws, lambda_service)
            )
        yield Simulation(built.template, tasks, aws, lambda_service, functions)
    finally:
        for function in functions.values():
            function.close()
        lambda_service.server.shutdown()
        aws.server.stop()


@simulation_only
def test_the_runner_module_imports_without_home(simulation, tmp_path):
    """What the runner function loads on its first event, loaded before anything has set HOME."""
    env = lambda_environment("Runner", simulation.template, simulation.aws, simulation.lambda_service)
    function = SimulatedFunction(
        tmp_path, simulation.tasks["Runner"], {**env, "_HANDLER": "chalicelib.runner.notebook_runner.NotebookRunner"}
    )
    function.close()
    assert "papermill" in function.init["loaded"]


NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "cells": [
        {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "# Simulated"},
        {
            "cell_type": "code",
            "id": "c1",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "import os, sys\n"
            "try:\n    open('/var/task/written', 'w')\nexcept OSError as error:\n    refused = error.errno\n"
            "print('ran on', sys.prefix, 'as', os.getuid(), 'task root refused writing:', refused)",
        },
    ],
}
BASE = "/_notebooks/notebooks"


@simulation_only
def test_the_api_function_starts_without_the_notebook_machinery(simulation):
    assert simulation.functions["APIHandler"].init["loaded"] == []
    assert simulation.functions["Runner"].init["loaded"] == []


@simulation_only
def test_packaged_functions_serve_the_seed_samples_and_run_a_notebook_as_lambda_would(simulation):
    template, functions = simulation.template, simulation.functions
    aws, lambda_service = simulation.aws, simulation.lambda_service
    api = ApiGateway(functions["APIHandler"], template)

    created = api.json("POST", BASE + "/", {"notebook_name": "simulated"})
    notebook_id = created["notebook_id"]
    assert api.json("PUT", f"{BASE}/{notebook_id}/content", NOTEBOOK) == "Success"
    assert api.json("GET", f"{BASE}/{notebook_id}/content")["cells"][1]["source"] == NOTEBOOK["cells"][1]["source"]
    assert api.json("PUT", f"{BASE}/{notebook_id}", {"new_name": "renamed"}) == "Rename Successful"
    assert api.json("GET", f"{BASE}/{notebook_id}")["notebook_name"] == "renamed.ipynb"
    assert [n["notebook_id"] for n in api.json("GET", BASE + "/_all")] == [notebook_id]

    # The seed's Run sample: a GET with a body, keys unquoted.
    [run] = api.json("GET", BASE + "/_run", '{nbkIds: ["%s"], module: "notebooks"}' % notebook_id)["runs"]
    assert run["status"] == "queued"
    assert lambda_service.invocations == [(PHYSICAL["Runner"], {"drain": {"run_id": run["run_id"]}})]

    until = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%d %H:%M")
    due = datetime.now(timezone.utc).strftime("%H:%M")  # daily at this minute: the event below is due
    assert api.json("GET", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": until, "time": due}) == "Success"
    assert api.json("GET", BASE + "/_count") == {"Total Notebooks": 1, "Not Scheduled": 0, "Scheduled": 1}
    [target] = aws.client("events").list_targets_by_rule(Rule=f"notebooks-{STAGE}-{notebook_id}")["Targets"]
    assert target["Arn"] == resolve({"Fn::GetAtt": ["Runner", "Arn"]})

    # The runner, warm: the API's dispatch, then the rule's event.
    runner = functions["Runner"]
    _, dispatched = lambda_service.invocations[0]
    assert runner.invoke(dispatched) == {"run_id": run["run_id"], "status": "succeeded"}, runner.output()
    scheduled = runner.invoke(json.loads(target["Input"]))
    assert scheduled["status"] == "succeeded", runner.output()

    record = api.json("GET", f"/_notebooks/runs/{run['run_id']}")
    assert record["status"] == "succeeded" and record["progress"] == {"done": 1, "total": 1}
    history = api.json("GET", f"{BASE}/{notebook_id}/runs")
    assert sorted(r["trigger"] for r in history) == ["manual", "schedule"]
    output = api.json("GET", f"/_notebooks/runs/{run['run_id']}/output")
    [printed] = output["cells"][1]["outputs"]
    assert printed["text"] == f"ran on /var/lang as {SANDBOX_UID} task root refused writing: {errno.EROFS}\n"
    page = api.request("GET", f"/_notebooks/runs/{run['run_id']}/output", query={"format": "html"})
    assert page["statusCode"] == 200, functions["APIHandler"].output()[-4000:]
    assert "ran on /var/lang" in page["body"] and "<h1" in page["body"]
    assert "sandbox" in page["headers"]["Content-Security-Policy"]

    assert api.json("GET", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}) == "Success"
    assert aws.client("events").list_rules(NamePrefix=f"notebooks-{STAGE}-")["Rules"] == []
    assert api.json("DELETE", BASE + "/", {"nbk_ids": [notebook_id]}) == "Success"
    assert api.json("GET", BASE + "/_count")["Total Notebooks"] == 0


DATA_STACK_NOTEBOOK = code_notebook(
    "import sys\n"
    "warm = [name for name in ('numpy', 'pandas', 'matplotlib.pyplot') if name in sys.modules]\n"
    "import numpy as np, pandas as pd, scipy, matplotlib\n"
    "import matplotlib.pyplot as plt\n"
    "from scipy import stats\n"
    "frame = pd.DataFrame({'x': np.arange(10.0)}).assign(y=lambda f: f.x ** 2)\n"
    "fit = stats.linregress(frame.x, frame.y)\n"
    "print('numpy', np.__file__, 'slope', round(fit.slope, 6), 'sum', int(frame.y.sum()))\n"
    "print('python', *sys.version_info[:2], 'numpy', np.__version__, 'preloaded', *warm)",
    "frame.plot(x='x', y='y', title='squares')\nplt.show()",
)


@simulation_only
def test_the_runner_image_runs_a_notebook_of_the_data_stack_and_its_html_shows_the_plot(simulation):
    api = ApiGateway(simulation.functions["APIHandler"], simulation.template)
    notebook_id = api.json("POST", BASE + "/", {"notebook_name": "data-stack"})["notebook_id"]
    assert api.json("PUT", f"{BASE}/{notebook_id}/content", DATA_STACK_NOTEBOOK) == "Success"
    runner = simulation.functions["Runner"]
    seconds = []
    for _ in range(2):  # the second run's kernel waited with the data stack imported
        [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "notebooks"})["runs"]
        assert runner.invoke(simulation.lambda_service.invocations[-1][1]) == {
            "run_id": run["run_id"],
            "status": "succeeded",
        }, runner.output()[-4000:]
        record = api.json("GET", f"/_notebooks/runs/{run['run_id']}")
        seconds.append((record["finished_at"] - record["started_at"]) / 1000)
    print(f"data-stack runs on the simulated runner: {seconds[0]:.1f} s, then {seconds[1]:.1f} s warm")
    output = api.json("GET", f"/_notebooks/runs/{run['run_id']}/output")
    [printed] = output["cells"][0]["outputs"]
    # Imported from the image's tree (what the Dockerfile copies into /var/task), on
    # Python 3.13, by a kernel that had numpy, pandas and pyplot loaded before the run.
    numpy_version = _pins((package.ROOT / "requirements-runner.txt").read_text())["numpy"]
    assert printed["text"] == (
        "numpy /var/task/numpy/__init__.py slope 9.0 sum 285\n"
        f"python 3 13 numpy {numpy_version} preloaded numpy pandas matplotlib.pyplot\n"
    )
    assert any("image/png" in shown.get("data", {}) for shown in output["cells"][1]["outputs"])
    page = api.request("GET", f"/_notebooks/runs/{run['run_id']}/output", query={"format": "html"})
    assert page["statusCode"] == 200
    assert re.search(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/]{1000,}', page["body"])


KERNEL_USER_NOTEBOOK = code_notebook(
    "import os, signal\n"
    "open('written-in-the-working-folder', 'w').write('x')\n"
    "print('kernel', os.getresuid(), os.getgroups(), 'pid', os.getpid())",
    "os.kill(os.getpid(), signal.SIGTERM)",  # nbclient's Autokill: as under papermill
)


@simulation_only
def test_a_fargate_task_runs_as_root_and_its_kernel_as_a_user_of_its_own(simulation, tmp_path):
    """ECS starts the image as root: the task's runner stays root, its kernel runs as
    fargate_task.KERNEL_UID, below an init where it has a PID namespace."""
    from chalicelib.runner.fargate_task import KERNEL_UID

    api = ApiGateway(simulation.functions["APIHandler"], simulation.template)
    notebook_id = api.json("POST", BASE + "/", {"notebook_name": "task"})["notebook_id"]
    assert api.json("PUT", f"{BASE}/{notebook_id}/content", KERNEL_USER_NOTEBOOK) == "Success"
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "notebooks"})["runs"]
    # The sim has no Fargate engine: the run becomes a Fargate one, claimed as the Fargate
    # pool's drain claims it before it starts the run's task.
    dynamodb = boto3.resource("dynamodb", **simulation.aws._options())
    runs = RunTable(dynamodb.Table(PHYSICAL["RunsTable"]), NotebookTable(dynamodb.Table(PHYSICAL["NotebooksTable"])))
    fargate = {"engine": "fargate", ACTIVE_STATUS: index_status("queued", Pool.FARGATE)}  # as the API records one
    assert runs.transition(run["run_id"], "queued", fargate)
    assert FairQueue(runs, Settings()).claim_next(pool=Pool.FARGATE)["run_id"] == run["run_id"]

    env = lambda_environment("Runner", simulation.template, simulation.aws, simulation.lambda_service)
    for name in [name for name in env if name.startswith("AWS_LAMBDA") or name in ("_HANDLER", "LAMBDA_TASK_ROOT")]:
        del env[name]  # a task, not a function
    script = sandbox_script(
        tmp_path, simulation.tasks["Runner"], env, f"-m chalicelib.runner.fargate_task {run['run_id']}", as_user=False
    )
    task = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert task.returncode == 0, task.stderr[-4000:]
    assert json.loads(task.stdout.strip().splitlines()[-1]) == {"run_id": run["run_id"], "status": "failed"}

    record = api.json("GET", f"/_notebooks/runs/{run['run_id']}")
    assert (record["error"]["ename"], record["error"]["cell_index"]) == ("DeadKernelError", 1), record
    [printed] = api.json("GET", f"/_notebooks/runs/{run['run_id']}/output")["cells"][0]["outputs"]
    uid, pid = printed["text"].split("pid")
    assert uid.strip() == f"kernel {(KERNEL_UID,) * 3} []"
    assert int(pid) != 1
    # Its end freed its slot: the task drained the Fargate pool through the runner function.
    assert simulation.lambda_service.invocations[-1] == (PHYSICAL["Runner"], {"drain": {"pool": "fargate"}})
