"""The ``tradeflow`` command line: one module per command group, assembled by ``app``."""

from .app import app, main
from .common import CliError

__all__ = ["CliError", "app", "main"]
