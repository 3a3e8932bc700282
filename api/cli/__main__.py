"""``python -m api.cli``: the ``tradeflow`` command."""

from .app import main

main()
