"""The engine's hottest statements, run on the database driver's cursor.

SQLAlchemy's execution path costs about ten times what SQLite spends running
a small statement, and every workflow step runs five of them.  The
statements of :mod:`saga.statements` are compiled once per dialect here and
executed on the DBAPI connection of the caller's SQLAlchemy connection (so
inside its transaction), converting the few parameter and column types they
use by hand.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement

#: How SQLAlchemy writes a naive datetime into SQLite (so comparisons with stored values hold).
SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


#: Parameter types passed to the driver unchanged (a ``str`` subclass, an enum, is not).
_PLAIN = frozenset({str, int, float, bool})


class DriverStatement:
    """One statement compiled for ``dialect``.

    Parameters:
      statement: A SQLAlchemy statement whose bind parameters are all named.
      dialect: The dialect of the connections it will run on.
      json_params: Parameters that go into JSON columns (encoded here).
      json_columns: Returned columns holding JSON (decoded here on SQLite;
        psycopg decodes them itself).
      param_prefix: Prefix the caller's keys get to name parameters: with
        ``"b_"``, a row dict ``{"name": ...}`` fills ``b_name``.  Defaults to none.
    """

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        *,
        json_params: tuple[str, ...] = (),
        json_columns: tuple[str, ...] = (),
        param_prefix: str = "",
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.order = compiled.positiontup if dialect.positional else None
        self.sqlite = dialect.name == "sqlite"
        self.json_params = frozenset(json_params)
        self.json_columns = json_columns if self.sqlite else ()
        self.prefix = param_prefix
        self.defaults = {name: self._param(name, value) for name, value in compiled.params.items()}
        #: The names of the columns the statement returns, read from the first result: psycopg
        #: builds a description object per column and call, a tenth of a step's CPU.
        self._names: list[str] | None = None

    def executemany(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        """Run the statement once per parameter set (psycopg pipelines them)."""
        values = [self._values(params) for params in rows]
        cursor = connection.connection.driver_connection.cursor()
        try:
            cursor.executemany(self.sql, values)
        finally:
            cursor.close()

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the statement; the rows it returns, as dicts."""
        return self.fetch(self._execute(connection, params))

    def read(self, driver_connection: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        """:meth:`rows` on a DBAPI connection of the dialect (one outside SQLAlchemy's pool)."""
        cursor = driver_connection.cursor()
        cursor.execute(self.sql, self._values(params))
        return self.fetch(cursor)

    def send(self, connection: Connection, params: dict[str, Any]):
        """Run the statement and return its cursor without reading it; in psycopg's pipeline
        mode the statement is only queued.  Read it with :meth:`fetch`."""
        return self._execute(connection, params)

    def fetch(self, cursor) -> list[dict[str, Any]]:
        """The rows of a cursor from :meth:`send` (in pipeline mode: once the pipeline synced), as dicts."""
        try:
            fetched = cursor.fetchall()
            names = self._names
            if fetched and (names is None or len(names) != len(fetched[0])):
                names = self._names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in fetched]
        finally:
            cursor.close()
        for row in rows:
            for name in self.json_columns:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
        return rows

    def rowcount(self, connection: Connection, params: dict[str, Any]) -> int:
        """Run the statement; how many rows it changed."""
        cursor = self._execute(connection, params)
        try:
            return cursor.rowcount
        finally:
            cursor.close()

    def _execute(self, connection: Connection, params: dict[str, Any]):
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute(self.sql, self._values(params))
        return cursor

    def _values(self, params: dict[str, Any]):
        prefix = self.prefix
        values = {**self.defaults}
        for name, value in params.items():
            name = prefix + name
            if name in values:  # keys that are no parameter of the statement are ignored
                values[name] = self._param(name, value)
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)

    def _param(self, name: str, value: Any) -> Any:
        if name in self.json_params:
            return None if value is None else json.dumps(value)
        if value is None or type(value) in _PLAIN:
            return value  # the common case, without the checks below
        if isinstance(value, str):
            return str(value)  # an enum member: its value, not its name
        if self.sqlite and isinstance(value, datetime):
            return value.strftime(SQLITE_DATETIME_FORMAT)
        return value
