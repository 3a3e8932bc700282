"""A wire-level IB Gateway simulator: the real ``ib_async`` client talks to it over TCP.

Tested with ``ib_async`` 2.1.0 (pinned in ``pyproject.toml``), server version 178.

API (importable by any area)::

    from actors.ib.gateway_sim import GatewaySimulator, Scenario, SimPosition, SimBar

    scenario = Scenario(
        accounts=["DU1", "DU2"],
        positions=[SimPosition(account="DU1", conid=265598, symbol="AAPL", position=100,
                               avg_cost=150.0, market_price=190.0)],
        account_values={"DU1": {"NetLiquidation": 120000, "TotalCashValue": 101000}},
        historical_bars={"AAPL": [SimBar(date="20261120", open=1, high=2, low=0.5, close=1.5,
                                         volume=1000)]},
    )
    with GatewaySimulator(scenario=scenario) as gateway:   # background thread, free port
        ib = ib_async.IB(); ib.connect("127.0.0.1", gateway.port, clientId=7, readonly=True)
        ...
    gateway.request_counts["positions"]  # how many reqPositions the gateway answered

- ``Scenario``: everything the gateway reports, plus injected faults (``latency_ms``,
  ``disconnect_after_requests``, ``disconnect_on``, ``errors``, ``refuse_connections``).
  ``Scenario.from_dict(data)`` / ``Scenario.from_file(path)`` (JSON) validate input and say
  which field is wrong.  The scenario may be mutated while the server runs (e.g. positions).
- ``GatewaySimulator(scenario=..., host=..., port=0)``: ``start()`` (returns self, port bound),
  ``stop()``, context manager, ``port``, ``request_counts`` (kind -> requests received),
  ``connection_count``, ``drop_connections()`` (cut every client socket, as a gateway restart
  does), ``serve_forever()`` (foreground, for ``tradeflow ib-sim``).

Request kinds (keys of ``request_counts``, ``disconnect_on`` and ``errors``): ``positions``,
``account_updates``, ``account_updates_multi``, ``account_summary``, ``executions``,
``open_orders``, ``completed_orders``, ``historical_data``, ``market_data``, ``current_time``,
``ids``, ``managed_accounts``, ``pnl`` (``reqPnL``), ``pnl_single`` (``reqPnLSingle``),
``place_order``, ``cancel_order`` (orders: ``order_fills``, ``order_ack_delay_ms``; open and
completed orders are listed with their ``orderRef``, see ``actors/ib/sim_orders.py``).
A P&L subscription is answered with one update at once (the real gateway repeats it about every
second).  Messages it does not implement are answered with a 321 warning
naming the message id.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from .sim_orders import OrderDesk

#: The server version the simulator announces (ib_async 2.1.0 accepts 157..178).
SERVER_VERSION = 178

#: The lowest client version the simulator accepts in the handshake.
MIN_CLIENT_VERSION = 157

#: TWS error code for a clientId already connected.
CLIENT_ID_IN_USE = 326

#: TWS error code for "no security definition" (unknown contract).
NO_SECURITY_DEFINITION = 200

#: TWS error code when a historical data query returned nothing.
HISTORICAL_DATA_ERROR = 162

#: Outgoing message ids (TWS API ``IN`` ids, as ib_async's decoder numbers them).
TICK_PRICE, ERR_MSG, ACCT_VALUE, PORTFOLIO_VALUE, ACCT_UPDATE_TIME = 1, 4, 6, 7, 8
NEXT_VALID_ID, EXECUTION_DATA, MANAGED_ACCTS, HISTORICAL_DATA, CURRENT_TIME = 9, 11, 15, 17, 49
ACCT_DOWNLOAD_END, EXECUTION_DATA_END, TICK_SNAPSHOT_END = 54, 55, 57
COMMISSION_REPORT, POSITION_DATA, POSITION_END, ACCOUNT_SUMMARY, ACCOUNT_SUMMARY_END = 59, 61, 62, 63, 64
ACCOUNT_UPDATE_MULTI, ACCOUNT_UPDATE_MULTI_END = 73, 74
PNL, PNL_SINGLE = 94, 95

_STRICT = ConfigDict(extra="forbid")


@dataclass
class SimPosition:
    """One position the gateway reports.

    Parameters:
      account: Account code holding it.
      conid: IB contract id.
      symbol: Ticker symbol.
      position: Signed quantity.
      avg_cost: Average cost per unit (times the multiplier, as IB reports it).
      market_price: Mark used for portfolio updates and market data (``None``: unknown;
        portfolio updates then report the average cost).
      daily_pnl: Today's P&L of the position, reported by ``reqPnLSingle`` (default 0).
      sec_type / exchange / currency / multiplier: Contract fields (defaults STK, SMART, USD, "").
    """

    __pydantic_config__ = _STRICT

    account: str
    conid: int
    symbol: str
    position: float
    avg_cost: float
    market_price: float | None = None
    daily_pnl: float = 0.0
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"
    multiplier: str = ""

    @property
    def mark(self) -> float:
        return self.avg_cost if self.market_price is None else self.market_price

    @property
    def market_value(self) -> float:
        return self.mark * self.position * float(self.multiplier or 1)


@dataclass
class SimBar:
    """One historical bar; ``date`` is sent as is (``YYYYmmdd`` or ``YYYYmmdd HH:MM:SS Zone``)."""

    __pydantic_config__ = _STRICT

    date: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    average: float = 0.0
    bar_count: int = 0


@dataclass
class SimExecution:
    """One past execution, reported by ``reqExecutions`` with its commission report.

    Parameters:
      time: ``YYYYmmdd HH:MM:SS`` in UTC.
      side: ``BOT`` or ``SLD``.
      realized_pnl: Realized P&L of the fill (commission report).
    """

    __pydantic_config__ = _STRICT

    exec_id: str
    account: str
    conid: int
    symbol: str
    side: str
    shares: float
    price: float
    time: str
    realized_pnl: float = 0.0
    commission: float = 0.0
    currency: str = "USD"
    order_id: int = 0
    perm_id: int = 0


@dataclass
class Scenario:
    """What the simulated gateway holds and how it misbehaves.

    Parameters:
      accounts: Managed account codes (at least one: ib_async waits for them).
      positions: Positions with their marks.
      account_values: account -> tag -> value (account values and account summary).
      base_currency: Currency of the account values (default USD).
      historical_bars: symbol (or conid as a string) -> bars, answered in full to any
        ``reqHistoricalData`` for that contract (end date, duration, bar size and what-to-show
        are not applied; ``keepUpToDate`` gets no updates).
      executions: Past executions for ``reqExecutions``.
      daily_pnl: account -> today's P&L reported by ``reqPnL`` (default: the sum of the
        account's positions' ``daily_pnl``).  Unlike the change of NetLiquidation, it leaves
        deposits and withdrawals out.
      next_order_id: First valid order id announced.
      latency_ms: Delay before every answer, in milliseconds (default 0).
      disconnect_after_requests: Close a connection instead of answering its Nth request after
        the handshake (``None``: never).
      disconnect_on: kind -> N: close the connection instead of answering the Nth request of
        that kind, counted over the server's life.
      errors: kind -> [code, message]: answer every request of that kind with this error.
      refuse_connections: Close every connection right after accepting it.
      order_fills: What a placed order does: ``fill`` at once, ``hold`` until cancelled, or
        ``reject`` (see :mod:`actors.ib.sim_orders`).
      order_default_price: Fill price of a market order in a symbol without a mark.
      order_ack_delay_ms: Delay before the answers to a ``placeOrder`` (its status, fill), in
        milliseconds; the order is accepted (and filled) at once, as a gateway that took the
        order before its client died.
    """

    __pydantic_config__ = _STRICT

    accounts: list[str] = field(default_factory=lambda: ["DU1"])
    positions: list[SimPosition] = field(default_factory=list)
    account_values: dict[str, dict[str, str | float]] = field(default_factory=dict)
    base_currency: str = "USD"
    historical_bars: dict[str, list[SimBar]] = field(default_factory=dict)
    executions: list[SimExecution] = field(default_factory=list)
    daily_pnl: dict[str, float] = field(default_factory=dict)
    next_order_id: int = 1
    latency_ms: float = 0.0
    disconnect_after_requests: int | None = None
    disconnect_on: dict[str, int] = field(default_factory=dict)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    refuse_connections: bool = False
    order_fills: Literal["fill", "hold", "reject"] = "fill"
    order_default_price: float = 100.0
    order_ack_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.accounts or not all(self.accounts):
            raise ValueError("accounts: at least one non-empty account code is required")
        unknown = sorted({p.account for p in self.positions} - set(self.accounts))
        if unknown:
            raise ValueError(f"positions: accounts {unknown} are not in accounts {self.accounts}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Validate ``data`` (JSON-like); a ``ValueError`` names every wrong field."""
        try:
            return TypeAdapter(cls).validate_python(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'scenario'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"invalid scenario: {problems}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """Read a JSON scenario file."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read scenario {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"scenario {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"scenario {path} must be a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def frame(*fields: object) -> bytes:
    """One TWS API message: 4-byte big-endian length, then fields each ending in NUL."""
    payload = "".join(f"{_text(value)}\0" for value in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class _Disconnect(Exception):
    """Raised by a handler to cut the connection instead of answering."""


class GatewaySimulator:
    """An asyncio TCP server speaking the TWS API to ``ib_async`` clients.

    Parameters:
      scenario: What to report and which faults to inject.
      host: Interface to bind (default 127.0.0.1).
      port: Port to bind; 0 (default) picks a free one, read it from ``port`` after ``start()``.
    """

    def __init__(self, *, scenario: Scenario, host: str = "127.0.0.1", port: int = 0) -> None:
        self.scenario = scenario
        self.host = host
        self.port = port
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.connection_count = 0
        self.logger = logging.getLogger(type(self).__name__)
        self._client_ids: dict[asyncio.StreamWriter, int] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._client_tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers = {
            61: ("positions", self._positions),
            64: (None, None),  # cancelPositions
            15: (None, None),  # reqAutoOpenOrders
            6: ("account_updates", self._account_updates),
            76: ("account_updates_multi", self._account_updates_multi),
            77: (None, None),
            7: ("executions", self._executions),
            62: ("account_summary", self._account_summary),
            63: (None, None),
            20: ("historical_data", self._historical_data),
            25: (None, None),
            1: ("market_data", self._market_data),
            2: (None, None),
            49: ("current_time", self._current_time),
            8: ("ids", self._ids),
            17: ("managed_accounts", self._managed_accounts),
            92: ("pnl", self._pnl),
            93: (None, None),  # cancelPnL
            94: ("pnl_single", self._pnl_single),
            95: (None, None),  # cancelPnLSingle
        }
        #: Orders (:mod:`actors.ib.sim_orders`): handlers that also take the client's id.
        self.orders = OrderDesk(scenario=scenario, frame=frame, execution=SimExecution)
        self._client_handlers = {
            3: ("place_order", self.orders.place),
            4: ("cancel_order", self.orders.cancel),
            5: ("open_orders", functools.partial(self.orders.open_orders, all_clients=False)),
            16: ("open_orders", functools.partial(self.orders.open_orders, all_clients=True)),
            99: ("completed_orders", self.orders.completed_orders),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GatewaySimulator:
        """Serve from a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="ib-gateway-sim", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> GatewaySimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def serve_forever(self) -> None:
        """Serve in the running event loop until cancelled (the ``tradeflow ib-sim`` command)."""
        self._loop = asyncio.get_running_loop()
        await self._listen()
        try:
            await asyncio.Event().wait()
        finally:
            await self._close()

    def drop_connections(self) -> None:
        """Cut every client connection, as a gateway restart would."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_all)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.logger.info("IB gateway simulator listening on %s:%d", self.host, self.port)

    async def _close(self) -> None:
        self._drop_all()  # each client task then ends on its own
        if self._client_tasks:
            await asyncio.wait(self._client_tasks, timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    # -- connection --------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connection_count += 1
        task = asyncio.current_task()
        self._client_tasks.add(task)
        task.add_done_callback(self._client_tasks.discard)
        self._writers.add(writer)
        if self.scenario.refuse_connections:
            writer.transport.abort()
            return
        try:
            await self._handshake(reader, writer)
            handled = 0
            while True:
                fields = await _read_message(reader)
                handled += 1
                limit = self.scenario.disconnect_after_requests
                if limit is not None and handled > limit:
                    raise _Disconnect(f"after {limit} requests")
                await self._dispatch(fields, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except _Disconnect as exc:
            self.logger.info("dropping connection %s", exc)
        except ValueError as exc:
            self.logger.warning("closing connection: %s", exc)
        finally:
            self._client_ids.pop(writer, None)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        prefix = await reader.readexactly(4)
        if prefix != b"API\0":
            raise ValueError(f"expected the API\\0 prefix, got {prefix!r}")
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        versions = (await reader.readexactly(length)).decode().split(" ")[0]
        if not versions.startswith("v") or ".." not in versions:
            raise ValueError(f"expected a version range like v157..178, got {versions!r}")
        low, high = (int(v) for v in versions[1:].split(".."))
        if high < MIN_CLIENT_VERSION or low > SERVER_VERSION:
            raise ValueError(f"client versions {low}..{high} do not include {SERVER_VERSION}")
        writer.write(frame(SERVER_VERSION, time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime())))
        fields = await _read_message(reader)
        if fields[0] != "71":
            raise ValueError(f"expected startApi (71), got message {fields[0]}")
        client_id = int(fields[2])
        if client_id in self._client_ids.values():
            writer.write(frame(ERR_MSG, 2, -1, CLIENT_ID_IN_USE, "client id is already in use", ""))
            await writer.drain()
            raise _Disconnect(f"client id {client_id} already in use")
        self._client_ids[writer] = client_id
        writer.write(frame(MANAGED_ACCTS, 1, ",".join(self.scenario.accounts)))
        writer.write(frame(NEXT_VALID_ID, 1, self.scenario.next_order_id))

    async def _dispatch(self, fields: list[str], writer: asyncio.StreamWriter) -> None:
        message_id = int(fields[0])
        kind, handler = self._handlers.get(message_id, ("unsupported", None))
        if message_id in self._client_handlers:
            kind, take = self._client_handlers[message_id]
            client_id = self._client_ids.get(writer, 0)
            handler = lambda fields: take(fields, client_id)  # noqa: E731
        if kind is None:
            return
        self.request_counts[kind] += 1
        if self.scenario.disconnect_on.get(kind) == self.request_counts[kind]:
            raise _Disconnect(f"on {kind} request #{self.request_counts[kind]}")
        if self.scenario.latency_ms:
            await asyncio.sleep(self.scenario.latency_ms / 1000)
        if kind in self.scenario.errors:
            code, text = self.scenario.errors[kind]
            writer.write(frame(ERR_MSG, 2, _request_id(kind, fields), code, text, ""))
            return
        if handler is None:
            text = f"simulator does not implement message {message_id}"
            writer.write(frame(ERR_MSG, 2, -1, 321, text, ""))
            return
        # the whole answer is computed first: what a request changes (an order accepted, filled)
        # happens at the gateway even if the client is gone before the answer is written
        answer = list(handler(fields))
        if kind == "place_order" and self.scenario.order_ack_delay_ms:
            await asyncio.sleep(self.scenario.order_ack_delay_ms / 1000)
        for message in answer:
            writer.write(message)

    # -- answers (each yields framed messages) -----------------------------------------------

    def _positions(self, _fields: list[str]):
        for p in list(self.scenario.positions):
            yield frame(
                POSITION_DATA, 3, p.account, p.conid, p.symbol, p.sec_type, "", 0.0, "",
                p.multiplier, p.exchange, p.currency, p.symbol, p.symbol, p.position, p.avg_cost,
            )  # fmt: skip
        yield frame(POSITION_END, 1)

    def _account_updates(self, fields: list[str]):
        _, _, subscribe, account = fields[:4]
        if subscribe != "1":
            return
        for tag, value in self.scenario.account_values.get(account, {}).items():
            yield frame(ACCT_VALUE, 2, tag, value, self.scenario.base_currency, account)
        for p in self._positions_of(account):
            unrealized = p.market_value - p.avg_cost * p.position
            yield frame(
                PORTFOLIO_VALUE, 8, p.conid, p.symbol, p.sec_type, "", 0.0, "", p.multiplier,
                p.exchange, p.currency, p.symbol, p.symbol, p.position, p.mark, p.market_value,
                p.avg_cost, unrealized, 0.0, account,
            )  # fmt: skip
        yield frame(ACCT_UPDATE_TIME, 1, time.strftime("%H:%M", time.gmtime()))
        yield frame(ACCT_DOWNLOAD_END, 1, account)

    def _account_updates_multi(self, fields: list[str]):
        _, _, req_id, account, model_code = fields[:5]
        for tag, value in self.scenario.account_values.get(account, {}).items():
            yield frame(
                ACCOUNT_UPDATE_MULTI, 1, req_id, account, model_code, tag, value, self.scenario.base_currency
            )
        yield frame(ACCOUNT_UPDATE_MULTI_END, 1, req_id)

    def _account_summary(self, fields: list[str]):
        _, _, req_id, _group, tags = fields[:5]
        wanted = set(tags.split(","))
        for account in self.scenario.accounts:
            for tag, value in self.scenario.account_values.get(account, {}).items():
                if tag in wanted:
                    yield frame(ACCOUNT_SUMMARY, 1, req_id, account, tag, value, self.scenario.base_currency)
        yield frame(ACCOUNT_SUMMARY_END, 1, req_id)

    def _executions(self, fields: list[str]):
        req_id, account_filter = fields[2], fields[4]
        for ex in self.scenario.executions:
            if account_filter and ex.account != account_filter:
                continue
            yield frame(
                EXECUTION_DATA, req_id, ex.order_id, ex.conid, ex.symbol, "STK", "", 0.0, "", "", "SMART",
                ex.currency, ex.symbol, ex.symbol, ex.exec_id, f"{ex.time} UTC", ex.account, "SMART",
                ex.side, ex.shares, ex.price, ex.perm_id, 0, 0, ex.shares, ex.price, "", "", "", "", 0, 0,
            )  # fmt: skip
            yield frame(COMMISSION_REPORT, 1, ex.exec_id, ex.commission, ex.currency, ex.realized_pnl, "", "")
        yield frame(EXECUTION_DATA_END, 1, req_id)

    def _historical_data(self, fields: list[str]):
        req_id, conid, symbol = fields[1], fields[2], fields[3]
        bars = self.scenario.historical_bars.get(symbol) or self.scenario.historical_bars.get(conid)
        if not bars:
            text = f"Historical Market Data Service error message:HMDS query returned no data: {symbol}"
            yield frame(ERR_MSG, 2, req_id, HISTORICAL_DATA_ERROR, text, "")
            return
        values = [
            value
            for b in bars
            for value in (b.date, b.open, b.high, b.low, b.close, b.volume, b.average, b.bar_count)
        ]
        yield frame(HISTORICAL_DATA, req_id, bars[0].date, bars[-1].date, len(bars), *values)

    def _market_data(self, fields: list[str]):
        req_id, conid = fields[2], int(fields[3] or 0)
        snapshot = fields[17] if len(fields) > 17 else "0"
        marks = [p.market_price for p in self.scenario.positions if p.conid == conid]
        if not marks or marks[0] is None:
            yield frame(ERR_MSG, 2, req_id, NO_SECURITY_DEFINITION, f"No market data for conid {conid}", "")
            return
        yield frame(TICK_PRICE, 6, req_id, 4, marks[0], 100, 0)  # tick type 4: last
        if snapshot == "1":
            yield frame(TICK_SNAPSHOT_END, 1, req_id)

    def _current_time(self, _fields: list[str]):
        yield frame(CURRENT_TIME, 1, int(time.time()))

    def _ids(self, _fields: list[str]):
        yield frame(NEXT_VALID_ID, 1, self.scenario.next_order_id)

    def _managed_accounts(self, _fields: list[str]):
        yield frame(MANAGED_ACCTS, 1, ",".join(self.scenario.accounts))

    # -- P&L subscriptions (reqPnL / reqPnLSingle) ---------------------------------------------

    def _pnl(self, fields: list[str]):
        req_id, account = fields[1], fields[2]
        held = self._positions_of(account)
        daily = self.scenario.daily_pnl.get(account, sum(p.daily_pnl for p in held))
        unrealized = sum(p.market_value - p.avg_cost * p.position for p in held)
        realized = sum(e.realized_pnl for e in self.scenario.executions if e.account == account)
        yield frame(PNL, req_id, daily, unrealized, realized)

    def _pnl_single(self, fields: list[str]):
        req_id, account, conid = fields[1], fields[2], int(fields[4] or 0)
        for p in self._positions_of(account):
            if p.conid == conid:
                unrealized = p.market_value - p.avg_cost * p.position
                yield frame(PNL_SINGLE, req_id, p.position, p.daily_pnl, unrealized, 0.0, p.market_value)
                return
        yield frame(PNL_SINGLE, req_id, 0, 0.0, 0.0, 0.0, 0.0)  # not held: zeros (IB's answer not modelled)

    def _positions_of(self, account: str) -> list[SimPosition]:
        return [p for p in self.scenario.positions if p.account == account]


def _request_id(kind: str, fields: list[str]) -> str:
    """The request id an error answer refers to (-1 for requests that have none)."""
    if kind in {"historical_data", "pnl", "pnl_single"}:
        return fields[1]
    if kind in {"account_summary", "account_updates_multi", "executions", "market_data"}:
        return fields[2]
    return "-1"


async def _read_message(reader: asyncio.StreamReader) -> list[str]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    payload = (await reader.readexactly(length)).decode(errors="backslashreplace")
    fields = payload.split("\0")
    if fields[-1] == "":
        fields.pop()
    if not fields or not fields[0].isdigit():
        raise ValueError(f"malformed message {payload[:80]!r}")
    return fields


def demo_scenario(*, holdings: int = 5, accounts: tuple[str, ...] = ("DU1", "DU2")) -> Scenario:
    """A plausible gateway: ``holdings`` stock positions per account with marks and daily P&L,
    account values, 20 daily bars per symbol and one execution per account."""
    positions, bars, executions = [], {}, []
    for a, account in enumerate(accounts):
        for i in range(holdings):
            price = 50.0 + i
            symbol = f"SYM{i}"
            positions.append(
                SimPosition(account=account, conid=100_000 + i, symbol=symbol, position=10 * (i + 1) - a,
                            avg_cost=price - 2.0, market_price=price, daily_pnl=25.0 * (i + 1))
            )  # fmt: skip
            bars[symbol] = [
                SimBar(date=f"202611{day:02d}", open=price, high=price + 1, low=price - 1, close=price + 0.5,
                       volume=1000 + day, average=price, bar_count=10)
                for day in range(1, 21)
            ]  # fmt: skip
        executions.append(
            SimExecution(exec_id=f"0000e.{a}", account=account, conid=100_000, symbol="SYM0", side="SLD",
                         shares=5, price=51.0, time="20261123 14:30:00", realized_pnl=15.0, commission=1.0)
        )  # fmt: skip
    values = {
        account: {
            "NetLiquidation": 100_000.0,
            "TotalCashValue": 60_000.0,
            "PreviousDayEquityWithLoanValue": 99_000.0,
        }
        for account in accounts
    }
    return Scenario(
        accounts=list(accounts),
        positions=positions,
        account_values=values,
        historical_bars=bars,
        executions=executions,
    )
