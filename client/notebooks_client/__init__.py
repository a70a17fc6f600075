"""A client of the notebooks API over HTTP: `Client` for Python, `notebooks` for the shell."""

from .client import FINAL_STATUSES, ApiError, Client, UnexpectedAnswer

__all__ = ["ApiError", "Client", "FINAL_STATUSES", "UnexpectedAnswer"]
