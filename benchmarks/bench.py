"""The benchmark: a synthetic practice, the whole pipeline timed against its targets.

    python -m benchmarks.bench [--scale tiny|small|default] [--json FILE]
                             [--database-url URL] [--profile DIR]

``default`` is a large practice (100,000 clients, 200 physicians, 1,000,000
events and measures over two years, 1,000,000 logged messages; 20,000 urgent
emails made due at once, see ``DUE_KIND``). ``small`` is about 1/100 of that and finishes within a
minute; ``tiny`` is for the smoke test. Each run builds the practice in a fresh
database (a SQLite file in a temporary folder unless ``--database-url`` names
an empty one), starts a counting SMTP server (aiosmtpd) in its own process on
loopback, and measures, in this order:

1. plan, steady state: one planner tick when nothing new is due;
2. plan + render: the tick that queues the N emails made due, rendered;
3. send: those N through ``Dispatcher.send_due`` and the SMTP backend;
4. the ceiling: a bare smtplib loop sending the same bytes over as many
   connections (one per ``OUTREACH_BATCH_SIZE``) to the same server;
5. render cost: ``Renderer.render`` (with CSS inlining) against bare Jinja;
6. review: ``outreach log`` as a command, and ``review.list_messages``;
7. idle: CPU and peak RSS of ``outreach run`` while nothing is due;
8. peak RSS of the plan + render + send cycle (2 and 3 run in a child
   process for that reason);
9. retention: ``outreach purge`` of a year of bodies (the older half of the
   log, under a 30-day retention), while another writer keeps writing;
10. end to end (``benchmarks/wire.py``): ``outreach run --once`` as a process
    sending ``scale.wire`` due acknowledgements on 1 and on 4 connections,
    beside bare smtplib sending the same emails on 1, 2 and 4 connections,
    and django-post_office (the ``bench`` extra) sending them as a reference;
11. PostgreSQL only: one ``outreach run`` service, then three, draining
    ``scale.services`` queued emails, each received exactly once.

It prints one table (figure, value, target, met?) and writes the same as JSON.
Linux only: the idle figures are read from ``/proc``. ``--profile DIR`` also
writes a cProfile file per in-process phase (the timings of such a run are
inflated by the profiler: compare them with each other, not with targets).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import cProfile
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from multiprocessing.connection import Connection
from pathlib import Path

import sqlalchemy
from sqlalchemy import Engine, Table, func, select, update

from outreach import status, store
from outreach.backends.smtp import SMTPBackend
from outreach.compose import build_email
from outreach.context import client_context, load_history
from outreach.daemon import make_clock
from outreach.dispatcher import Dispatcher
from outreach.models import (
    CANCELLED,
    FAILED,
    PENDING,
    SENT,
    SUPPRESSED,
    clients,
    events,
    measurements,
    message_bodies,
    messages,
    physicians,
    utcnow,
)
from outreach.outbox import with_body
from outreach.planner import plan
from outreach.renderer import Rendered, Renderer, inline_css
from outreach.review import list_messages
from outreach.rules import Rule, load_rules
from outreach.settings import SOURCE_ROOT, Settings

# A Wednesday, 11:30 in New York and 10:30 in Chicago: inside every
# physician's send window, so nothing is held back for business hours.
NOW = datetime(2026, 11, 25, 16, 30, tzinfo=UTC)
HISTORY_DAYS = 730
BATCH = 5_000  # rows per executemany
PRACTICE_TZ = "America/New_York"
PHYSICIAN_TZS = ("America/New_York", "America/Chicago", None)
FROM_ADDR = "updates@bench-rehab.example.org"
# The milestone that makes the N emails due. Urgent mail is the only mail
# that leaves one email per update: non-urgent updates to one physician are
# combined into a digest, or held by the weekly cap (``digest``), so a burst
# of N individual emails, the thing the send figures measure, is urgent mail.
DUE_KIND = "adverse_event"
DUE_NOTE = "Light-headed on standing after seated exercise; session stopped, BP monitored until settled"


class BenchError(Exception):
    """The benchmark could not run (not a missed target)."""


@dataclass(frozen=True)
class Scale:
    name: str
    clients: int
    physicians: int
    rows: int  # events and measures of history, in total
    due: int  # emails made due for plan + render and send
    log: int  # messages seeded into the log
    idle_seconds: float
    render_samples: int
    runs: int  # repeats of the short measurements (median reported)
    wire: int = 0  # acknowledgements due for each ``outreach run --once`` (benchmarks/wire.py)
    services: int = 0  # emails queued for one, then three services (PostgreSQL only)


SCALES = {
    "default": Scale("default", 100_000, 200, 1_000_000, 20_000, 1_000_000, 60, 200, 5, 2_000, 20_000),
    "small": Scale("small", 1_000, 2, 10_000, 200, 10_000, 10, 50, 3, 200, 2_000),
    "tiny": Scale("tiny", 100, 2, 1_000, 20, 1_000, 2, 5, 1, 20, 200),
}


# --- the synthetic practice ---------------------------------------------------------

FIRST_NAMES = ("Jordan", "Maria", "Robert", "Aisha", "Thomas", "Helen", "Samuel", "Grace", "Daniel", "Olivia")
LAST_NAMES = ("Davis", "Lopez", "Kim", "Patel", "Becker", "Wright", "Okafor", "Liu", "Reyes", "Brooks")
SPECIALTIES = ("Orthopaedic Surgery", "Sports Medicine", "Family Medicine", "Physiatry", "Rheumatology")
CREDENTIALS = ("MD", "MD", "DO", "PA-C", "NP")

# diagnosis, precautions, goals (";"-separated), instruments measured
CONDITIONS = (
    ("Left ACL reconstruction (hamstring autograft)", "No pivoting until cleared",
     "Descend stairs reciprocally without rail; Return to recreational cycling", ("LEFS", "NPRS")),
    ("Lumbar disc herniation L4-5 with left radiculopathy", "Avoid loaded spinal flexion",
     "Sit through a 1-hour work meeting; Lift a 10 kg bag from the floor", ("ODI", "NPRS")),
    ("Right total knee arthroplasty", "No kneeling on the operated knee",
     "Walk 30 minutes in the community; Climb one flight of stairs", ("LEFS", "6MWT")),
    ("Right rotator cuff repair (supraspinatus)", "No lifting over 2 kg with the right arm",
     "Reach an overhead shelf; Carry a 5 kg bag", ("QuickDASH", "NPRS")),
    ("Mechanical neck pain with cervicogenic headache", "No end-range cervical manipulation",
     "Work at the computer for 2 hours without headache", ("NDI", "NPRS")),
    ("Recurrent falls; deconditioning after hospital stay", "Rise slowly; check blood pressure first",
     "Walk to the mailbox without a cane; Get up from the floor independently", ("TUG", "BERG")),
    ("Right Achilles tendinopathy (mid-portion)", "Pain at most 3/10 during loading",
     "Jog 20 minutes; Single-leg heel raise x 20", ("LEFS", "PSFS")),
    ("Knee osteoarthritis, bilateral", "", "Stand from a chair without using the hands", ("30CST", "LEFS")),
)  # fmt: skip

# instrument: (baseline low, baseline high, change low, change high, decimals, lowest, highest)
SCORES = {
    "LEFS": (28, 50, 4, 25, 0, 0, 80),
    "ODI": (28, 52, -26, -4, 0, 0, 100),
    "NDI": (14, 30, -14, -2, 0, 0, 50),
    "QuickDASH": (40, 70, -32, -8, 0, 0, 100),
    "NPRS": (5, 8, -5, -1, 0, 0, 10),
    "PSFS": (2, 5, 1, 5, 0, 0, 10),
    "TUG": (11, 18, -5, -1, 1, 0, None),
    "BERG": (35, 46, 2, 9, 0, 0, 56),
    "6MWT": (250, 400, 20, 120, 0, 0, None),
    "30CST": (6, 11, 1, 5, 0, 0, None),
}

# Whole hours (UTC) at which milestones happen: never at NOW (16:30), so the
# fresh events made due later can never collide with history.
HOURS = {
    "referral_received": 13,
    "initial_assessment": 14,
    "reassessment": 15,
    "goal_achieved": 15,
    "program_completed": 16,
    "discharged": 16,
    "adverse_event": 12,
    "session_attended": 12,
    "session_missed": 12,
}


def _at(day: date, kind: str) -> datetime:
    return datetime.combine(day, clock_time(HOURS[kind]), UTC)


@dataclass
class Care:
    """One client's episode of care: the client row, milestones, measures, session days."""

    client: dict
    milestones: list[tuple[str, datetime, str]]
    measures: list[tuple[str, float, date]]
    session_days: list[date]  # days on which a session may have taken place


