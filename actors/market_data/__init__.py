"""Market data: providers behind one interface, derived features, and the Delta Lake tables.

Importing this package does not import deltalake (it is not fork-safe):
:mod:`.tables` imports it inside its functions.
"""

from __future__ import annotations

from pathlib import Path

from .providers import (
    INTERVALS,
    BarRequest,
    MarketDataProvider,
    NoDataError,
    NotProvidedError,
    SymbolDataError,
    UnknownSymbolError,
)

#: Names of the providers :func:`build_provider` knows.
PROVIDERS = ("synthetic", "files", "ib", "yfinance")


def build_provider(
    kind: str,
    *,
    seed: int = 7,
    symbols: frozenset[str] | None = None,
    files_dir: Path | None = None,
    ib_host: str = "127.0.0.1",
    ib_port: int = 4002,
    ib_client_id: int = 17,
) -> MarketDataProvider:
    """The provider named ``kind``, configured from the arguments that apply to it."""
    if kind == "synthetic":
        from .synthetic import SyntheticProvider

        return SyntheticProvider(seed=seed, symbols=symbols)
    if kind == "files":
        from .files import FileProvider

        if files_dir is None:
            raise ValueError("the files provider needs files_dir (TRADEFLOW_DATA_FILES_DIR)")
        return FileProvider(folder=files_dir)
    if kind == "ib":
        from .ib import IBProvider

        return IBProvider(host=ib_host, port=ib_port, client_id=ib_client_id)
    if kind == "yfinance":
        from .online import YFinanceProvider

        return YFinanceProvider()
    raise ValueError(f"unknown data provider {kind!r}: use one of {', '.join(PROVIDERS)}")


__all__ = [
    "INTERVALS",
    "PROVIDERS",
    "BarRequest",
    "MarketDataProvider",
    "NoDataError",
    "NotProvidedError",
    "SymbolDataError",
    "UnknownSymbolError",
    "build_provider",
]
