"""Middleware hooks dispatched only to the middleware that implement them.

Dramatiq's ``Broker.emit_before``/``emit_after`` look up and call the hook on
every middleware, and most of them inherit the base class's no-op: with
tradeflow's eighteen middleware that is about fifty lookups and calls per
message sent and as many again per message processed.  :class:`HookTable`
keeps, per signal, the bound hooks that do something, in the order Dramatiq
would call them, so the same hooks run in the same order with the same error
handling, minus the no-ops.
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, MiddlewareError


def implemented_hooks(middleware: list[Middleware], name: str) -> tuple:
    """Bound ``name`` hooks of the middleware that override :class:`Middleware`'s no-op."""
    base = getattr(Middleware, name, None)
    hooks = []
    for item in middleware:
        if name in vars(item) or getattr(type(item), name, None) is not base:
            hooks.append(getattr(item, name))
    return tuple(hooks)


class HookTable(Broker):
    """A broker mixin: ``emit_before``/``emit_after`` skip middleware that do not implement the hook.

    The table is rebuilt whenever middleware is added (or the list changes length).
    """

    _hooks: dict[str, tuple] | None = None
    _hooks_for = -1

    def add_middleware(self, middleware: Middleware, **kwargs) -> None:
        super().add_middleware(middleware, **kwargs)
        self._hooks = None

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        for hook in self._hooks_of(name, reverse=False):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        for hook in self._hooks_of(name, reverse=True):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)

    def _hooks_of(self, name: str, *, reverse: bool) -> tuple:
        hooks = self._hooks
        if hooks is None or self._hooks_for != len(self.middleware):
            hooks = self._hooks = {}
            self._hooks_for = len(self.middleware)
        found = hooks.get(name)
        if found is None:
            ordered = list(reversed(self.middleware)) if reverse else self.middleware
            found = hooks[name] = implemented_hooks(ordered, name)
        return found
