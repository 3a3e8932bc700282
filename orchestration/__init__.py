"""Orchestration: composing workflows (``pipeline``, ``group``), the predefined workflows,
event triggers and the operations on runs."""

from .builders import group, pipeline
from .registry import UnknownWorkflow, WorkflowRegistry
from .workflows import registry

__all__ = ["UnknownWorkflow", "WorkflowRegistry", "group", "pipeline", "registry"]