def make_care(rng: random.Random, client_id: int, physician_count: int) -> Care:
    """A plausible episode: referral, assessment, reassessments every 30 days, discharge."""
    today = NOW.date()
    referred = today - timedelta(days=rng.randrange(HISTORY_DAYS))
    diagnosis, precautions, goals, instruments = rng.choice(CONDITIONS)
    instruments = instruments if rng.random() < 0.3 else instruments[:1]
    consent = rng.random() < 0.95
    milestones = [("referral_received", _at(referred, "referral_received"), "Referral by fax")]
    measures: list[tuple[str, float, date]] = []
    session_days: list[date] = []
    status = "referred"
    assessed = referred + timedelta(days=rng.randint(3, 7))
    if _at(assessed, "initial_assessment") <= NOW:
        weeks = rng.randint(4, 12)
        end = assessed + timedelta(weeks=weeks)
        ended = _at(end, "discharged") <= NOW
        status = "discharged" if ended else ("on_hold" if rng.random() < 0.05 else "active")
        milestones.append(("initial_assessment", _at(assessed, "initial_assessment"), ""))
        last = assessed
        day = assessed + timedelta(days=30)
        while day < end and _at(day, "reassessment") <= NOW:
            milestones.append(("reassessment", _at(day, "reassessment"), "30-day reassessment"))
            last, day = day, day + timedelta(days=30)
        stop = min(end, today) if ended else today
        span = (stop - assessed).days
        if rng.random() < 0.5 and span > 1:
            achieved = assessed + timedelta(days=rng.randint(1, span - 1))
            milestones.append(("goal_achieved", _at(achieved, "goal_achieved"), "Goal 1: achieved"))
        if rng.random() < 0.01 and span > 1:
            when = assessed + timedelta(days=rng.randint(1, span - 1))
            milestones.append(("adverse_event", _at(when, "adverse_event"), "Light-headed on standing"))
        if ended:
            kind = "discharged" if rng.random() < 0.85 else "program_completed"
            milestones.append((kind, _at(end, kind), "Goals met; independent with home programme"))
            last = end
        measures = _measures(rng, instruments, assessed, last)
        session_days = [assessed + timedelta(days=d) for d in range(1, span)]
    client = {
        "id": client_id,
        "ref": f"B{client_id:06d}",
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": rng.choice(LAST_NAMES),
        "physician_id": rng.randint(1, physician_count),
        "referral_date": referred,
        "diagnosis": diagnosis,
        "precautions": precautions,
        "goals": goals,
        "consent_date": referred if consent else None,
        "consent_expires": None,
        "consent_revoked_on": None,
        "status": status,
        "plan": "2 sessions/week: progressive strengthening, balance, graded return to activity",
        "next_reassessment": None,
        "created_at": _at(referred, "referral_received"),
        "updated_at": _at(referred, "referral_received"),
    }
    return Care(client, milestones, measures, session_days)


def _measures(
    rng: random.Random, instruments: tuple[str, ...], first: date, last: date
) -> list[tuple[str, float, date]]:
    """Baseline at the first assessment and, if later, a follow-up at the last one."""
    found = []
    for code in instruments:
        low, high, change_low, change_high, decimals, lowest, highest = SCORES[code]
        baseline = round(rng.uniform(low, high), decimals)
        found.append((code, baseline, first))
        if last > first:
            score = baseline + rng.uniform(change_low, change_high)
            score = max(lowest, score if highest is None else min(highest, score))
            found.append((code, round(score, decimals), last))
    return found


def physician_row(physician_id: int) -> dict:
    rng = random.Random(physician_id)
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    return {
        "id": physician_id,
        "email": f"dr{physician_id:04d}@clinic{physician_id % 37:02d}.example.org",
        "name": name,
        "credentials": rng.choice(CREDENTIALS),
        "specialty": rng.choice(SPECIALTIES),
        "clinic": f"Clinic {physician_id % 37:02d}",
        "phone": "555-0100",
        "fax": "",
        "timezone": PHYSICIAN_TZS[physician_id % len(PHYSICIAN_TZS)],
        "opted_out_on": None,
        "send_window": None,
        "weekly_cap": None,
        "created_at": NOW - timedelta(days=HISTORY_DAYS + 1),
        "updated_at": NOW - timedelta(days=HISTORY_DAYS + 1),
    }


