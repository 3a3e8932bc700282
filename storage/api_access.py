"""API keys (stored hashed) and the operator audit log of the HTTP API.

A key is shown once, when it is created: ``tf_<key id>_<secret>``.  The table
keeps its id, role and the SHA-256 of the whole token (the secret is 256 random
bits, so a plain hash is as good as a slow one), with its expiry, revocation
and last use.  Every action taken over the API is one row of
``operator_actions``: who (key id and name), what, on what, when, from where,
and the HTTP status it ended with.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Engine, Index, Text, update
from sqlmodel import Field, Session, SQLModel, col, select

from .audit import utc_now

#: The roles a key may have, least powerful first.
ROLES = ("viewer", "operator", "admin")

#: Prefix of every token, so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "tf_"

#: A key's last-use time is written at most this often (a busy client costs no write per request).
LAST_USED_RESOLUTION = timedelta(seconds=60)


class ApiKey(SQLModel, table=True):
    """One API key; the token itself is never stored.  Times are naive UTC."""

    __tablename__ = "api_keys"

    key_id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    role: str = Field(max_length=20)
    token_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(DateTime))

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class OperatorAction(SQLModel, table=True):
    """One action taken over the API (or refused): who, what, on what, when, from where, outcome."""

    __tablename__ = "operator_actions"
    __table_args__ = (Index("ix_operator_actions_key_id_id", "key_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    key_id: str | None = Field(default=None, max_length=32)
    key_name: str | None = Field(default=None, max_length=200)
    role: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=100)
    target: str | None = Field(default=None, sa_column=Column(Text))
    address: str | None = Field(default=None, max_length=64)
    status_code: int
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))


class UnknownApiKey(LookupError):
    """No API key has that id."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(
    engine: Engine, *, name: str, role: str, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key and its token (shown once); ``ValueError`` for an unknown role or a past expiry."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    now = utc_now()
    if expires_at is not None and expires_at <= now:
        raise ValueError(f"expiry {expires_at.isoformat()} is in the past")
    key_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        key_id=key_id, name=name, role=role, token_hash=_hash(token), created_at=now, expires_at=expires_at
    )
    with Session(engine) as session:
        session.add(key)
        session.commit()
        session.refresh(key)
    return key, token


def list_api_keys(engine: Engine) -> list[ApiKey]:
    """Every key, newest first (revoked and expired ones too)."""
    with Session(engine) as session:
        return list(session.exec(select(ApiKey).order_by(col(ApiKey.created_at).desc())))


def revoke_api_key(engine: Engine, key_id: str) -> ApiKey:
    """Revoke ``key_id`` (from now on every request with it is 401); revoking twice keeps the first time."""
    with Session(engine) as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise UnknownApiKey(f"no API key with id {key_id!r} (see `tradeflow api-keys list`)")
        if key.revoked_at is None:
            key.revoked_at = utc_now()
            session.add(key)
            session.commit()
            session.refresh(key)
        return key


def authenticate(engine: Engine, token: str) -> ApiKey | None:
    """The usable key ``token`` belongs to, or None; notes its use (at most once a minute)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    key_id, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not key_id or not secret:
        return None
    now = utc_now()
    with Session(engine, expire_on_commit=False) as session:
        key = session.get(ApiKey, key_id)
        if key is None or not hmac.compare_digest(key.token_hash, _hash(token)) or not key.usable(now):
            return None
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            session.exec(update(ApiKey).where(col(ApiKey.key_id) == key_id).values(last_used_at=now))
            session.commit()
            key.last_used_at = now
        return key


def get_api_key(engine: Engine, key_id: str) -> ApiKey | None:
    with Session(engine) as session:
        return session.get(ApiKey, key_id)


def record_operator_action(engine: Engine, action: OperatorAction) -> None:
    with Session(engine) as session:
        session.add(action)
        session.commit()


def list_operator_actions(
    engine: Engine,
    *,
    before_id: int | None = None,
    key_id: str | None = None,
    action: str | None = None,
    limit: int = 50,
) -> list[OperatorAction]:
    """The newest actions first, one keyset page (ids below ``before_id``)."""
    query = select(OperatorAction)
    if before_id is not None:
        query = query.where(col(OperatorAction.id) < before_id)
    if key_id:
        query = query.where(OperatorAction.key_id == key_id)
    if action:
        query = query.where(OperatorAction.action == action)
    with Session(engine) as session:
        return list(session.exec(query.order_by(col(OperatorAction.id).desc()).limit(limit)))
