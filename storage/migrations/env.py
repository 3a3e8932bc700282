"""Alembic environment: runs with the connection that ``storage.migrate`` hands it."""

from alembic import context
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on the metadata)

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