class Loader:
    """Buffers rows per table and writes them with executemany, ``BATCH`` rows at a time.

    Tables are flushed in the order they were first used, so a row never
    reaches the database before the row its foreign key points at.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.buffers: dict[Table, list[dict]] = {}
        self.counts: dict[str, int] = {}

    def add(self, table: Table, row: dict) -> None:
        buffer = self.buffers.setdefault(table, [])
        buffer.append(row)
        if len(buffer) >= BATCH:
            self.flush()

    def flush(self) -> None:
        with store.write(self.engine) as conn:
            for table, rows in self.buffers.items():
                if rows:
                    conn.execute(table.insert(), _known_columns(table, rows))
                    self.counts[table.name] = self.counts.get(table.name, 0) + len(rows)
                    rows.clear()


def _known_columns(table: Table, rows: list[dict]) -> list[dict]:
    """Drop keys the table does not have (the schema may move on without the bench)."""
    extra = rows[0].keys() - set(table.c.keys())
    if not extra:
        return rows
    return [{k: v for k, v in row.items() if k not in extra} for row in rows]


@dataclass(slots=True)
class Triggered:
    """A historical milestone that a rule reacts to: it gets a message in the log."""

    event_id: int
    client_id: int
    kind: str
    at: datetime


@dataclass
class Practice:
    """What the bench needs to remember about the practice it built."""

    counts: dict[str, int]
    consenting: list[int]  # client ids with consent on record
    physician_of: list[int]  # index: client id
    triggered: list[Triggered] = field(default_factory=list)


def build_practice(engine: Engine, scale: Scale, rules: list[Rule]) -> Practice:
    """Physicians, clients, events and measures, bulk-inserted; ``scale.rows`` in total."""
    rng = random.Random(20261125)
    loader = Loader(engine)
    for physician_id in range(1, scale.physicians + 1):
        loader.add(physicians, physician_row(physician_id))
    reacting = {rule.event for rule in seeded_rules(rules)}
    practice = Practice(counts={}, consenting=[], physician_of=[0])
    event_id = measure_id = 0
    per_client = scale.rows / scale.clients
    for client_id in range(1, scale.clients + 1):
        care = make_care(rng, client_id, scale.physicians)
        loader.add(clients, care.client)
        practice.physician_of.append(care.client["physician_id"])
        if care.client["consent_date"] is not None:
            practice.consenting.append(client_id)
        for kind, at, note in care.milestones:
            event_id += 1
            loader.add(events, _event_row(event_id, client_id, kind, at, note))
            if kind in reacting:
                practice.triggered.append(Triggered(event_id, client_id, kind, at))
        for code, score, day in care.measures:
            measure_id += 1
            loader.add(measurements, _measure_row(measure_id, client_id, code, score, day))
        # Sessions fill the rest of the row budget, spread evenly over the clients.
        room = round(client_id * per_client) - event_id - measure_id
        days = rng.sample(care.session_days, min(max(room, 0), len(care.session_days)))
        for day in sorted(days):
            event_id += 1
            kind = "session_attended" if rng.random() < 0.9 else "session_missed"
            loader.add(events, _event_row(event_id, client_id, kind, _at(day, kind), ""))
    loader.flush()
    practice.counts = dict(loader.counts)
    return practice


def seeded_rules(rules: list[Rule]) -> list[Rule]:
    """The event rules that sent a message for every milestone of their kind.

    A rule on the Nth missed session in a row fires for few of them; the
    planner re-examines the others every tick, as it would in a real practice.
    """
    return [rule for rule in rules if rule.event and not rule.consecutive]


def _event_row(event_id: int, client_id: int, kind: str, at: datetime, note: str) -> dict:
    return {"id": event_id, "client_id": client_id, "kind": kind, "occurred_at": at, "note": note,
            "created_at": at}  # fmt: skip


def _measure_row(measure_id: int, client_id: int, code: str, score: float, day: date) -> dict:
    return {"id": measure_id, "client_id": client_id, "instrument": code, "score": score,
            "measured_on": day, "created_at": datetime.combine(day, clock_time(17), UTC)}  # fmt: skip


def sample_bodies(
    engine: Engine, settings: Settings, rules: list[Rule], renderer: Renderer, practice: Practice
) -> dict[str, tuple[Rendered, str]]:
    """One real rendering per template (and the ref it names), reused for the seeded log.

    The log then has the row sizes of real messages, which matters: SQLite
    reads through a row's HTML to reach the columns stored after it.
    """
    first_of_kind: dict[str, Triggered] = {}
    for found in practice.triggered:
        first_of_kind.setdefault(found.kind, found)
    bodies: dict[str, tuple[Rendered, str]] = {}
    with store.read(engine) as conn:
        for rule in rules:
            found = first_of_kind.get(rule.event or "")
            if found is None or rule.template in bodies:
                continue
            history = load_history(conn, found.client_id)
            context = client_context(settings, rule, history, NOW, found.event_id)
            bodies[rule.template] = (renderer.render(rule.template, context), f"B{found.client_id:06d}")
    if not bodies:
        raise BenchError("the practice has no milestone that any rule reacts to")
    return bodies


def seed_log(
    engine: Engine,
    scale: Scale,
    rules: list[Rule],
    practice: Practice,
    bodies: dict[str, tuple[Rendered, str]],
) -> int:
    """The sent-message log of two years of running: ``scale.log`` messages.

    Every historical milestone a rule reacts to has its message (so the
    planner finds nothing new to queue for it); the rest are older messages
    spread over all clients and the two years.
    """
    rows = LogRows(scale, practice, bodies)
    loader = Loader(engine)
    by_event: dict[str, list[Rule]] = {}
    for rule in seeded_rules(rules):
        by_event.setdefault(rule.event, []).append(rule)
    count = 0

    def add(message_id: int, row: dict) -> None:
        loader.add(messages, {"id": message_id, **row})
        loader.add(message_bodies, {"message_id": message_id, "html": row["html"], "text": row["text"]})

    for found in practice.triggered:
        for rule in by_event[found.kind]:
            count += 1
            created = found.at + rule.delay + timedelta(minutes=2)
            add(count, rows.row(rule, f"{rule.name}:event:{found.event_id}", found.client_id, created))
    event_rules = seeded_rules(rules)
    for n in range(count + 1, scale.log + 1):
        rule = rows.rng.choice(event_rules)
        client_id = rows.rng.randint(1, scale.clients)
        created = NOW - timedelta(minutes=rows.rng.randint(60, HISTORY_DAYS * 1440))
        add(n, rows.row(rule, f"archive:{n}", client_id, created))
    loader.flush()
    return loader.counts.get("messages", 0)


class LogRows:
    """Builds logged message rows: mostly sent, 1 % failed, suppressed without consent."""

    def __init__(self, scale: Scale, practice: Practice, bodies: dict[str, tuple[Rendered, str]]):
        self.rng = random.Random(7)
        self.practice = practice
        self.bodies = bodies
        self.consenting = set(practice.consenting)
        self.doctors = {i: physician_row(i) for i in range(1, scale.physicians + 1)}

    def row(self, rule: Rule, key: str, client_id: int, created: datetime) -> dict:
        body, sample_ref = self.bodies.get(rule.template) or next(iter(self.bodies.values()))
        doctor = self.doctors[self.practice.physician_of[client_id]]
        status, error, response = SENT, None, "250 2.0.0 OK: queued"
        if rule.consent_required and client_id not in self.consenting:
            status, error, response = SUPPRESSED, "no consent to share health information on record", None
        elif self.rng.random() < 0.01:
            response = "550 5.1.1 mailbox unavailable"
            status, error = FAILED, f"RCPT TO <{doctor['email']}>: server replied {response}"
        elif self.rng.random() < 0.005:
            status, error, response = CANCELLED, None, None
        sent_at = created + timedelta(minutes=3) if status == SENT else None
        return {
            "rule": rule.name,
            "template": rule.template,
            "dedupe_key": key,
            "client_id": client_id,
            "physician_id": doctor["id"],
            "recipient": doctor["email"],
            "recipient_name": f"{doctor['name']}, {doctor['credentials']}",
            "subject": body.subject.replace(sample_ref, f"B{client_id:06d}"),
            "html": body.html,
            "text": body.text,
            "priority": rule.priority,
            "kind": rule.kind,
            "digest_id": None,
            "status": status,
            "not_before": None,
            "attempts": 0 if status in (SUPPRESSED, CANCELLED) else 1,
            "next_attempt_at": None,
            "lease_until": None,
            "claimed_by": None,
            "last_error": error,
            "message_id": f"<{uuid.UUID(int=self.rng.getrandbits(128)).hex}@bench-rehab.example.org>",
            "smtp_response": response,
            "created_at": created,
            "updated_at": sent_at or created,
            "sent_at": sent_at,
        }


def make_due(engine: Engine, scale: Scale, practice: Practice) -> int:
    """A fresh urgent milestone for ``scale.due`` consenting clients: that many emails become due."""
    chosen = random.Random(11).sample(practice.consenting, min(scale.due, len(practice.consenting)))
    at = NOW - timedelta(hours=1)
    loader = Loader(engine)
    with store.read(engine) as conn:
        next_id = (conn.execute(select(func.max(events.c.id))).scalar() or 0) + 1
    for offset, client_id in enumerate(chosen):
        loader.add(events, _event_row(next_id + offset, client_id, DUE_KIND, at, DUE_NOTE))
    loader.flush()
    sync_sequences(engine)
    return len(chosen)


def sync_sequences(engine: Engine) -> None:
    """PostgreSQL: move id sequences past the ids the bench inserted itself."""
    if not store.is_postgres(engine):
        return
    with store.write(engine) as conn:
        for table in (physicians, clients, events, measurements, messages):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table.name}), 1))"
            )
        conn.exec_driver_sql("ANALYZE")  # what autovacuum would have done by now


def mark_sent(engine: Engine) -> int:
    """Everything the first tick queued counts as delivered: the service is caught up."""
    with store.write(engine) as conn:
        return conn.execute(
            update(messages)
            .where(messages.c.status == PENDING)
            .values(status=SENT, attempts=1, sent_at=NOW, updated_at=NOW, next_attempt_at=None)
        ).rowcount


# --- the counting SMTP server (its own process) -----------------------------------------


MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class CountingHandler:
    """Accepts every message and only counts messages and bytes (and, if asked, each Message-ID)."""

    def __init__(self, by_message_id: bool = False, pipelining: bool = True) -> None:
        self.messages = 0
        self.bytes = 0
        self.ids: Counter[str] | None = Counter() if by_message_id else None
        self.pipelining = pipelining

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        """Offers PIPELINING (RFC 2920), as Postfix, Exim and the big providers do, unless told not to."""
        session.host_name = hostname
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server, session, envelope) -> str:
        data = envelope.original_content or b""
        self.messages += 1
        self.bytes += len(data)
        if self.ids is not None:
            found = MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
            self.ids[found.group(1).decode("ascii", "replace") if found else ""] += 1
        return "250 2.0.0 OK: counted"


def serve_counting(port: int, pipe: Connection, by_message_id: bool = False, pipelining: bool = True) -> None:
    """Process entry point: run the server until told to stop; answer "count" and "ids" requests.

    "ids" answers with the Message-IDs counted since the last "ids" (and forgets them).
    """
    from aiosmtpd.controller import Controller

    handler = CountingHandler(by_message_id, pipelining)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    pipe.send("ready")
    try:
        while (request := pipe.recv()) in ("count", "ids"):
            if request == "count":
                pipe.send((handler.messages, handler.bytes))
            else:
                pipe.send(dict(handler.ids or {}))
                handler.ids = Counter() if handler.ids is not None else None
    except EOFError:
        pass  # the bench went away
    finally:
        controller.stop()


class CountingServer:
    """The parent's handle on the server process."""

    def __init__(self, by_message_id: bool = False, pipelining: bool = True) -> None:
        if importlib.util.find_spec("aiosmtpd") is None:
            raise BenchError("the bench needs aiosmtpd: pip install -e '.[bench]'")
        context = multiprocessing.get_context("spawn")  # a clean process, none of our memory
        self.port = free_port()
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(
            target=serve_counting, args=(self.port, child_end, by_message_id, pipelining), daemon=True
        )
        self.process.start()
        child_end.close()
        if not self.pipe.poll(60) or self.pipe.recv() != "ready":
            self.stop()
            raise BenchError("the counting SMTP server did not start")

    def count(self) -> tuple[int, int]:
        self.pipe.send("count")
        return self.pipe.recv()

    def message_ids(self) -> Counter[str]:
        """How often each Message-ID arrived since the last call (``by_message_id`` servers)."""
        self.pipe.send("ids")
        return Counter(self.pipe.recv())

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.pipe.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- measurements ------------------------------------------------------------------------


