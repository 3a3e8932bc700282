"""Priority lanes: every queue is four Redis lists, served most urgent first with an aging share.

A message's ``priority`` option names its lane; :class:`LanePolicy` decides the
order in which a consumer's fetch looks at them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dramatiq.message import Message

#: Priority lanes of a queue, most urgent first.
LANES = ("critical", "high", "normal", "low")

#: Lane of a message that names no priority.
DEFAULT_LANE = "normal"


def lane_of(message: Message) -> str:
    """The lane ``message`` goes to; a clear ``ValueError`` for an unknown priority."""
    priority = message.options.get("priority")
    if priority is None:
        return DEFAULT_LANE
    if priority not in LANES:
        raise ValueError(f"priority must be one of {', '.join(LANES)} (got {priority!r})")
    return priority


@dataclass
class LanePolicy:
    """Which lane a consumer's fetch serves first.

    Strict priority, with a guaranteed share for the lower lanes: every
    ``aging_every``-th fetch of a consumer starts with ``high``, ``normal``
    or ``low`` in turn (then the rest in priority order).  So while lower
    lanes hold messages, each of them gets at least one fetch in
    ``3 * aging_every`` and is never starved, and a critical message
    is served by all other fetches.

    Parameters:
      aging_every(int): How often (in fetches) a lower lane goes first.
        Defaults to 8.  0 means strict priority (lower lanes can starve).
    """

    aging_every: int = 8
    _fetches: int = field(default=0, init=False)

    def next_order(self) -> Sequence[str]:
        self._fetches += 1
        if not self.aging_every or self._fetches % self.aging_every:
            return LANES
        first = LANES[1 + (self._fetches // self.aging_every) % (len(LANES) - 1)]
        return (first, *(lane for lane in LANES if lane != first))
