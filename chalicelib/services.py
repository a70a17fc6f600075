"""Wiring: the service objects of one process, built from configuration on first use.

Nothing is built at import time, so tests and the local stack set the environment
(moto, endpoints, table names) first; `reset()` forgets everything for the next test.
"""
import threading

from . import aws
from .auth import Authenticator
from .config import Settings
from .files import NotebookFiles
from .metadata import NotebookTable
from .notebooks import NotebookService
from .users import UserStore


class Services:
    """Everything a request or a runner needs, sharing one configuration."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.users = UserStore(aws.dynamodb_table(settings.users_table, settings.region))
        self.authenticator = Authenticator(self.users)
        self.files = NotebookFiles(aws.client("s3", settings.region), settings.bucket)
        self.notebooks = NotebookService(
            NotebookTable(aws.dynamodb_table(settings.notebooks_table, settings.region)), self.files, settings
        )


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