def bench_settings(database_url: str, folder: Path, smtp_port: int = 25) -> Settings:
    """The service's settings for the bench: shipped rules and templates, SMTP on loopback."""
    return Settings(
        database_url=database_url,
        email_backend="smtp",
        outbox_dir=folder / "outbox",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        smtp_timeout=30.0,
        from_addr=FROM_ADDR,
        practice_name="Summit Post-Rehab",
        practice_address="12 Main Street, Springfield",
        sender_name="Alex Morgan",
        sender_credentials="MS, ACSM-CEP",
        timezone=PRACTICE_TZ,
        campaigns_dir=SOURCE_ROOT / "outreach" / "campaigns",
        templates_dir=SOURCE_ROOT / "outreach" / "templates" / "email",
    )


def service_env(settings: Settings) -> dict[str, str]:
    """The environment for an ``outreach`` command on the bench database (file backend)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update(
        OUTREACH_DATABASE_URL=settings.database_url,
        OUTREACH_EMAIL_BACKEND="file",
        OUTREACH_OUTBOX_DIR=str(settings.outbox_dir),
        OUTREACH_CAMPAIGNS_DIR=str(settings.campaigns_dir),
        OUTREACH_TEMPLATES_DIR=str(settings.templates_dir),
        OUTREACH_TIMEZONE=settings.timezone,
        OUTREACH_FROM=settings.from_addr,
    )
    return env


def outreach_command() -> list[str]:
    """The installed ``outreach`` script beside this Python, else ``python -m outreach``."""
    script = Path(sys.executable).with_name("outreach")
    return [str(script)] if script.exists() else [sys.executable, "-m", "outreach"]


@contextlib.contextmanager
def profiled(folder: Path | None, name: str) -> Iterator[None]:
    """cProfile the block into ``folder/name.prof`` when profiling was asked for."""
    if folder is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(str(folder / f"{name}.prof"))


def median_time(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_steady_plan(
    engine: Engine, settings: Settings, rules: list[Rule], renderer: Renderer, runs: int, profile: Path | None
) -> dict:
    """Item 1: a first tick queues what is due and it is marked sent; then the timed ticks."""
    start = time.perf_counter()
    first = plan(engine, settings, rules, renderer, NOW)
    first_seconds = time.perf_counter() - start
    mark_sent(engine)
    queued: list[int] = []

    def tick() -> None:
        queued.append(plan(engine, settings, rules, renderer, NOW).total)

    with profiled(profile, "plan_steady"):
        seconds = median_time(tick, runs)
    if any(queued):
        raise BenchError(f"a steady-state tick queued {max(queued)} message(s): not steady")
    return {"first_tick_s": first_seconds, "first_tick_messages": first.total, "plan_steady_s": seconds}


def run_cycle_child(spec: dict) -> tuple[dict, float]:
    """Items 2, 3 and 8: plan + render and send in a child process; its result and peak RSS (MB)."""
    folder = Path(spec["folder"])
    spec_path, result_path = folder / "cycle-spec.json", folder / "cycle-result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}), encoding="utf-8")
    checkout = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}  # the child imports benchmarks/ from here
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench", "--cycle-child", str(spec_path)], env=checkout
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not result_path.exists():
        raise BenchError(f"the plan + render + send child failed (exit {process.returncode})")
    return json.loads(result_path.read_text(encoding="utf-8")), usage.ru_maxrss / 1024  # kB on Linux


def cycle_child(spec_path: Path) -> None:
    """The child's side: time one planning tick, then one send pass, and write the result."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    profile = Path(spec["profile"]) if spec["profile"] else None
    settings = bench_settings(spec["database_url"], Path(spec["folder"]), spec["smtp_port"])
    engine = store.connect(settings.database_url)
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    renderer = Renderer(settings.templates_dir)
    start = time.perf_counter()
    with profiled(profile, "plan_render"):
        planned = plan(engine, settings, rules, renderer, NOW)
    plan_seconds = time.perf_counter() - start
    backend = SMTPBackend(settings)
    start = time.perf_counter()
    with profiled(profile, "send"):
        sent = Dispatcher(engine, settings, backend, make_clock(NOW)).send_due()
    send_seconds = time.perf_counter() - start
    engine.dispose()
    result = {
        "plan_render_s": plan_seconds,
        "queued": len(planned.queued),
        "suppressed": len(planned.suppressed),
        "render_failed": len(planned.failed),
        "send_s": send_seconds,
        "sent": len(sent.sent),
        "deferred": len(sent.deferred),
        "send_failed": len(sent.failed),
        "aborted": sent.aborted,
    }
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")


