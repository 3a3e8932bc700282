"""Exceptions that steer what happens to a failed job."""

from __future__ import annotations

from dramatiq.threading import Interrupt


class NonRetryableError(Exception):
    """An error a retry cannot fix (bad input, validation): raise it, or a subclass,
    and the message goes straight to the dead letters with this reason.

    Actors can name more such exception types with the ``non_retryable=`` option.
    """


class JobCancelled(Interrupt):
    """Raised inside a running job that was cancelled (``tradeflow jobs cancel``).

    An :class:`~dramatiq.threading.Interrupt` (a ``BaseException``), so an
    actor's ``except Exception`` cannot swallow it.  Never retried.
    """


#: The extra (``pip install 'tradeflow[EXTRA]'``) that brings each optional top-level module.
EXTRA_OF_MODULE = {
    "deltalake": "data",
    "pyarrow": "data",
    "pandas": "data",
    "numpy": "data",
    "ib_async": "ib",
    "openai": "ai",
    "vaderSentiment": "ai",
    "RestrictedPython": "strategy",
    "seccomp": "strategy",
    "grpc": "otlp",
}


def missing_extra(exception: BaseException) -> str | None:
    """What to install when ``exception`` is an optional module missing, else None."""
    if not isinstance(exception, ModuleNotFoundError) or not exception.name:
        return None
    top = exception.name.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None and exception.name.startswith("opentelemetry.exporter"):
        extra = "otlp"
    if extra is None:
        return None
    return f"needs the [{extra}] extra, not installed: pip install 'tradeflow[{extra}]' (no module {top!r})"
