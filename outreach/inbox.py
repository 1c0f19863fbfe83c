"""Hearing back: the practice's mailbox read over IMAP, each email handled exactly once.

What happens to an email (``fetch``):
1. Its place (folder, UIDVALIDITY, UID) is looked up: one already on record is
   never read again (a handled one not yet moved is moved now).
2. It is read without marking it seen (``BODY.PEEK[]``), parsed by
   ``outreach.inbound`` and matched to one of our messages: a reply by its
   In-Reply-To / References, a bounce by its VERP token, the Message-ID it
   quotes, or failing those the recipient it names.
3. One transaction records it (``inbound``, unique by its place, so a second
   service reading at the same time fails to insert and skips it) with what
   it means: a trail line ("replied", "bounced", "delayed"), a bounced
   message's status and the address marked undeliverable.
4. Handled mail (replies, automatic answers, bounces) is moved to
   ``OUTREACH_IMAP_DONE_FOLDER``; nothing is ever deleted. Mail that matches
   none of ours stays where it is, unread, recorded once as ``unmatched`` for
   a person to look at (``outreach replies --unmatched``).

A crash between 3 and 4 leaves the email recorded and not moved: the next
fetch moves it. IMAP errors are one line (``InboxError``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, or_, select, update
from sqlalchemy.exc import IntegrityError

from outreach import inbound as parsing
from outreach import outbox, store, verp
from outreach.errors import OutreachError
from outreach.models import BOUNCED, REDIRECTED, SENT, inbound, messages, utcnow
from outreach.settings import Settings, is_loopback

log = logging.getLogger(__name__)

LARGEST = 25 * 1024 * 1024  # bytes: a bigger email is recorded as unmatched, never read
CHUNK = 20  # emails fetched per IMAP round trip
MOVE_LEASE = timedelta(minutes=2)  # how long a fetch's claim to move an email holds, should it crash
RECIPIENT_WINDOW = timedelta(days=30)  # a bounce naming only an address: our latest message to it within this


class InboxError(OutreachError):
    """The mailbox cannot be read (unreachable, login refused, folder missing): one line."""


@dataclass
class FetchReport:
    """What one fetch did, by kind; ``moved`` counts emails moved to the done folder."""

    seen: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # already on record (read before, or by another service just now)
    moved: int = 0

    def count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def summary(self) -> str:
        parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.kinds.items())]
        read = ", ".join(parts) if parts else "nothing new"
        return (
            f"inbox: {self.seen} email(s) in the folder; read {read}; moved {self.moved} to the done folder"
        )


@dataclass(frozen=True)
class Match:
    """Which of our messages an email is about (None: none of ours)."""

    message_id: int | None = None
    client_id: int | None = None
    physician_id: int | None = None
    status: str | None = None
    digest_id: int | None = None


# --- the connection ---------------------------------------------------------------------


@contextmanager
def mailbox(settings: Settings) -> Iterator[Any]:
    """A logged-in IMAPClient for the configured mailbox, TLS verified; ``InboxError`` if not."""
    from imapclient import IMAPClient
    from imapclient.exceptions import IMAPClientError, LoginError

    s = settings
    where = f"IMAP {s.imap_host}:{s.imap_port_or_usual}"
    if not s.imap_host:
        raise InboxError("OUTREACH_IMAP_HOST is not set: there is no mailbox to read")
    if s.imap_security == "none" and not is_loopback(s.imap_host):
        raise InboxError(
            f"OUTREACH_IMAP_SECURITY: refusing unencrypted IMAP to {s.imap_host}: "
            "replies carry health information (use ssl or starttls)"
        )
    context = ssl.create_default_context(cafile=str(s.imap_ca_file) if s.imap_ca_file else None)
    try:
        client = IMAPClient(
            s.imap_host,
            port=s.imap_port_or_usual,
            ssl=s.imap_security == "ssl",
            ssl_context=context,
            timeout=30,
        )
    except (OSError, IMAPClientError) as exc:
        raise InboxError(f"{where}: cannot connect: {_one_line(exc)}") from None
    try:
        if s.imap_security == "starttls":
            client.starttls(context)
        client.login(s.imap_username, s.imap_password.reveal())
    except LoginError:
        client.shutdown()
        raise InboxError(
            f"{where}: login refused for {s.imap_username!r} (check OUTREACH_IMAP_USERNAME and _PASSWORD)"
        ) from None
    except (OSError, IMAPClientError) as exc:
        client.shutdown()
        raise InboxError(f"{where}: {_one_line(exc)}") from None
    try:
        yield client
    except (OSError, IMAPClientError) as exc:
        raise InboxError(f"{where}: {_one_line(exc)}") from None
    finally:
        try:
            client.logout()
        except (OSError, IMAPClientError):
            client.shutdown()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- one fetch ------------------------------------------------------------------------------


def fetch(engine: Engine, settings: Settings, now: datetime) -> FetchReport:
    """Read what is new in the folder once: record, match and move each email exactly once."""
    report = FetchReport()
    folder = settings.imap_folder
    with mailbox(settings) as box:
        selected = box.select_folder(folder)
        validity = int(selected[b"UIDVALIDITY"])
        uids = [int(u) for u in box.search(["ALL"])]
        report.seen = len(uids)
        known = _known(engine, folder, validity, uids)
        new = [uid for uid in uids if uid not in known]
        report.skipped = len(uids) - len(new)
        sizes = _sizes(box, new)
        for start in range(0, len(new), CHUNK):
            chunk = new[start : start + CHUNK]
            readable = [uid for uid in chunk if sizes.get(uid, 0) <= LARGEST]
            too_big = [uid for uid in chunk if uid not in readable]
            bodies = box.fetch(readable, ["BODY.PEEK[]"]) if readable else {}
            heads = box.fetch(too_big, ["BODY.PEEK[HEADER]"]) if too_big else {}
            for uid in chunk:
                raw = bodies.get(uid, {}).get(b"BODY[]")
                head = heads.get(uid, {}).get(b"BODY[HEADER]", b"")
                kind = _record(engine, settings, folder, validity, uid, raw or head, sizes.get(uid, 0), now)
                if kind is None:
                    report.skipped += 1
                else:
                    report.count(kind)
        report.moved = _move_handled(engine, box, settings, folder, validity)
    return report


def _known(engine: Engine, folder: str, validity: int, uids: Sequence[int]) -> set[int]:
    found: set[int] = set()
    with store.read(engine) as conn:
        for part in store.chunks(list(uids)):
            rows = conn.execute(
                select(inbound.c.uid).where(
                    inbound.c.folder == folder, inbound.c.uidvalidity == validity, inbound.c.uid.in_(part)
                )
            )
            found.update(int(uid) for uid in rows.scalars())
    return found


def _sizes(box: Any, uids: Sequence[int]) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for start in range(0, len(uids), 500):
        part = list(uids[start : start + 500])
        for uid, data in box.fetch(part, ["RFC822.SIZE"]).items():
            sizes[int(uid)] = int(data.get(b"RFC822.SIZE", 0))
    return sizes


def _record(
    engine: Engine,
    settings: Settings,
    folder: str,
    validity: int,
    uid: int,
    raw: bytes,
    size: int,
    now: datetime,
) -> str | None:
    """Record one email and what it means, in one transaction; None if it is already on record."""
    place = {"folder": folder, "uidvalidity": validity, "uid": uid, "created_at": now, "moved": False}
    if size > LARGEST:  # only its header was read: who sent it and what about, for a person to look at
        head = parsing.parse(raw)
        row = {
            **place,
            "header_message_id": head.message_id[:998] if head.message_id else None,
            "kind": "unmatched",
            "sender": head.sender[:254],
            "subject": head.subject,
            "received_at": head.date or now,
            "text": "",
            "reason": f"too large to read ({size / 1024 / 1024:.0f} MB; the limit is {LARGEST // 1024 // 1024} MB)",
        }
        return _insert(engine, row)
    mail = parsing.parse(raw)
    try:
        with store.write(engine) as conn:
            if mail.message_id and _seen_message_id(conn, mail.message_id):
                return None  # the same email again (copied, or the folder renumbered)
            found = _match(conn, settings, mail)
            kind = _kind(mail, found)
            row = {
                **place,
                "header_message_id": mail.message_id[:998] if mail.message_id else None,
                "kind": kind,
                "message_id": found.message_id,
                "client_id": found.client_id,
                "physician_id": found.physician_id,
                "sender": mail.sender[:254],
                "subject": mail.subject,
                "received_at": mail.date or now,
                "text": mail.text,
                "bounce_status": mail.bounce.status[:20] if mail.bounce else None,
                "reason": _reason(mail, found),
                "raw": raw,
            }
            conn.execute(inbound.insert().values(**row))
            if found.message_id is not None:
                _consequences(conn, mail, found, now)
    except IntegrityError:
        return None  # another service recorded it first
    return kind


def _insert(engine: Engine, row: dict[str, Any]) -> str | None:
    try:
        with store.write(engine) as conn:
            conn.execute(inbound.insert().values(**row))
    except IntegrityError:
        return None
    return str(row["kind"])


def _seen_message_id(conn: Connection, message_id: str) -> bool:
    query = select(inbound.c.id).where(inbound.c.header_message_id == message_id[:998]).limit(1)
    return conn.execute(query).first() is not None


def _kind(mail: parsing.Inbound, found: Match) -> str:
    if found.message_id is None:
        return "unmatched"
    if mail.bounce is not None:
        return "bounce"
    return "auto_reply" if mail.auto else "reply"


def _reason(mail: parsing.Inbound, found: Match) -> str | None:
    if found.message_id is None:
        what = "bounce" if mail.bounce else "email"
        why = f"a {what} that names none of our messages"
        return f"{why} ({mail.problem})" if mail.problem else why
    return mail.problem


# --- matching -------------------------------------------------------------------------------


_MATCH_COLUMNS = (
    messages.c.id,
    messages.c.client_id,
    messages.c.physician_id,
    messages.c.status,
    messages.c.digest_id,
)


def _match(conn: Connection, settings: Settings, mail: parsing.Inbound) -> Match:
    """Our message this email is about: VERP token, quoted Message-ID, references, recipient."""
    if mail.bounce is not None and settings.bounce_address:
        for token in parsing.verp_tokens(mail, settings.bounce_address):
            found = _by_token(conn, token)
            if found is not None:
                return found
    ids = list(mail.references)
    if mail.bounce is not None and mail.bounce.original_message_id:
        ids.insert(0, mail.bounce.original_message_id)
    for message_id in ids:
        row = conn.execute(select(*_MATCH_COLUMNS).where(messages.c.message_id == message_id)).first()
        if row is not None:
            return Match(row.id, row.client_id, row.physician_id, row.status, row.digest_id)
    if mail.bounce is not None and mail.bounce.recipients:
        return _by_recipient(conn, mail.bounce.recipients, mail.date)
    return Match()


def _by_token(conn: Connection, message_token: str) -> Match | None:
    number = verp.message_number(message_token)
    if number is None:
        return None
    row = conn.execute(select(*_MATCH_COLUMNS, messages.c.message_id).where(messages.c.id == number)).first()
    if row is None or verp.token(row.id, row.message_id) != message_token.lower():
        return None
    return Match(row.id, row.client_id, row.physician_id, row.status, row.digest_id)


def _by_recipient(conn: Connection, recipients: Sequence[str], when: datetime | None) -> Match:
    """Our latest message sent to one of these addresses in the month before (a bounce quoting nothing)."""
    query = select(*_MATCH_COLUMNS).where(
        messages.c.status.in_((SENT, BOUNCED)),
        or_(*(messages.c.recipient == address for address in recipients)),
        messages.c.digest_id.is_(None),
    )
    if when is not None:
        query = query.where(messages.c.sent_at >= when - RECIPIENT_WINDOW, messages.c.sent_at <= when)
    row = conn.execute(query.order_by(messages.c.sent_at.desc()).limit(1)).first()
    if row is None:
        return Match()
    return Match(row.id, row.client_id, row.physician_id, row.status, row.digest_id)


# --- what it means ----------------------------------------------------------------------


def _consequences(conn: Connection, mail: parsing.Inbound, found: Match, now: datetime) -> None:
    assert found.message_id is not None
    if mail.bounce is None:
        who = f"{'automatic reply' if mail.auto else 'reply'} from {mail.sender or 'an unknown sender'}"
        outbox.trail(conn, found.message_id, now, "replied", who)
        return
    diagnostic = mail.bounce.diagnostic or mail.bounce.status or "no diagnostic given"
    if not mail.bounce.permanent and not mail.bounce.gave_up:
        outbox.trail(conn, found.message_id, now, "delayed", diagnostic)
        return
    if found.status == REDIRECTED:  # a staging address bounced: nothing to say about the physician's
        outbox.trail(conn, found.message_id, now, "bounced", f"staging address: {diagnostic}")
        return
    carried = [found.message_id]
    carried += list(
        conn.execute(select(messages.c.id).where(messages.c.digest_id == found.message_id)).scalars()
    )
    # A server that gave up after retrying (4.x.x, "Action: failed"): it never arrived, but
    # the address may be fine, so it is not marked.
    said = f"the server gave up after retrying: {diagnostic}" if mail.bounce.gave_up else diagnostic
    conn.execute(
        update(messages)
        .where(messages.c.id.in_(carried), messages.c.status == SENT)
        .values(status=BOUNCED, last_error=f"bounced: {said}"[:2000], updated_at=now)
    )
    outbox.trail_many(conn, now, [(i, "bounced", said) for i in carried])
    if not mail.bounce.gave_up:
        outbox.mark_undeliverable(conn, found.message_id, f"bounced: {diagnostic}", now)


# --- moving what was handled -------------------------------------------------------------------


def _move_handled(engine: Engine, box: Any, settings: Settings, folder: str, validity: int) -> int:
    """Move recorded, handled emails to the done folder (creating it); unmatched ones stay.

    Two fetches must not both move one email (IMAP MOVE is a copy and an
    expunge: both would copy it), so a fetch first claims what it moves, for
    ``MOVE_LEASE``; what a crashed fetch claimed is moved by a later one.
    """
    claimed = _claim_moves(engine, folder, validity)
    if not claimed:
        return 0
    done = settings.imap_done_folder
    if not box.folder_exists(done):
        box.create_folder(done)
    if box.has_capability("MOVE"):
        box.move(claimed, done)
    else:  # an old server: copy, then mark and expunge only those copied
        box.copy(claimed, done)
        box.delete_messages(claimed)
        box.uid_expunge(claimed) if box.has_capability("UIDPLUS") else box.expunge()
    with store.write(engine) as conn:
        for part in store.chunks(claimed):
            conn.execute(update(inbound).where(*_place(folder, validity, part)).values(moved=True))
    return len(claimed)


def _place(folder: str, validity: int, uids: Sequence[int]) -> tuple[ColumnElement[bool], ...]:
    return (inbound.c.folder == folder, inbound.c.uidvalidity == validity, inbound.c.uid.in_(uids))


def _claim_moves(engine: Engine, folder: str, validity: int) -> list[int]:
    """The handled, unmoved emails no other fetch is moving now, claimed for this one."""
    at = utcnow()  # the wall clock: a lease is about real time, whatever --now says
    with store.write(engine) as conn:
        claimed = conn.execute(
            update(inbound)
            .where(
                inbound.c.folder == folder,
                inbound.c.uidvalidity == validity,
                inbound.c.kind != "unmatched",
                inbound.c.moved.is_(False),
                or_(inbound.c.moving_until.is_(None), inbound.c.moving_until < at),
            )
            .values(moving_until=at + MOVE_LEASE)
            .returning(inbound.c.uid)
        )
        return sorted(int(uid) for uid in claimed.scalars())
