"""A client's record on request: everything the service holds about one client, in one zip.

``outreach client export REF`` (and the console's download for admins) call
``export_client`` / ``client_zip``. The zip holds ``README.txt`` for a
person, ``record.json`` (the client's row, consent, events, measures, every
message about them with its trail, every reply), ``messages/ID.eml`` (each
message as it was built to go out) and ``replies/ID.eml`` (each reply as it
was received).

Privacy: a digest carries several clients' updates to one physician, so the
export never holds a digest's body, nor the text of a reply or bounce to a
digest: the client's own update (a member row has its own body) is exported
and the digest is named by reference only. The file is created owner-only,
never over an existing file, and every export leaves an audit row; the log
gets the file name and nothing else.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, Row, select

from outreach import records, store
from outreach.compose import build_email
from outreach.consent import row_consent_problem
from outreach.errors import NotFound, OutreachError
from outreach.models import clients, events, inbound, measurements, message_events, messages, physicians
from outreach.outbox import DIGEST, with_body
from outreach.settings import Settings

log = logging.getLogger(__name__)

AUDIT_ACTION = "export"
FORMAT = "outreach client record, version 1"
# A zip member's Unix mode (regular file, owner read/write): what unzip gives each file.
MEMBER_MODE = (stat.S_IFREG | 0o600) << 16
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What one export wrote: where, and how many of each thing."""

    path: Path
    messages: int
    emails: int  # messages/*.eml
    replies: int
    reply_emails: int  # replies/*.eml
    events: int
    measures: int

    def counts(self) -> str:
        """The counts on one line, for a person and for the audit row (no health information)."""
        return (
            f"{_count(self.messages, 'message')} ({self.emails} as .eml), "
            f"{_count(self.replies, 'reply', 'replies')} ({self.reply_emails} as .eml), "
            f"{_count(self.events, 'event')}, {_count(self.measures, 'measure')}"
        )


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass(slots=True)
class _Record:
    """The record read from the database, ready to be zipped."""

    ref: str
    document: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)

    def summary(self, path: Path) -> ExportSummary:
        doc = self.document
        return ExportSummary(
            path=path,
            messages=len(doc["messages"]),
            emails=sum(1 for name in self.files if name.startswith("messages/")),
            replies=len(doc["replies"]),
            reply_emails=sum(1 for name in self.files if name.startswith("replies/")),
            events=len(doc["events"]),
            measures=len(doc["measures"]),
        )


# --- the entry points -------------------------------------------------------------------


def default_name(ref: str, day: date) -> str:
    """``client-REF-YYYYMMDD.zip``, the ref reduced to letters, digits, ``-`` and ``_``.

    A ref is free text from the practice's system: a slash or a leading dot
    must not put the file somewhere else, or hide it.
    """
    safe = _UNSAFE.sub("_", ref).strip("_") or "client"
    return f"client-{safe}-{day:%Y%m%d}.zip"


def export_client(
    engine: Engine, settings: Settings, ref: str, out: Path, now: datetime, actor: str | None = None
) -> ExportSummary:
    """Write the client's record to ``out`` (a new file, mode 0600) and audit it.

    Refused, with nothing written: an ``out`` that exists (a file, a folder, a
    link, even a dangling one), an unknown ref. The zip is written beside
    ``out`` and moved into place in the transaction that writes the audit row,
    so there is either a whole file and its audit row, or neither.
    """
    _refuse_existing(out)
    with store.read(engine) as conn:
        record = _collect(conn, settings, ref, now, actor)
    summary = record.summary(out)
    staged = _stage(record, settings, now, out)
    published = False
    try:
        with store.write(engine) as conn:
            _audit(conn, now, actor, ref, out.name, summary)
            _publish(staged, out)
            published = True
    except BaseException:
        if published:  # the audit row did not commit: no file without it
            out.unlink(missing_ok=True)
        raise
    finally:
        staged.unlink(missing_ok=True)
    log.info("client record written to %s", out.name)
    return summary


def client_zip(
    engine: Engine, settings: Settings, ref: str, now: datetime, actor: str | None = None
) -> tuple[bytes, ExportSummary]:
    """The same record as bytes (the console's download), audited like a file export."""
    with store.read(engine) as conn:
        record = _collect(conn, settings, ref, now, actor)
    name = default_name(ref, now.astimezone(settings.tz).date())
    buffer = io.BytesIO()
    _write_zip(buffer, record, settings, now)
    summary = record.summary(Path(name))
    with store.write(engine) as conn:
        _audit(conn, now, actor, ref, name, summary)
    log.info("client record downloaded as %s", name)
    return buffer.getvalue(), summary


# --- reading the record -----------------------------------------------------------------


