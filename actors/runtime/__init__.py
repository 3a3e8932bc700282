"""This process's broker: the middleware stack built from the settings, made global once."""

from .build import (
    PERIODIC_SKIP_DELAY,
    audit_writer_of,
    build_audit_writer,
    build_broker,
    build_middleware,
    build_redis_client,
    build_redis_routes,
    build_results_backend,
    configure,
    connections_per_process,
    saga_pool,
)
from .modules import ModuleLoadError, load_modules, module_names
from .process import process_settings
from .routed_results import RoutedRedisBackend

__all__ = [
    "PERIODIC_SKIP_DELAY",
    "ModuleLoadError",
    "RoutedRedisBackend",
    "audit_writer_of",
    "build_audit_writer",
    "build_broker",
    "build_middleware",
    "build_redis_client",
    "build_redis_routes",
    "build_results_backend",
    "configure",
    "connections_per_process",
    "load_modules",
    "module_names",
    "process_settings",
    "saga_pool",
]
