"""A client of the notebooks API over HTTP: `Client` for Python, `notebooks` for the shell."""

from .client import FINAL_STATUSES, ApiError, Client

__all__ = ["ApiError", "Client", "FINAL_STATUSES"]