def built_messages(engine: Engine, settings: Settings) -> list[tuple[str, bytes]]:
    """The emails the dispatcher just sent, as (recipient, bytes), built with ``compose``."""
    with store.read(engine) as conn:
        rows = conn.execute(
            with_body().where(messages.c.sent_at > NOW).order_by(messages.c.priority.desc(), messages.c.id)
        ).all()
    return [(row.recipient, build_email(row, settings, NOW).data) for row in rows]


def measure_ceiling(settings: Settings, built: list[tuple[str, bytes]], profile: Path | None) -> float:
    """Item 4: bare smtplib, the same bytes, one connection per batch; seconds."""
    start = time.perf_counter()
    with profiled(profile, "ceiling"):
        for first in range(0, len(built), settings.batch_size):
            send_bare(settings, built[first : first + settings.batch_size])
    return time.perf_counter() - start


def send_bare(settings: Settings, built: list[tuple[str, bytes]]) -> None:
    """One connection, every message in ``built``, as plainly as smtplib allows."""
    connection = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
    connection.ehlo()
    for recipient, data in built:
        connection.mail(settings.from_addr)
        connection.rcpt(recipient)
        code, reply = connection.data(data)
        if code != 250:
            raise BenchError(f"the counting server refused a message: {code} {reply!r}")
    connection.quit()


def measure_render(
    engine: Engine,
    settings: Settings,
    rules: list[Rule],
    renderer: Renderer,
    practice: Practice,
    samples: int,
    profile: Path | None,
) -> dict:
    """Item 5: per message, ``Renderer.render`` against bare Jinja for the same contexts.

    The contexts are historical milestones drawn at random, so every kind of
    email is in the sample in proportion to how often it is sent.
    """
    by_kind: dict[str, list[Rule]] = {}
    for rule in seeded_rules(rules):
        by_kind.setdefault(rule.event, []).append(rule)
    drawn = random.Random(3).sample(practice.triggered, min(samples, len(practice.triggered)))
    with store.read(engine) as conn:
        cases = [
            (
                rule.template,
                client_context(settings, rule, load_history(conn, found.client_id), NOW, found.event_id),
            )
            for found in drawn
            for rule in by_kind[found.kind]
        ]

    def bare(template: str, context: dict) -> str:
        full = {**context, "section_only": False}
        renderer.env.get_template(f"{template}/subject.txt").render(full)
        renderer.env.get_template(f"{template}/body.txt").render(full)
        return renderer.env.get_template(f"{template}/body.html").render(full)

    pages = [bare(*case) for case in cases]  # warm: templates compiled, caches filled
    for case in cases:
        renderer.render(*case)
    bare_s = per_case(lambda i: bare(*cases[i]), len(cases))
    with profiled(profile, "render"):
        render_s = per_case(lambda i: renderer.render(*cases[i]), len(cases))
    inline_s = per_case(lambda i: inline_css(pages[i]), len(cases))
    by_template: dict[str, list[float]] = {}
    for (template, _), seconds in zip(cases, render_s, strict=True):
        by_template.setdefault(template, []).append(seconds)
    return {
        "render_ms": 1000 * statistics.fmean(render_s),
        "bare_render_ms": 1000 * statistics.fmean(bare_s),
        "inline_css_ms": 1000 * statistics.fmean(inline_s),
        "render_vs_bare": sum(render_s) / sum(bare_s),
        "render_samples": len(cases),
        "render_ms_by_template": {t: 1000 * statistics.fmean(v) for t, v in sorted(by_template.items())},
    }


