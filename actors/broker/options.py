"""Message options that job-control middleware set for each other (names only)."""

#: Why a message was dead-lettered; kept by :mod:`actors.middleware.dead_letters`.
DEAD_LETTER_REASON = "dead_letter_reason"

#: How the audit trail records a skipped message: a ``TaskStatus`` value or :data:`DUPLICATE`.
SKIP_STATUS = "skip_status"

#: The reason recorded with a skipped message.
SKIP_REASON = "skip_reason"

#: ``SKIP_STATUS`` of a duplicate delivery: nothing is recorded for it.
DUPLICATE = "duplicate"

#: Added on a retry from the dead letters: offsets the audit sequence and the
#: admission key, so the fresh attempts are new ones.
AUDIT_SEQ_BASE = "audit_seq_base"

#: Makes the admission key of a message sent again (the saga's recovery sweep, a delivery
#: postponed until its step's lease ends) its own: admission counts it afresh instead of
#: dropping it as a duplicate of the first copy.  A short string.
ADMISSION_SALT = "admission_salt"

#: Deliveries of earlier copies of a message sent again that died running it: counted
#: towards ``max_deliveries``, so a poison message is still quarantined.
PRIOR_DELIVERIES = "prior_deliveries"


def dead_letter_reasons_key(namespace: str) -> str:
    """The hash of why each dead letter died (by Redis entry id), kept beside Dramatiq's ``.XQ``."""
    return f"{namespace}:dead-letter-reasons"
