"""CSV import of physicians, clients, events and measures.

All or nothing: every row is checked first and every bad row is reported
with its line number; only a clean file (or ``skip_invalid``) writes, and it
writes in one transaction. Re-importing updates physicians by email and
clients by ref; events and measures already on record are left as they are.
A client's status comes from the file only for a new client: after that,
milestones decide it (a re-import never reopens a discharged client).
A free-text cell (a note, a diagnosis) holds at most ``TEXT_LIMIT``
characters; a longer one is a bad row like any other.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, select, update

from outreach import store
from outreach.errors import ImportFileError, OutreachError
from outreach.instruments import lookup
from outreach.models import (
    CLIENT_STATUSES,
    EVENT_KINDS,
    clients,
    events,
    measurements,
    physicians,
)
from outreach.settings import Settings, address_problem
from outreach.windows import parse_window


@dataclass
class ImportReport:
    kind: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.kind}: {self.created} created, {self.updated} updated, {self.unchanged} already on record"
        )
        return text + (f", {len(self.skipped)} invalid row(s) skipped" if self.skipped else "")


@dataclass(frozen=True)
class Spec:
    columns: tuple[str, ...]
    required: tuple[str, ...]


SPECS = {
    "physicians": Spec(
        (
            "email",
            "name",
            "credentials",
            "specialty",
            "clinic",
            "phone",
            "fax",
            "timezone",
            "send_window",
            "weekly_cap",
        ),
        ("email", "name"),
    ),
    "clients": Spec(
        (
            "ref",
            "first_name",
            "last_name",
            "physician_email",
            "referral_date",
            "diagnosis",
            "precautions",
            "goals",
            "consent_date",
            "status",
            "consent_expires",
            "plan",
            "next_reassessment",
        ),
        ("ref", "first_name", "last_name", "physician_email"),
    ),
    "events": Spec(("client_ref", "kind", "occurred_at", "note"), ("client_ref", "kind", "occurred_at")),
    "measures": Spec(
        ("client_ref", "instrument", "score", "measured_at"),
        ("client_ref", "instrument", "score", "measured_at"),
    ),
}


# A free-text cell (note, diagnosis, precautions, goals, plan) holds at most this many
# characters: a clinical note is a few hundred; 64 K is a pasted document.
TEXT_LIMIT = 64 * 1024
# The csv module refuses a cell over 128 K characters, and with it the whole file;
# read up to this much, so a longer note is one bad row that --skip-invalid can skip.
FIELD_LIMIT = 16 * 1024 * 1024

# What a repeated row repeats, in the user's words (see ``_Checker.once``).
SAME_PHYSICIAN, SAME_CLIENT = "same email", "same ref"
SAME_EVENT, SAME_MEASURE = "same client, kind and time", "same client, instrument and day"


class RowError(ValueError):
    """One problem with one row; the message names the column."""


# --- value parsers (shared with the CLI) ----------------------------------------


def single_line(value: str, column: str) -> str:
    if any(ch in value for ch in "\r\n\x00"):
        raise RowError(f"{column}: must be a single line (found a line break)")
    return value.strip()


def parse_email(value: str, column: str = "email") -> str:
    value = value.strip()
    problem = address_problem(value)
    if problem:
        raise RowError(f"{column}: {problem}")
    return value.lower()


def parse_date(value: str, column: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RowError(f"{column}: {value!r} is not a date (YYYY-MM-DD)") from None


def parse_datetime(value: str, column: str, tz: ZoneInfo) -> datetime:
    """ISO 8601; without a zone it is the practice's local time; a date alone is midnight."""
    value = value.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowError(f"{column}: {value!r} is not a date-time (ISO 8601, e.g. 2026-11-26T09:30)") from None
    if len(value) == 10:
        parsed = datetime.combine(parsed.date(), time(9, 0))
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
    try:
        if parsed.astimezone(UTC).year < 1900:
            raise RowError(f"{column}: {value!r} is before 1900")
    except OverflowError:
        raise RowError(f"{column}: {value!r} is out of range") from None
    return parsed


