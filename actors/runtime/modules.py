"""The user's own modules (actors, workflows), imported by every process that imports ``actors``.

``TRADEFLOW_MODULES`` (and the CLI's ``-m/--module``, which adds to it) names
them; ``import actors`` imports them once the broker is configured, so a
worker, the scheduler, every ``tradeflow workflow`` command and the HTTP API
know the same actors and workflows.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

from dramatiq.logging import get_logger

#: Separator of module names in ``TRADEFLOW_MODULES``.
SEPARATOR = ","

logger = get_logger(__name__)


class ModuleLoadError(ImportError):
    """A module named in ``TRADEFLOW_MODULES`` or ``-m/--module`` could not be imported."""

    #: The CLI prints it as one line (it cannot name this class: importing ``actors`` failed).
    user_error = True


def module_names(text: str | Iterable[str]) -> list[str]:
    """The module names of a comma-separated ``text`` (or of several), in order, without repeats."""
    items = [text] if isinstance(text, str) else list(text)
    parts = [part for item in items for part in item.split(SEPARATOR)]
    names: list[str] = []
    for part in (part.strip() for part in parts):
        if part and part not in names:
            names.append(part)
    return names


def load_modules(names: str | Iterable[str]) -> list[ModuleType]:
    """Import the user's modules (names, or a comma-separated string); importing one twice is free.

    Raises :class:`ModuleLoadError` naming the module and the import's own error.
    """
    loaded = []
    for name in module_names(names):
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise ModuleLoadError(f"cannot import module {name!r} (TRADEFLOW_MODULES / -m): {exc}") from exc
        logger.debug("Loaded user module %s.", name)
    return loaded
