"""This process's broker: the middleware stack built from the settings, made global once."""

from .build import (
    PERIODIC_SKIP_DELAY,
    audit_writer_of,
    build_audit_writer,
    build_broker,
    build_middleware,
    configure,
)
from .process import process_settings

__all__ = [
    "PERIODIC_SKIP_DELAY",
    "audit_writer_of",
    "build_audit_writer",
    "build_broker",
    "build_middleware",
    "configure",
    "process_settings",
]