def per_case(action: Callable[[int], object], count: int, repeats: int = 3) -> list[float]:
    """Seconds per case (the median of ``repeats`` runs of each)."""
    times: list[list[float]] = [[] for _ in range(count)]
    for _ in range(repeats):
        for index in range(count):
            start = time.perf_counter()
            action(index)
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measure_review(engine: Engine, settings: Settings, folder: Path, runs: int) -> dict:
    """Item 6: ``outreach log`` as a command (wall time) and ``list_messages`` in process."""
    with store.read(engine) as conn:
        busiest = conn.execute(
            select(physicians.c.email)
            .join(messages, messages.c.physician_id == physicians.c.id)
            .group_by(physicians.c.email)
            .order_by(func.count().desc())
            .limit(1)
        ).scalar_one()
        logged = conn.execute(select(func.count()).select_from(messages)).scalar_one()
    env, command = service_env(settings), outreach_command()
    # As installed: pip compiles a package's bytecode; an editable checkout run
    # with PYTHONDONTWRITEBYTECODE would otherwise recompile it on every command.
    compileall.compile_dir(str(SOURCE_ROOT / "outreach"), quiet=1)

    def run(*args: str) -> None:
        done = subprocess.run([*command, *args], env=env, cwd=folder, capture_output=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"outreach {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")

    def in_process(**filters: str) -> None:
        with store.read(engine) as conn:
            list_messages(conn, **filters)

    return {
        "messages_logged": logged,
        "cli_startup_s": median_time(lambda: run("--version"), runs),
        "review_physician_cli_s": median_time(
            lambda: run("log", "--physician", busiest, "--format", "json"), runs
        ),
        "review_failed_cli_s": median_time(lambda: run("log", "--status", "failed"), runs),
        "review_physician_inproc_s": median_time(lambda: in_process(physician=busiest), runs),
        "review_failed_inproc_s": median_time(lambda: in_process(status=FAILED), runs),
    }


def measure_console(engine: Engine, settings: Settings, runs: int) -> dict:
    """The console's pages and the API, server time (in process, through Flask's test client)."""
    from outreach import accounts
    from outreach.web import create_app

    with store.read(engine) as conn:
        newest = conn.execute(select(func.max(messages.c.id))).scalar_one()
        busiest = conn.execute(
            select(clients.c.ref)
            .join(messages, messages.c.client_id == clients.c.id)
            .where(messages.c.id > newest - 5000)
            .group_by(clients.c.ref)
            .order_by(func.count().desc())
            .limit(1)
        ).scalar_one()
    app = create_app(settings, engine)
    password = "bench password, long enough"
    accounts.add_user(engine, "bench@practice.example", "staff", password, utcnow(), actor="bench")
    token = accounts.create_token(engine, "bench", "viewer", utcnow(), actor="bench")
    client = app.test_client()
    login_page = client.get("/login").get_data(as_text=True)
    csrf = login_page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    client.post("/login", data={"csrf": csrf, "email": "bench@practice.example", "password": password})

    def page(url: str, **headers: str) -> Callable[[], object]:
        def get() -> None:
            response = client.get(url, headers=headers)
            if response.status_code != 200:
                raise BenchError(f"GET {url}: {response.status_code}")

        return get

    return {
        "console_log_s": median_time(page("/"), runs),
        "console_log_filtered_s": median_time(page("/?status=failed"), runs),
        "console_message_s": median_time(page(f"/messages/{newest}"), runs),
        "console_client_s": median_time(page(f"/clients/{busiest}"), runs),
        "api_messages_s": median_time(page("/api/v1/messages", Authorization=f"Bearer {token}"), runs),
    }


PURGE_DAYS = 30
# Run as of a year minus the retention before NOW: the bodies of the log's older year go.
PURGE_AS_OF = NOW - timedelta(days=365 - PURGE_DAYS)
PROBE_EVERY = 0.02  # seconds between the other writer's transactions


def probe_writes(database_url: str, pipe: Connection) -> None:
    """Process entry point: write a heartbeat (as the service does) until told to stop; send the waits."""
    engine = store.connect(database_url)
    status.heartbeat(engine, "bench-writer", PURGE_AS_OF)
    pipe.send("ready")
    waits = []
    while not pipe.poll(PROBE_EVERY):
        start = time.perf_counter()
        status.heartbeat(engine, "bench-writer", PURGE_AS_OF)
        waits.append(time.perf_counter() - start)
    pipe.send(waits)
    engine.dispose()


def measure_purge(engine: Engine, settings: Settings, profile: Path | None) -> dict:
    """Item 9: a year of bodies removed in chunks, and how long a writer beside it had to wait.

    The writer is another process, as the service would be: every
    ``PROBE_EVERY`` it writes its heartbeat, each a durable transaction
    that must wait for the purge's chunk in progress (SQLite's one lock).
    """
    from outreach.retention import purge

    context = multiprocessing.get_context("spawn")
    pipe, child_end = context.Pipe()
    writer = context.Process(target=probe_writes, args=(settings.database_url, child_end), daemon=True)
    writer.start()
    child_end.close()
    try:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise BenchError("the writer beside the purge did not start")
        with profiled(profile, "purge"):
            start = time.perf_counter()
            report = purge(engine, settings.with_(retention_days=PURGE_DAYS), PURGE_AS_OF, actor="bench")
            seconds = time.perf_counter() - start
        pipe.send("stop")
        waits: list[float] = pipe.recv() if pipe.poll(60) else []
    finally:
        writer.join(10)
        if writer.is_alive():
            writer.terminate()
            writer.join(5)
        pipe.close()
    if not report.messages or not report.finished or not waits:
        raise BenchError(f"the purge removed {report.messages} bodies beside {len(waits)} writes")
    return {
        "purge_s": seconds,
        "purged_messages": report.messages,
        "purge_batches": report.batches,
        "purge_longest_batch_s": report.longest_batch_s,
        "purge_writer_wait_s": max(waits),
        "purge_writer_median_s": statistics.median(waits),
        "purge_writer_writes": len(waits),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError("VmHWM missing from /proc: cannot measure memory")


def measure_idle(settings: Settings, folder: Path, window: float) -> dict:
    """Item 7: ``outreach run`` (file backend, default tick) while nothing is due.

    Read from ``/proc`` alone, so it holds whatever the daemon does inside:
    the window opens once start-up and the first tick are over (no CPU used
    for ``QUIET_SECONDS``) and never closes in the middle of a tick. With the
    default 60 s tick a 60 s window holds exactly one tick.
    """
    log_path = folder / "idle-service.log"
    command = [*outreach_command(), "run", "--now", NOW.isoformat()]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=service_env(settings), cwd=folder, stdout=log, stderr=log)
    try:
        startup_cpu = wait_until_quiet(process, log_path)
        started = time.monotonic()
        time.sleep(window)
        cpu = wait_until_quiet(process, log_path) - startup_cpu
        elapsed = time.monotonic() - started
        peak = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {
        "idle_cpu_pct": 100 * cpu / elapsed,
        "idle_cpu_s": cpu,
        "idle_window_s": elapsed,
        "idle_startup_cpu_s": startup_cpu,
        "idle_peak_rss_mb": peak,
    }


