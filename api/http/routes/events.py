"""``GET /api/v1/events``: the live-events Redis Stream as Server-Sent Events, resumable, filtered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from ..access import Viewer
from ..context import ApiContext, context_of
from ..problems import API_PROBLEMS, Problem

router = APIRouter(prefix="/api/v1", tags=["events"], responses=API_PROBLEMS)

#: Milliseconds one blocking read waits; a comment line keeps idle connections (and proxies) alive.
BLOCK_MS = 15_000

#: Most entries read from the stream at once.
READ_COUNT = 500

#: A stream entry id: ``<ms>-<seq>``.
STREAM_ID_PATTERN = r"^\d+-\d+$"


def _async_client(context: ApiContext):
    """One asyncio Redis client per app (made on the event loop's first request)."""
    client = context.extras.get("async_redis")
    if client is None:
        client = context.extras["async_redis"] = async_redis_client(context.settings.effective_redis_url)
    return client


def async_redis_client(url: str):
    """An asyncio client of the deployment ``url`` names: a plain URL, or a Sentinel one."""
    import redis.asyncio
    from redis.asyncio.sentinel import Sentinel

    from actors.broker import SENTINEL_SCHEME, parse_sentinel_url

    if not url.startswith(SENTINEL_SCHEME):
        return redis.asyncio.Redis.from_url(url, socket_connect_timeout=2)
    address = parse_sentinel_url(url)
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs={"socket_connect_timeout": 2})
    return sentinel.master_for(address.service, db=address.db, password=address.password)


class EventFilter:
    """Which entries a client wants: kinds (exact, or ``prefix.*``), queue, run, job."""

    def __init__(self, *, kinds: list[str], queue: str | None, run: str | None, job: str | None) -> None:
        self.exact = {kind for kind in kinds if not kind.endswith("*")}
        self.prefixes = tuple(kind[:-1] for kind in kinds if kind.endswith("*"))
        self.fields = {name: value for name, value in (("queue", queue), ("run", run), ("job", job)) if value}

    def wants(self, entry: dict[str, str]) -> bool:
        kind = entry.get("kind", "")
        if (self.exact or self.prefixes) and kind not in self.exact and not kind.startswith(self.prefixes):
            return False
        return all(entry.get(name) == value for name, value in self.fields.items())


def sse(event_id: str, kind: str, body: dict) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _decoded(fields: dict) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


async def _stream(request: Request, key: str, last_id: str, wanted: EventFilter) -> AsyncIterator[bytes]:
    client = _async_client(context_of(request))
    if last_id != "$":
        first = await client.xrange(key, "-", "+", count=1)
        if first and _older(last_id, first[0][0].decode()):
            yield sse(last_id, "stream.gap", {"kind": "stream.gap", "detail": "events were trimmed since"})
    else:
        # "$" is resolved once: events appended between two reads are not skipped
        newest = await client.xrevrange(key, "+", "-", count=1)
        last_id = newest[0][0].decode() if newest else "0-0"
    yield b": connected\n\n"
    while not await request.is_disconnected():
        batches = await client.xread({key: last_id}, count=READ_COUNT, block=BLOCK_MS)
        if not batches:
            yield b": keepalive\n\n"
            continue
        for entry_id, fields in batches[0][1]:
            last_id = entry_id.decode()
            entry = _decoded(fields)
            if not wanted.wants(entry):
                continue
            body = {name: entry[name] for name in ("kind", "queue", "job", "run") if name in entry}
            body["at"] = int(entry.get("at", "0"))
            if "data" in entry:
                body["data"] = json.loads(entry["data"])
            yield sse(last_id, entry.get("kind", "event"), body)


def _older(event_id: str, than: str) -> bool:
    ms, _, seq = event_id.partition("-")
    ms2, _, seq2 = than.partition("-")
    return (int(ms), int(seq or 0)) < (int(ms2), int(seq2 or 0))


@router.get(
    "/events",
    summary="Live events as Server-Sent Events (resumable with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream"}},
)
async def events(
    request: Request,
    principal: Viewer,
    kind: Annotated[
        str | None, Query(description="Comma-separated kinds; `job.*` matches a prefix. Default: all.")
    ] = None,
    queue: str | None = None,
    run: str | None = None,
    job: str | None = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID_PATTERN, description="Resume after it.")
    ] = None,
    since: Annotated[
        str | None,
        Query(pattern=STREAM_ID_PATTERN, description="Like Last-Event-ID; `0-0` replays all kept."),
    ] = None,
) -> StreamingResponse:
    from actors.broker import events_key

    context = context_of(request)
    kinds = [part.strip() for part in (kind or "").split(",") if part.strip()]
    if any(not part.replace(".", "").replace("_", "").rstrip("*").isalnum() for part in kinds):
        raise Problem("validation-error", f"kind: invalid kind filter {kind!r}")
    wanted = EventFilter(kinds=kinds, queue=queue, run=run, job=job)
    start = last_event_id or since or "$"
    return StreamingResponse(
        _stream(request, events_key(context.namespace), start, wanted),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