def _collect(conn: Connection, settings: Settings, ref: str, now: datetime, actor: str | None) -> _Record:
    """Everything held about the client: their rows, their messages and replies, as JSON and emails."""
    client = conn.execute(select(clients).where(clients.c.ref == ref)).first()
    if client is None:
        raise NotFound(f"no client with reference {ref}")
    doctor = conn.execute(select(physicians).where(physicians.c.id == client.physician_id)).first()
    rows = conn.execute(
        with_body()
        .where(messages.c.client_id == client.id, messages.c.kind != DIGEST)
        .order_by(messages.c.created_at, messages.c.id)
    ).all()
    digests = _digests(conn, {r.digest_id for r in rows if r.digest_id is not None})
    trails = _trails(conn, [r.id for r in rows])
    record = _Record(ref=ref, document={})
    listed = [_message(record, settings, row, trails.get(row.id, []), digests) for row in rows]
    replies = [
        _reply(record, row, digests) for row in _inbound(conn, client.id, [r.id for r in rows], digests)
    ]
    record.document = {
        "format": FORMAT,
        "exported_at": now.isoformat(),
        "exported_by": actor or records.person(),
        "practice": settings.practice_name,
        "client": _plain(client),
        "consent": _consent(client, now.astimezone(settings.tz).date()),
        "physician": _physician(doctor),
        "events": [_plain(r) for r in _rows_of(conn, events, client.id, events.c.occurred_at)],
        "measures": [_plain(r) for r in _rows_of(conn, measurements, client.id, measurements.c.measured_on)],
        "messages": listed,
        "replies": replies,
    }
    return record


def _rows_of(conn: Connection, table: Any, client_id: int, when: Any) -> list[Row[Any]]:
    return list(conn.execute(select(table).where(table.c.client_id == client_id).order_by(when, table.c.id)))