QUIET_SECONDS = 2.0


def wait_until_quiet(process: subprocess.Popen, log_path: Path, timeout: float = 900) -> float:
    """Wait until the process has used no CPU for ``QUIET_SECONDS``; its CPU seconds then."""
    deadline = time.monotonic() + timeout
    last_cpu, last_change = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"outreach run exited with {process.returncode}:\n{tail}")
        cpu = cpu_seconds(process.pid)
        if cpu != last_cpu:
            last_cpu, last_change = cpu, time.monotonic()
        elif time.monotonic() - last_change >= QUIET_SECONDS:
            return cpu
        time.sleep(0.1)
    raise BenchError(f"outreach run kept using CPU for {timeout:g} s: not idle")


# --- the report ------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    value: float | None  # None: not measured, and ``note`` says why
    unit: str
    target: str | None = None
    met: bool | None = None
    note: str = ""


CONSOLE_FIGURES = (
    ("console_log_s", "console: log page"),
    ("console_log_filtered_s", "console: log page, status=failed"),
    ("console_message_s", "console: a message page"),
    ("console_client_s", "console: a client page"),
    ("api_messages_s", "GET /api/v1/messages"),
)


def judge(scale: Scale, r: dict) -> dict[str, Figure]:
    """Every figure, with its target and whether it is met (None: for information)."""
    due_budget = 20.0 * r["due"] / 20_000  # 20 s for 20,000 messages
    f = {
        "plan_steady_s": Figure("plan, steady state (one tick)", r["plan_steady_s"], "s",
                                "< 1 s", r["plan_steady_s"] < 1.0),
        "plan_render_s": Figure(f"plan + render ({r['queued']} urgent due)", r["plan_render_s"], "s",
                                f"< {due_budget:g} s", r["plan_render_s"] < due_budget),
        "plan_render_ms_per_message": Figure("plan + render, per message", r["plan_render_ms"], "ms",
                                             "<= 0.4 ms", r["plan_render_ms"] <= 0.4),
        "send_msgs_per_s": Figure(f"send ({r['sent']} via dispatcher)", r["send_rate"], "msg/s"),
        "ceiling_msgs_per_s": Figure("ceiling (bare smtplib)", r["ceiling_rate"], "msg/s"),
        "send_vs_ceiling_pct": Figure("send / ceiling", r["send_pct"], "%", ">= 60 %", r["send_pct"] >= 60),
        "render_ms": Figure("render with CSS inlining, per message", r["render_ms"], "ms"),
        "bare_render_ms": Figure("bare Jinja render, per message", r["bare_render_ms"], "ms"),
        "inline_css_ms": Figure("premailer alone, per message", r["inline_css_ms"], "ms"),
        "render_vs_bare": Figure("render / bare render", r["render_vs_bare"], "x",
                                 "<= 1.5x", r["render_vs_bare"] <= 1.5),
        "cli_startup_s": Figure("outreach --version (start-up)", r["cli_startup_s"], "s"),
        "review_physician_cli_s": Figure("outreach log --physician --format json", r["review_physician_cli_s"],
                                         "s", "< 0.3 s", r["review_physician_cli_s"] < 0.3),
        "review_failed_cli_s": Figure("outreach log --status failed", r["review_failed_cli_s"], "s",
                                      "< 0.3 s", r["review_failed_cli_s"] < 0.3),
        "review_physician_inproc_s": Figure("list_messages(physician=)", r["review_physician_inproc_s"], "s"),
        "review_failed_inproc_s": Figure("list_messages(status=failed)", r["review_failed_inproc_s"], "s"),
        **{name: Figure(label, r[name], "s", "< 0.3 s", r[name] < 0.3) for name, label in CONSOLE_FIGURES},
        "idle_cpu_pct": Figure(f"idle CPU ({r['idle_window_s']:.0f} s window, 60 s tick)",
                               r["idle_cpu_pct"], "% core", "< 1 %", r["idle_cpu_pct"] < 1.0),
        "idle_peak_rss_mb": Figure("idle peak RSS", r["idle_peak_rss_mb"], "MB",
                                   "< 100 MB", r["idle_peak_rss_mb"] < 100),
        "cycle_peak_rss_mb": Figure("plan + render + send peak RSS", r["cycle_peak_rss_mb"], "MB",
                                    "< 300 MB", r["cycle_peak_rss_mb"] < 300),
        "purge_s": Figure(f"purge a year of bodies ({r['purged_messages']:,}, {PURGE_DAYS}-day retention)",
                          r["purge_s"], "s"),
        "purge_longest_batch_s": Figure(f"purge: longest of {r['purge_batches']:,} write transactions",
                                        r["purge_longest_batch_s"], "s"),
        "purge_writer_wait_s": Figure("purge: longest wait of a write beside it", r["purge_writer_wait_s"], "s",
                                      "< 1 s", r["purge_writer_wait_s"] < 1.0),
    }  # fmt: skip
    from benchmarks.wire import wire_figures

    return f | wire_figures(r)


def format_value(figure: Figure) -> str:
    value = figure.value
    if value is None:
        return figure.note
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {figure.unit}"


