"""The send report counts only outcomes that reached the database; the error classes say what they mean."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from outreach import store
from outreach.backends import get_backend
from outreach.dispatcher import Dispatcher, claim
from outreach.errors import (
    BatchAbort,
    DeliveryError,
    PermanentError,
    RecipientUnknown,
    TransientError,
)
from outreach.models import SENDING, messages
from tests.conftest import NOW, smtp_settings
from tests.factories import message, queue_message


def _lose_the_lease(engine, message_id: int) -> None:
    """Another worker took the message over (our lease ran out meanwhile)."""
    with store.write(engine) as conn:
        conn.execute(update(messages).where(messages.c.id == message_id).values(claimed_by="someone-else"))


@pytest.mark.parametrize(
    ("reply", "counted_in"), [("554 5.7.1 Rejected", "failed"), ("451 4.3.0 Later", "deferred")]
)
def test_an_outcome_whose_lease_was_lost_is_not_counted(engine, settings, smtp_server, reply, counted_in):
    """The outcome was not written (another worker holds the message now): that worker reports it."""
    cfg = smtp_settings(settings, smtp_server)
    message_id = queue_message(engine)
    [row] = claim(engine, cfg, 1, NOW, "me")
    _lose_the_lease(engine, message_id)
    smtp_server.handler.script.append(reply)
    backend = get_backend(cfg)
    try:
        report = Dispatcher(engine, cfg, backend, lambda: NOW, worker="me").deliver(row)
    finally:
        backend.close()
    assert getattr(report, counted_in) == []
    stored = message(engine, message_id)
    assert stored.status == SENDING and stored.claimed_by == "someone-else"


def test_batch_abort_is_neither_transient_nor_permanent():
    """The dispatcher re-raises it to stop the batch instead of judging one message by it."""
    assert issubclass(BatchAbort, DeliveryError)
    assert not issubclass(BatchAbort, TransientError | PermanentError)
    assert issubclass(RecipientUnknown, PermanentError)