def _trails(conn: Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each message's trail, in the order it was written."""
    found: dict[int, list[dict[str, Any]]] = {}
    for chunk in store.chunks(ids):
        query = (
            select(message_events)
            .where(message_events.c.message_id.in_(chunk))
            .order_by(message_events.c.id)  # as written, as ``outreach log show`` lists it
        )
        for step in conn.execute(query):
            found.setdefault(step.message_id, []).append(
                {"at": step.at.isoformat(), "action": step.action, "detail": step.detail}
            )
    return found


def _digests(conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    """The digests that carried the client's updates, by reference only: never their bodies."""
    found: dict[int, dict[str, Any]] = {}
    for chunk in store.chunks(sorted(ids)):
        query = select(messages.c.id, messages.c.message_id, messages.c.status, messages.c.sent_at).where(
            messages.c.id.in_(chunk)
        )
        found.update((r.id, _plain(r)) for r in conn.execute(query))
    return found


def _inbound(
    conn: Connection, client_id: int, message_ids: Sequence[int], digests: dict[int, Any]
) -> list[Row[Any]]:
    """Mail that came back about the client, or to one of their messages or the digests that carried them."""
    found = {r.id: r for r in conn.execute(select(inbound).where(inbound.c.client_id == client_id))}
    for chunk in store.chunks([*message_ids, *digests]):
        found.update((r.id, r) for r in conn.execute(select(inbound).where(inbound.c.message_id.in_(chunk))))
    return sorted(found.values(), key=lambda r: (r.received_at, r.id))


# --- one message, one reply ------------------------------------------------------------------


def _message(
    record: _Record,
    settings: Settings,
    row: Row[Any],
    trail: list[dict[str, Any]],
    digests: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """A message's log entry and trail; its email in ``messages/``, or why there is none."""
    entry = _plain(row, leave_out=("html", "text"))
    entry["trail"] = trail
    if row.digest_id is not None:
        entry["digest"] = digests.get(row.digest_id, {"id": row.digest_id})
        entry["note"] = (
            f"this update went to the physician inside digest message {row.digest_id}, together with "
            "updates about other clients (left out); the .eml is this update alone, as queued"
        )
    missing = _why_no_body(row.body_removed_at, row.html is None)
    if missing is None:
        try:
            data = build_email(row, settings, row.sent_at or row.created_at).data
        except ValueError as exc:
            missing = f"could not be written as an email: {exc}"
            entry["text"] = row.text
        else:
            name = f"messages/{row.id}.eml"
            record.files[name] = data
            entry["eml"] = name
    if missing is not None:
        entry["eml"] = None
        entry["eml_missing"] = missing
    return entry


def _reply(record: _Record, row: Row[Any], digests: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """An answer or bounce: as received in ``replies/``, its text here; only a reference if to a digest."""
    if row.message_id in digests:
        what = "bounce of" if row.kind == "bounce" else "reply to"
        return {
            "id": row.id,
            "kind": row.kind,
            "received_at": row.received_at.isoformat(),
            "sender": row.sender,
            "digest_id": row.message_id,
            "note": f"{what} a digest that carried this client's update; its text is left out "
            "(the digest carried other clients' updates too)",
        }
    entry = _plain(row, leave_out=("raw",))
    missing = _why_no_body(row.body_removed_at, row.raw is None)
    if missing is None:
        name = f"replies/{row.id}.eml"
        record.files[name] = bytes(row.raw)
        entry["eml"] = name
    else:
        entry["eml"] = None
        entry["eml_missing"] = missing
    return entry


def _why_no_body(removed_at: datetime | None, absent: bool) -> str | None:
    if removed_at is not None:
        return f"body removed on {removed_at.date().isoformat()} under the retention setting"
    if absent:
        return "no body stored for it"
    return None


def _consent(client: Row[Any], today: date) -> dict[str, Any]:
    return {
        "given_on": _value(client.consent_date),
        "expires": _value(client.consent_expires),
        "revoked_on": _value(client.consent_revoked_on),
        "on_export_day": row_consent_problem(client, today) or "in effect",
    }


def _physician(row: Row[Any] | None) -> dict[str, Any] | None:
    """The referring physician as the client's record names them (not their whole row)."""
    if row is None:
        return None
    keep = ("id", "name", "credentials", "specialty", "clinic", "email", "phone", "fax")
    return {key: getattr(row, key) for key in keep}


def _plain(row: Any, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """A row as JSON values: dates and times in ISO 8601, every column but ``leave_out``."""
    skip = set(leave_out)
    return {key: _value(value) for key, value in row._mapping.items() if key not in skip}


def _value(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return None
    return value


# --- writing the zip ----------------------------------------------------------------------


def _readme(record: _Record, settings: Settings, now: datetime) -> str:
    doc = record.document
    when = now.astimezone(settings.tz).strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join(
        [
            f"The record {settings.practice_name or 'the practice'} holds about client {record.ref}",
            f"Made on {when} by {doc['exported_by']} with outreach (client export).",
            "",
            "record.json   the client's details, consent, events, outcome measures, every email",
            "              about them (with its history) and every reply, in JSON",
            "messages/     each email about the client as it was built to go out (.eml: open it",
            "              with any mail program); record.json says why an email has none",
            "replies/      each reply or bounce as it was received (.eml)",
            "",
            "Updates that went out inside a digest (one email with several clients' updates) are",
            "here as the client's own update; the digest is named by number only, and replies to a",
            "digest by date and sender only: the other clients' information is left out.",
            "",
            "This file holds health information: keep it as you would a clinical record, and",
            "delete it when it is no longer needed.",
            "",
        ]
    )


def _write_zip(target: IO[bytes], record: _Record, settings: Settings, now: datetime) -> None:
    """README, record.json and the emails, each member owner-only when unzipped."""
    stamp = now.astimezone(settings.tz).timetuple()[:6]
    document = json.dumps(record.document, indent=2, ensure_ascii=False) + "\n"
    members = {
        "README.txt": _readme(record, settings, now).encode("utf-8"),
        "record.json": document.encode("utf-8"),
        **record.files,
    }
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = MEMBER_MODE
            archive.writestr(info, data)


def _refuse_existing(out: Path) -> None:
    if os.path.lexists(out):
        raise OutreachError(f"{out} exists; choose another --out")


def _stage(record: _Record, settings: Settings, now: datetime, out: Path) -> Path:
    """The zip in a new owner-only file beside ``out`` (same file system: the move is atomic)."""
    try:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=".outreach-export-", suffix=".tmp")
    except OSError as exc:
        raise OutreachError(f"{out}: cannot write: {exc.strerror}") from None
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_zip(handle, record, settings, now)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise OutreachError(f"{out}: cannot write: {exc.strerror}") from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def _publish(staged: Path, out: Path) -> None:
    """Give the staged file its name, never replacing a file that appeared meanwhile.

    A hard link fails if ``out`` exists, where ``os.replace`` would silently
    overwrite it; a file system without hard links gets ``os.replace`` after
    one more look.
    """
    try:
        os.link(staged, out)
    except FileExistsError:
        raise OutreachError(f"{out} exists; choose another --out") from None
    except OSError:
        _refuse_existing(out)
        try:
            os.replace(staged, out)
        except OSError as exc:
            raise OutreachError(f"{out}: cannot write: {exc.strerror}") from None


def _audit(
    conn: Connection, now: datetime, actor: str | None, ref: str, name: str, summary: ExportSummary
) -> None:
    records.audit(conn, now, actor, AUDIT_ACTION, ref, f"{name}: {summary.counts()}")