def parse_score(value: str, instrument_name: str) -> tuple[str, float]:
    instrument = lookup(instrument_name)
    if instrument is None:
        raise RowError(f"instrument: {instrument_name!r} is not a known outcome measure")
    try:
        score = float(value)
    except ValueError:
        raise RowError(f"score: {value!r} is not a number") from None
    if not math.isfinite(score) or not instrument.in_range(score):
        raise RowError(f"score: {value} is outside the {instrument.code} range ({instrument.range_text})")
    return instrument.code, score


def parse_event_kind(value: str) -> str:
    kind = value.strip().lower()
    if kind not in EVENT_KINDS:
        raise RowError(f"kind: {value!r} is not a known event kind ({', '.join(EVENT_KINDS)})")
    return kind


def not_in_future(moment: datetime | date | None, now: datetime, column: str) -> None:
    if moment is None:
        return
    limit = now + timedelta(hours=1)
    if (moment > limit) if isinstance(moment, datetime) else (moment > limit.date()):
        raise RowError(f"{column}: {moment} is in the future")


# --- reading the file ----------------------------------------------------------------


def read_rows(path: Path, spec: Spec) -> tuple[list[tuple[int, dict]], list[str]]:
    """Rows with their line numbers, and the problems with the file's shape."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise OutreachError(f"{path}: cannot open: {exc.strerror}") from None
    rows, problems = [], []
    limit, start = csv.field_size_limit(FIELD_LIMIT), 1
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise OutreachError(f"{path}: the file is empty (expected a header row)")
            separator_hint(path, header)
            header = [h.strip().lower() for h in header]
            missing = [c for c in spec.required if c not in header]
            unknown = [c for c in header if c not in spec.columns]
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing required column(s): {', '.join(missing)}")
                if unknown:
                    parts.append(
                        f"unknown column(s): {', '.join(unknown)} (expected: {', '.join(spec.columns)})"
                    )
                raise OutreachError(f"{path}:1: " + "; ".join(parts))
            while True:
                start = reader.line_num + 1  # a record may span lines; it starts here
                values = next(reader, None)
                if values is None:
                    break
                if not any(v.strip() for v in values):
                    continue  # blank line
                if len(values) > len(header):
                    problems.append(
                        f"{path}:{start}: row has {len(values)} fields, the header has {len(header)}"
                    )
                    continue
                values += [""] * (len(header) - len(values))
                rows.append((start, dict(zip(header, values, strict=True))))
        except csv.Error as exc:
            if "field limit" in str(exc):
                raise OutreachError(
                    f"{path}:{start}: a cell is longer than {FIELD_LIMIT:,} characters "
                    f"(a note may have {TEXT_LIMIT:,})"
                ) from None
            raise OutreachError(f"{path}:{reader.line_num}: not readable as CSV: {exc}") from None
        except UnicodeDecodeError:
            raise OutreachError(f"{path}: not UTF-8 text (save the spreadsheet as CSV UTF-8)") from None
        finally:
            csv.field_size_limit(limit)
    return rows, problems


def separator_hint(path: Path, header: list[str]) -> None:
    """A spreadsheet saved with ';' or tabs between columns: say so, instead of 'unknown column'."""
    if len(header) != 1:
        return
    for separator, name in ((";", "';'"), ("\t", "tabs")):
        if separator in header[0]:
            raise OutreachError(
                f"{path}: the header has no comma; is it separated by {name}? Save it as comma-separated CSV"
            )


def import_file(
    engine: Engine, settings: Settings, kind: str, path: Path, now: datetime, skip_invalid: bool = False
) -> ImportReport:
    """Check every row, then write all of them in one transaction (or none)."""
    spec = SPECS[kind]
    path = Path(path)
    rows, problems = read_rows(path, spec)
    report = ImportReport(kind)
    with store.write(engine) as conn:
        checker = _CHECKERS[kind](conn, settings, now)
        good = []
        for line, raw in rows:
            checker.line = line
            missing = [c for c in spec.required if not raw.get(c, "").strip()]
            try:
                if missing:
                    raise RowError(f"{', '.join(missing)}: required but empty")
                values = checker.check(raw)
                fits(checker.table, values)
                good.append(values)
            except RowError as exc:
                problems.append(f"{path}:{line}: {exc}")
        if problems and not skip_invalid:
            raise ImportFileError(str(path), problems)
        report.skipped = problems
        for values in good:
            outcome = checker.write(values)
            setattr(report, outcome, getattr(report, outcome) + 1)
    return report


def fits(table, values: dict) -> None:
    """Refuse what the database cannot hold: NUL characters, text longer than its column.

    Free text (a ``Text`` column) is held to ``TEXT_LIMIT``.
    """
    for column, value in values.items():
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            raise RowError(f"{column}: contains a NUL character")
        limit = getattr(table.c[column].type, "length", None) or TEXT_LIMIT
        if len(value) > limit:
            raise RowError(f"{column}: {len(value):,} characters, more than the limit of {limit:,}")


class _Checker:
    table = None

    def __init__(self, conn: Connection, settings: Settings, now: datetime):
        self.conn, self.settings, self.now = conn, settings, now
        self.seen: dict[object, int] = {}  # key -> the line it was first seen on
        self.line = 0  # the line being checked

    def once(self, key: object, same: str) -> None:
        """Refuse a second row for the same thing, naming the first by its line (not by ids)."""
        first = self.seen.setdefault(key, self.line)
        if first != self.line:
            raise RowError(f"duplicate of line {first} ({same})")

    def client_id(self, ref: str) -> int:
        found = self.conn.execute(select(clients.c.id).where(clients.c.ref == ref.strip())).scalar()
        if found is None:
            raise RowError(f"client_ref: no client with ref {ref.strip()!r}")
        return found


class _Physicians(_Checker):
    table = physicians

    def check(self, raw: dict) -> dict:
        values = {"email": parse_email(raw["email"])}
        self.once(values["email"], SAME_PHYSICIAN)
        for column in ("name", "credentials", "specialty", "clinic", "phone", "fax"):
            if column in raw:
                values[column] = single_line(raw[column], column)
        zone = raw.get("timezone", "").strip()
        if zone:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise RowError(
                    f"timezone: {zone!r} is not an IANA time zone (e.g. America/Chicago)"
                ) from None
        if "timezone" in raw:
            values["timezone"] = zone or None
        if "send_window" in raw:
            window = raw["send_window"].strip()
            try:
                values["send_window"] = str(parse_window(window)) if window else None
            except ValueError as exc:
                raise RowError(f"send_window: {exc}") from None
        if "weekly_cap" in raw:
            cap = raw["weekly_cap"].strip()
            if cap and (not cap.isdigit() or not 1 <= int(cap) <= 100):
                raise RowError(f"weekly_cap: {cap!r} is not a whole number from 1 to 100")
            values["weekly_cap"] = int(cap) if cap else None
        return values

    def write(self, values: dict) -> str:
        return upsert(self.conn, physicians, "email", values, self.now)


class _Clients(_Checker):
    table = clients

    def check(self, raw: dict) -> dict:
        values = {"ref": single_line(raw["ref"], "ref")}
        self.once(values["ref"], SAME_CLIENT)
        for column in ("first_name", "last_name"):
            values[column] = single_line(raw[column], column)
        email = parse_email(raw["physician_email"], "physician_email")
        physician_id = self.conn.execute(select(physicians.c.id).where(physicians.c.email == email)).scalar()
        if physician_id is None:
            raise RowError(f"physician_email: {email!r} is not a known physician (import physicians first)")
        values["physician_id"] = physician_id
        for column in ("referral_date", "consent_date", "consent_expires"):
            if column in raw:
                values[column] = parse_date(raw[column], column)
                not_in_future(values[column] if column != "consent_expires" else None, self.now, column)
        for column in ("diagnosis", "precautions", "goals", "plan"):
            if column in raw:
                values[column] = raw[column].strip()
        if "next_reassessment" in raw:
            values["next_reassessment"] = parse_date(raw["next_reassessment"], "next_reassessment")
        status = raw.get("status", "").strip().lower()
        if status:
            if status not in CLIENT_STATUSES:
                raise RowError(f"status: {status!r} is not one of {', '.join(CLIENT_STATUSES)}")
            values["status"] = status
        return values

    def write(self, values: dict) -> str:
        # Milestones decide an existing client's status (a discharge stays a discharge).
        return upsert(self.conn, clients, "ref", values, self.now, insert_only=("status",))


class _Events(_Checker):
    table = events

    def check(self, raw: dict) -> dict:
        client_id = self.client_id(raw["client_ref"])
        kind = parse_event_kind(raw["kind"])
        at = parse_datetime(raw["occurred_at"], "occurred_at", self.settings.tz)
        not_in_future(at, self.now, "occurred_at")
        self.once((client_id, kind, at), SAME_EVENT)
        return {"client_id": client_id, "kind": kind, "occurred_at": at, "note": raw.get("note", "").strip()}

    def write(self, values: dict) -> str:
        return "created" if record_event(self.conn, now=self.now, **values) else "unchanged"


class _Measures(_Checker):
    table = measurements

    def check(self, raw: dict) -> dict:
        client_id = self.client_id(raw["client_ref"])
        code, score = parse_score(raw["score"], raw["instrument"])
        day = parse_date(raw["measured_at"], "measured_at")
        not_in_future(day, self.now, "measured_at")
        self.once((client_id, code, day), SAME_MEASURE)
        return {"client_id": client_id, "instrument": code, "score": score, "measured_on": day}

    def write(self, values: dict) -> str:
        return record_measure(self.conn, now=self.now, **values)


_CHECKERS: dict[str, Callable[..., _Checker]] = {
    "physicians": _Physicians,
    "clients": _Clients,
    "events": _Events,
    "measures": _Measures,
}


# --- writing -------------------------------------------------------------------------


def upsert(
    conn: Connection, table, key: str, values: dict, now: datetime, insert_only: tuple[str, ...] = ()
) -> str:
    """Insert the row, or update the one with the same ``key``; ``insert_only`` columns only start a row."""
    existing = conn.execute(select(table).where(table.c[key] == values[key])).first()
    if existing is None:
        conn.execute(table.insert().values(created_at=now, updated_at=now, **values))
        return "created"
    changed = {k: v for k, v in values.items() if k not in insert_only and getattr(existing, k) != v}
    if not changed:
        return "unchanged"
    conn.execute(update(table).where(table.c.id == existing.id).values(updated_at=now, **changed))
    return "updated"


# What a milestone does to the client's status.
STATUS_AFTER = {"initial_assessment": ("referred", "on_hold"), "discharged": CLIENT_STATUSES}
NEW_STATUS = {"initial_assessment": "active", "discharged": "discharged"}


def record_event(
    conn: Connection, client_id: int, kind: str, occurred_at: datetime, note: str, now: datetime
) -> int | None:
    """Store a milestone (once) and move the client's status along; the new id or None."""
    exists = conn.execute(
        select(events.c.id).where(
            events.c.client_id == client_id, events.c.kind == kind, events.c.occurred_at == occurred_at
        )
    ).scalar()
    if exists is not None:
        return None
    new_id = conn.execute(
        events.insert().values(
            client_id=client_id, kind=kind, occurred_at=occurred_at, note=note, created_at=now
        )
    ).inserted_primary_key[0]
    if kind in NEW_STATUS:
        conn.execute(
            update(clients)
            .where(clients.c.id == client_id, clients.c.status.in_(STATUS_AFTER[kind]))
            .values(status=NEW_STATUS[kind], updated_at=now)
        )
    return new_id


def record_measure(
    conn: Connection, client_id: int, instrument: str, score: float, measured_on: date, now: datetime
) -> str:
    """Store a score; a second score for the same instrument and day replaces the first."""
    existing = conn.execute(
        select(measurements.c.id, measurements.c.score).where(
            measurements.c.client_id == client_id,
            measurements.c.instrument == instrument,
            measurements.c.measured_on == measured_on,
        )
    ).first()
    if existing is None:
        conn.execute(
            measurements.insert().values(
                client_id=client_id,
                instrument=instrument,
                score=score,
                measured_on=measured_on,
                created_at=now,
            )
        )
        return "created"
    if existing.score == score:
        return "unchanged"
    conn.execute(update(measurements).where(measurements.c.id == existing.id).values(score=score))
    return "updated"
