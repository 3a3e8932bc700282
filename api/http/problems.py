"""Errors as RFC 9457 problem details (``application/problem+json``), one stable ``type`` per error."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

#: Media type of every error response.
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: Prefix of every problem ``type``: a URN, stable across deployments and versions.
TYPE_PREFIX = "urn:tradeflow:problem:"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One kind of error: its ``type`` slug, HTTP status and short title."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


#: Every problem the API answers with, by slug.
PROBLEMS = {
    problem.slug: problem
    for problem in (
        ProblemType("bad-request", 400, "The request is malformed"),
        ProblemType("invalid-cursor", 400, "The pagination cursor is not one this API issued"),
        ProblemType("unauthorized", 401, "A valid API key or session is required"),
        ProblemType("forbidden", 403, "The key's role does not allow this action"),
        ProblemType("read-only", 403, "The API is read-only: actions are refused"),
        ProblemType("cross-site-request", 403, "A cross-site request may not act with a session cookie"),
        ProblemType("not-found", 404, "No such resource"),
        ProblemType("method-not-allowed", 405, "The method is not allowed on this resource"),
        ProblemType("conflict", 409, "The resource is not in a state that allows this"),
        ProblemType("payload-too-large", 413, "The request or its message is over the size limit"),
        ProblemType("unsupported-media-type", 415, "The body must be JSON"),
        ProblemType("validation-error", 422, "The request does not match the schema"),
        ProblemType("unknown-actor", 422, "No actor is registered under that name"),
        ProblemType("bad-arguments", 422, "The arguments do not fit the actor"),
        ProblemType("invalid-workflow", 422, "The workflow definition is invalid"),
        ProblemType("internal-error", 500, "The server failed to handle the request"),
        ProblemType("unavailable", 503, "A backing service (Redis or the database) is unreachable"),
    )
}

_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
}


class Problem(Exception):
    """Raise to answer with the problem ``slug``; ``detail`` says what happened this time."""

    def __init__(self, slug: str, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.kind = PROBLEMS[slug]
        self.detail = detail
        self.extensions = extensions


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem_response(
    request: Request,
    kind: ProblemType,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(body, status_code=kind.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


#: ``responses=`` of a route: the problems it may answer with, documented in the OpenAPI schema.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "A problem"}
        for status in statuses
    }


#: ``responses=`` of every ``/api/v1`` router: what any of its routes may answer besides success.
API_PROBLEMS = problem_responses(400, 401, 403, 404, 409, 413, 422, 503)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of an OpenAPI ``schema`` a problem+json document (FastAPI
    documents its own 422 and a response ``model`` as ``application/json``)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ProblemDetails"] = ProblemDetails.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    reference = {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: reference}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json, and document them so."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(build_schema())
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.kind, exc.detail, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}"
        return problem_response(request, PROBLEMS["validation-error"], detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = PROBLEMS.get(_BY_STATUS.get(exc.status_code, "")) or ProblemType(
            "http-error", exc.status_code, "HTTP error"
        )
        return problem_response(request, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import redis
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | OperationalError):
            return problem_response(request, PROBLEMS["unavailable"], f"{type(exc).__name__}: {exc}")
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, PROBLEMS["internal-error"], f"{type(exc).__name__}")
