"""Small builders for rows the tests need (queued messages, physicians)."""

from __future__ import annotations

import functools
import uuid
from itertools import count
from pathlib import Path

from outreach import outbox, store
from outreach.models import PENDING, inbound, message_events, messages
from outreach.renderer import Renderer
from tests.conftest import NOW, ROOT

SHIPPED_TEMPLATES = ROOT / "outreach" / "templates" / "email"

_serial = count(1)


def message_row(**overrides) -> dict:
    """A pending message as the outbox stores it (log entry and body), ready to insert."""
    n = next(_serial)
    row = {
        "rule": "test_rule",
        "template": "progress_report",
        "dedupe_key": f"test:{uuid.uuid4().hex}",
        "client_id": None,
        "physician_id": None,
        "recipient": f"doctor{n}@clinic.example.org",
        "recipient_name": f"Dr Test {n}, MD",
        "subject": f"Progress report {n}",
        "html": f"<html><body><p>Report {n}</p></body></html>",
        "text": f"Report {n}\n",
        "priority": 0,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": NOW,
        "message_id": f"<{uuid.uuid4().hex}@rehab.example.org>",
        "created_at": NOW,
        "updated_at": NOW,
    }
    row.update(overrides)
    return row


def queue_message(engine, **overrides) -> int:
    """Insert one pending message straight into the outbox; returns its id."""
    with store.write(engine) as conn:
        message_id = outbox.insert_message(conn, message_row(**overrides))
        outbox.trail(conn, message_id, NOW, "queued")
    return message_id


def record_inbound(engine, **overrides) -> int:
    """One email as the inbox records it (a handled reply unless told otherwise); its id."""
    from sqlalchemy import func, insert, select

    with store.write(engine) as conn:
        uid = (conn.execute(select(func.count()).select_from(inbound)).scalar() or 0) + 1
        row = {
            "folder": "INBOX",
            "uidvalidity": 1,
            "uid": uid,
            "kind": "reply",
            "sender": "a.smith@clinic.example.org",
            "subject": "Re: update",
            "received_at": NOW,
            "created_at": NOW,
            "text": "",
            "moved": True,
            **overrides,
        }
        return conn.execute(insert(inbound).values(**row).returning(inbound.c.id)).scalar_one()


def message(engine, message_id: int):

    with store.read(engine) as conn:
        return conn.execute(outbox.with_body().where(messages.c.id == message_id)).one()


def trail(engine, message_id: int) -> list[tuple[str, str]]:
    from sqlalchemy import select

    with store.read(engine) as conn:
        rows = conn.execute(
            select(message_events.c.action, message_events.c.detail)
            .where(message_events.c.message_id == message_id)
            .order_by(message_events.c.id)
        )
        return [(r.action, r.detail) for r in rows]


def shipped_rules(settings):
    """The rules that come with outreach, as the service loads them."""
    from outreach.rules import load_rules

    return load_rules(settings.campaigns_dir, settings.templates_dir)


def renderer(templates_dir: Path) -> Renderer:
    """A Renderer for ``templates_dir``: over the shipped templates, one kept for the whole run.

    The service keeps one Renderer for its life, and its CSS inlining learns
    each document shape once (checked against premailer the first time);
    building one per plan made every test pay for premailer again. The
    shipped templates are never edited by a test; any other folder (a test's
    own, or a broken copy) gets a fresh Renderer, so edits are always seen.
    """
    if Path(templates_dir).resolve() == SHIPPED_TEMPLATES.resolve():
        return _shipped_renderer()
    return Renderer(templates_dir)


@functools.cache
def _shipped_renderer() -> Renderer:
    return Renderer(SHIPPED_TEMPLATES)


def demo_clients_for(engine, rule):
    """The demo clients a rule applies to (those with its event, for an event rule).

    A reminder (``no_reply``) is about its rule's event; a lapse (``no_event``)
    needs an initial assessment to run from.
    """
    from sqlalchemy import select

    from outreach.models import clients, events

    kind = rule.event or rule.reply_event or ("initial_assessment" if rule.no_event else None)
    with store.read(engine) as conn:
        query = select(clients.c.ref, clients.c.first_name, clients.c.last_name, clients.c.diagnosis)
        if kind:
            query = query.where(clients.c.id.in_(select(events.c.client_id).where(events.c.kind == kind)))
        return conn.execute(query.order_by(clients.c.id)).all()
