"""The seed-compatible result keys: ``task_result:{id}`` holding ``{status, data, updated_at}``.

Readers in any language ``GET`` the key and parse the JSON; it expires
``ttl_seconds`` after its last write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import redis


class ResultStatus(StrEnum):
    """The statuses readers of ``task_result:{id}`` know."""

    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"


@dataclass(frozen=True)
class TaskResult:
    """One ``task_result`` document."""

    status: ResultStatus
    data: dict
    updated_at: str


class TaskResultStore:
    """Writes and reads ``{prefix}{task_id}`` JSON documents with an expiry.

    Parameters:
      client(redis.Redis): Where the keys live.
      prefix(str): Key prefix.  The seed's readers expect ``task_result:``.
      ttl_seconds(int): Expiry of each key after its last write.
    """

    def __init__(
        self, *, client: redis.Redis, prefix: str = "task_result:", ttl_seconds: int = 86_400
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def key(self, task_id: str) -> str:
        return f"{self.prefix}{task_id}"

    def running(self, task_id: str, data: dict) -> None:
        self._write(task_id, ResultStatus.RUNNING, data)

    def completed(self, task_id: str, data: dict) -> None:
        self._write(task_id, ResultStatus.COMPLETED, data)

    def error(self, task_id: str, reason: str, **details: object) -> None:
        self._write(task_id, ResultStatus.ERROR, {"error": reason, **details})

    def get(self, task_id: str) -> TaskResult | None:
        raw = self.client.get(self.key(task_id))
        if raw is None:
            return None
        document = json.loads(raw)
        return TaskResult(ResultStatus(document["status"]), document["data"], document["updated_at"])

    def _write(self, task_id: str, status: ResultStatus, data: dict) -> None:
        document = {"status": status.value, "data": data, "updated_at": datetime.now(UTC).isoformat()}
        self.client.set(self.key(task_id), json.dumps(document, allow_nan=False), ex=self.ttl_seconds)
