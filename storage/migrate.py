"""Schema migrations (alembic), run programmatically: ``tradeflow db upgrade``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # alembic is imported only when migrating: workers never need it
    from alembic.config import Config
    from sqlalchemy import Engine

#: The folder holding ``env.py`` and ``versions/``.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(connection=None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema of ``engine``'s database to ``revision``.

    Each area of the schema (audit, workflows, schedules, ...) is its own
    alembic branch from ``0001``; ``heads`` upgrades all of them.
    """
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (one per branch), empty for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def head_revisions() -> set[str]:
    """The newest revision of every branch this code knows."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(_config()).get_heads())
