"""The message a worker receives: Dramatiq's ``MessageProxy`` with its fields read as plain attributes.

A ``MessageProxy`` forwards every field read (``message.options``,
``message.message_id``, ...) through ``__getattr__``, which Python calls
only after the normal lookup has failed, and before 3.12 that failure first
builds and formats an ``AttributeError``: about 0.45 µs a read, where a plain
attribute takes a few ns.  A worker's middleware stack (Dramatiq's,
tradeflow's audit trail, metrics, acks, admission, ...) reads some fifty
fields of each message: a fifth of a no-op message's worker instructions
went to those reads (``docs/performance.md``).  :class:`ReceivedMessage`
copies the fields onto the proxy once; a ``Message`` is frozen, so the
copies never go stale.
"""

from __future__ import annotations

from dramatiq.broker import MessageProxy
from dramatiq.message import Message

from .acks import ACK_HOLD_ATTRIBUTE
from .admission import ADMISSION_ATTRIBUTE


class ReceivedMessage(MessageProxy):
    """A ``MessageProxy`` whose message fields are its own attributes (read without ``__getattr__``).

    Everything else is the proxy's: its own state and methods (``fail``,
    ``stuff_exception``, equality), and the message's methods (``copy``,
    ``encode``), still forwarded by ``__getattr__``.  The per-delivery
    attributes tradeflow sets on a proxy (its ack hold, its admission
    verdict) default to ``None`` on the class, so reading them on a message
    without them raises nothing either.

    Parameters:
      message(Message): The message received.
    """

    def __init__(self, message: Message) -> None:
        # A Message is a frozen dataclass: its instance dict holds its fields and nothing else.
        # The proxy's own state is set after, so it wins over any name the two might share.
        self.__dict__.update(vars(message))
        super().__init__(message)


# Class defaults for the attributes a middleware sets per delivery (their names are constants).
for _attribute in (ACK_HOLD_ATTRIBUTE, ADMISSION_ATTRIBUTE):
    setattr(ReceivedMessage, _attribute, None)
del _attribute