def format_table(figures: dict[str, Figure], scale: Scale) -> str:
    from outreach.tables import format_table as aligned  # the same table as the CLI's

    rows = []
    for figure in figures.values():
        met = "-" if figure.met is None else ("yes" if figure.met else "NO")
        rows.append((figure.label, format_value(figure), figure.target or "-", met))
    title = f"outreach bench, scale {scale.name} ({scale.clients:,} clients)"
    return title + "\n" + aligned(("figure", "value", "target", "met?"), rows)


def source_fingerprint() -> int:
    """What the code, rules and templates under test look like (paths, sizes, mtimes).

    Others may be editing the package while the bench runs; a run whose
    phases measured different code says so instead of mixing them silently.
    """
    files = sorted((SOURCE_ROOT / "outreach").rglob("*.py"))
    files += sorted((SOURCE_ROOT / "outreach" / "campaigns").glob("*.toml"))
    files += sorted(p for p in (SOURCE_ROOT / "outreach" / "templates").rglob("*") if p.is_file())
    return hash(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists()))


def environment_facts(engine: Engine) -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "database": engine.dialect.name,
        "platform": platform.platform(),
    }


# --- the run -------------------------------------------------------------------------------


def measure_cycle_and_ceiling(
    engine: Engine, settings: Settings, folder: Path, due: int, profile: Path | None
) -> dict:
    """Items 2, 3, 4 and 8, against one counting SMTP server."""
    server = CountingServer()
    try:
        settings = settings.with_(smtp_port=server.port)
        log_step(f"plan + render + send of {due} in a child process")
        spec = {"database_url": settings.database_url, "folder": str(folder), "smtp_port": server.port,
                "profile": str(profile) if profile else None}  # fmt: skip
        r, peak_rss = run_cycle_child(spec)
        r["cycle_peak_rss_mb"] = peak_rss
        received, received_bytes = server.count()
        if r["sent"] != due or received != r["sent"]:
            raise BenchError(f"due {due}, dispatcher sent {r['sent']}, server counted {received}")
        log_step("the ceiling: bare smtplib")
        built = built_messages(engine, settings)
        r["ceiling_s"] = measure_ceiling(settings, built, profile)
        total, total_bytes = server.count()
        if total != 2 * received:
            raise BenchError(f"the server counted {total - received} of the {len(built)} ceiling messages")
        r["server_bytes"] = total_bytes - received_bytes
    finally:
        server.stop()
    r["plan_render_ms"] = 1000 * r["plan_render_s"] / max(r["queued"], 1)
    r["send_rate"] = r["sent"] / r["send_s"]
    r["ceiling_rate"] = len(built) / r["ceiling_s"]
    r["send_pct"] = 100 * r["send_rate"] / r["ceiling_rate"]
    return r


def measure_wire_and_services(engine: Engine, settings: Settings, folder: Path, scale: Scale) -> dict:
    """Issue 15's figures, last: they add physicians, clients and mail, so nothing before sees them."""
    from benchmarks.wire import measure_services, measure_wire

    log_step(f"end to end: outreach run --once, {scale.wire} acknowledgements due")
    r = measure_wire(engine, settings, folder, scale.wire, scale.runs)
    if store.is_postgres(engine):
        log_step(f"one service, then three, on one PostgreSQL queue of {scale.services}")
        r.update(measure_services(engine, settings, folder, scale.services))
    return r


def run_bench(scale: Scale, database_url: str | None, folder: Path, profile: Path | None) -> dict:
    """Build the practice, take every measurement, return the report as a dict."""
    started, source = time.perf_counter(), source_fingerprint()
    url = database_url or f"sqlite:///{folder / 'bench.db'}"
    settings = bench_settings(url, folder)
    engine = store.connect(url)
    store.migrate(engine)
    with store.read(engine) as conn:
        if conn.execute(select(func.count()).select_from(clients)).scalar():
            raise BenchError(f"{url} is not empty: the bench needs a fresh database")
    rules = load_rules(settings.campaigns_dir, settings.templates_dir)
    renderer = Renderer(settings.templates_dir)
    r: dict = {}
    log_step("building the practice")
    practice = build_practice(engine, scale, rules)
    bodies = sample_bodies(engine, settings, rules, renderer, practice)
    practice.counts["messages"] = seed_log(engine, scale, rules, practice, bodies)
    sync_sequences(engine)
    r["build_s"] = time.perf_counter() - started
    log_step(f"built {practice.counts} in {r['build_s']:.0f} s; steady-state tick")
    r.update(measure_steady_plan(engine, settings, rules, renderer, scale.runs, profile))
    r["due"] = make_due(engine, scale, practice)
    r.update(measure_cycle_and_ceiling(engine, settings, folder, r["due"], profile))
    log_step("render cost")
    r.update(measure_render(engine, settings, rules, renderer, practice, scale.render_samples, profile))
    log_step("review")
    r.update(measure_review(engine, settings, folder, scale.runs))
    log_step("console pages")
    r.update(measure_console(engine, settings, scale.runs))
    log_step(f"idle service for {scale.idle_seconds:g} s")
    r.update(measure_idle(settings, folder, scale.idle_seconds))
    log_step("purge a year of bodies")  # it empties the older half of the log
    r.update(measure_purge(engine, settings, profile))
    r.update(measure_wire_and_services(engine, settings, folder, scale))
    facts = environment_facts(engine)
    engine.dispose()
    figures = judge(scale, r)
    changed = source_fingerprint() != source
    if changed:
        log_step("warning: the code, rules or templates changed during the run; phases may differ")
    return {
        "scale": scale.name,
        **facts,
        "source_changed_during_run": changed,
        "sizes": asdict(scale) | {"inserted": practice.counts},
        "elapsed_s": round(time.perf_counter() - started, 1),
        "figures": {name: asdict(figure) for name, figure in figures.items()},
        "details": r,
    }


def log_step(text: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=list(SCALES), default="default")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where the JSON goes")
    parser.add_argument("--database-url", help="an empty database to use (default: SQLite in a temp dir)")
    parser.add_argument("--profile", type=Path, help="write cProfile files of each phase into this folder")
    parser.add_argument("--cycle-child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cycle_child:
        cycle_child(args.cycle_child)
        return 0
    scale = SCALES[args.scale]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    try:
        with tempfile.TemporaryDirectory(prefix="outreach-bench-") as temp:
            report = run_bench(scale, args.database_url, Path(temp), args.profile)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    figures = {name: Figure(**values) for name, values in report["figures"].items()}
    print(format_table(figures, scale))
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"(written to {args.json})")
    return 0


if __name__ == "__main__":
    # Run as the module benchmarks.bench, not as __main__: benchmarks/wire.py imports
    # it, and both must share one copy of its classes (BenchError, Figure).
    from benchmarks.bench import main as bench_main

    sys.exit(bench_main())
