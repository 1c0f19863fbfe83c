"""CSV import of physicians, clients, events and measures.

The importer reads files and checks rows; the rules for each value and the
writing of each row are ``records``' (the one write path), which the CLI
and the demo use too.

All or nothing: every row is checked first and every bad row is reported
with its line number; only a clean file (or ``skip_invalid``) writes, and it
writes in one transaction. Re-importing updates physicians by email and
clients by ref; events and measures already on record are left as they are.
A client's status comes from the file only for a new client: after that,
milestones decide it (a re-import never reopens a discharged client).
A free-text cell (a note, a diagnosis) holds at most ``TEXT_LIMIT``
characters; a longer one is a bad row like any other.

``save_record`` takes one record (the JSON API's) through the same checks
and row writers as a row of a file, in a transaction of its own.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, Table, select

from outreach import store
from outreach.errors import ImportFileError, OutreachError
from outreach.models import clients, events, measurements, physicians
from outreach.records import (
    TEXT_LIMIT,
    Outcome,
    RowError,
    fits,
    not_in_future,
    parse_date,
    parse_datetime,
    parse_email,
    parse_event_kind,
    parse_score,
    parse_status,
    record_event,
    record_measure,
    save_client,
    save_physician,
    single_line,
    write_audit,
)
from outreach.settings import Settings
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


# The csv module refuses a cell over 128 K characters, and with it the whole file;
# read up to this much, so a longer note is one bad row that --skip-invalid can skip.
FIELD_LIMIT = 16 * 1024 * 1024

# What a repeated row repeats, in the user's words (see ``_Checker.once``).
SAME_PHYSICIAN, SAME_CLIENT = "same email", "same ref"
SAME_EVENT, SAME_MEASURE = "same client, kind and time", "same client, instrument and day"


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
    engine: Engine,
    settings: Settings,
    kind: str,
    path: Path,
    now: datetime,
    skip_invalid: bool = False,
    actor: str | None = None,
) -> ImportReport:
    """Check every row, then write all of them in one transaction (or none).

    A file that changed something leaves one ``audit`` row (by ``actor``,
    the login running the import unless named): the file says the rest.
    """
    spec = SPECS[kind]
    path = Path(path)
    rows, problems = read_rows(path, spec)
    report = ImportReport(kind)
    with store.write(engine) as conn:
        checker = _CHECKERS[kind](conn, settings, now)
        good = []
        for line, raw in rows:
            checker.line = line
            try:
                good.append(_checked(checker, spec, raw))
            except RowError as exc:
                problems.append(f"{path}:{line}: {exc}")
        if problems and not skip_invalid:
            raise ImportFileError(str(path), problems)
        report.skipped = problems
        for values in good:
            outcome = checker.write(values)
            setattr(report, outcome, getattr(report, outcome) + 1)
        if report.created or report.updated:
            write_audit(conn, now, actor, [("import", kind, f"{path}: {report.summary()}")])
    return report


def _checked(checker: _Checker, spec: Spec, raw: dict[str, str]) -> dict[str, Any]:
    """One row's values for its table: required cells, each value, what the database can hold."""
    missing = [c for c in spec.required if not raw.get(c, "").strip()]
    if missing:
        raise RowError(f"{', '.join(missing)}: required but empty")
    values = checker.check(raw)
    fits(checker.table, values)
    return values


# --- one record (the API's) -----------------------------------------------------------


class RecordRefused(OutreachError):
    """A record that cannot be saved: every problem found, each a ``RowError`` naming its field."""

    def __init__(self, problems: list[RowError]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def save_record(
    engine: Engine,
    settings: Settings,
    kind: str,
    raw: dict[str, str],
    now: datetime,
    actor: str | None = None,
) -> tuple[Outcome, dict[str, Any]]:
    """Check one record exactly as a CSV row is checked, write it as an import would, audit it.

    ``raw`` holds the record's fields as text, as a file's cells would be;
    a field left out is a column the file does not have (left as it is on
    record). One transaction; one audit line by ``actor`` for every call
    that got this far, even when nothing changed (an API call is accounted
    for). Returns what happened and the record as now stored, by the names
    the fields were given in (``client_ref``, ``physician_email``, ``measured_at``).
    """
    spec = SPECS[kind]
    problems = [
        RowError(f"{name}: not a field of {kind} (expected: {', '.join(spec.columns)})")
        for name in raw
        if name not in spec.columns
    ]
    for name in spec.required:
        if name not in raw:
            problems.append(RowError(f"{name}: required but missing"))
        elif not raw[name].strip():
            problems.append(RowError(f"{name}: required but empty"))
    if problems:
        raise RecordRefused(problems)
    with store.write(engine) as conn:
        checker = _CHECKERS[kind](conn, settings, now)
        try:
            values = _checked(checker, spec, raw)
        except RowError as exc:
            raise RecordRefused([exc]) from None
        outcome = cast(Outcome, checker.write(values))
        record = checker.stored(values)
        action, subject, detail = checker.described(record)
        write_audit(conn, now, actor, [(action, subject, f"{outcome}: {detail}")])
    return outcome, record


class _Checker:
    table: Table

    def __init__(self, conn: Connection, settings: Settings, now: datetime):
        self.conn, self.settings, self.now = conn, settings, now
        self.seen: dict[object, int] = {}  # key -> the line it was first seen on
        self.line = 0  # the line being checked

    def once(self, key: object, same: str) -> None:
        """Refuse a second row for the same thing, naming the first by its line (not by ids)."""
        first = self.seen.setdefault(key, self.line)
        if first != self.line:
            raise RowError(f"duplicate of line {first} ({same})")

    def check(self, raw: dict[str, str]) -> dict[str, Any]:
        """The row's values for the table, or a ``RowError`` naming the column."""
        raise NotImplementedError

    def write(self, values: dict[str, Any]) -> str:
        """Write checked values (through ``records``): created, updated or unchanged."""
        raise NotImplementedError

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        """The record as stored after ``write`` (by the names the fields were given in)."""
        raise NotImplementedError

    def described(self, record: dict[str, Any]) -> tuple[str, str, str]:
        """The audit line's action, subject and detail for a record saved on its own."""
        raise NotImplementedError

    def client_row(self, values: dict[str, Any], key: tuple[str, ...], **renamed: str) -> dict[str, Any]:
        """The stored row of ``table`` (a client's event or measure) with the unique ``key`` in ``values``.

        Every column of the table, the client by ref (``client_ref``) rather
        than by id, and a column named in ``renamed`` by its name there.
        """
        columns = [
            clients.c.ref.label("client_ref")
            if c.name == "client_id"
            else c.label(renamed.get(c.name, c.name))
            for c in self.table.c
        ]
        query = select(*columns).join(clients, clients.c.id == self.table.c.client_id)
        found = query.where(*(self.table.c[name] == values[name] for name in key))
        return dict(self.conn.execute(found).one()._mapping)

    def client_id(self, ref: str) -> int:
        found = self.conn.execute(select(clients.c.id).where(clients.c.ref == ref.strip())).scalar()
        if found is None:
            raise RowError(f"client_ref: no client with ref {ref.strip()!r}")
        return found


class _Physicians(_Checker):
    table = physicians

    def check(self, raw: dict[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {"email": parse_email(raw["email"])}
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

    def write(self, values: dict[str, Any]) -> str:
        return save_physician(self.conn, values, self.now)

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        row = self.conn.execute(select(physicians).where(physicians.c.email == values["email"])).one()
        return dict(row._mapping)

    def described(self, record: dict[str, Any]) -> tuple[str, str, str]:
        return "physician", f"physician {record['email']}", record["name"]


class _Clients(_Checker):
    table = clients

    def check(self, raw: dict[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {"ref": single_line(raw["ref"], "ref")}
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
        status = parse_status(raw.get("status", ""))
        if status:
            values["status"] = status
        return values

    def write(self, values: dict[str, Any]) -> str:
        return save_client(self.conn, values, self.now)

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        columns = [c for c in clients.c if c.name != "physician_id"]
        query = select(*columns, physicians.c.email.label("physician_email")).join(
            physicians, physicians.c.id == clients.c.physician_id
        )
        return dict(self.conn.execute(query.where(clients.c.ref == values["ref"])).one()._mapping)

    def described(self, record: dict[str, Any]) -> tuple[str, str, str]:
        return "client", f"client {record['ref']}", f"referred by {record['physician_email']}"


class _Events(_Checker):
    table = events

    def check(self, raw: dict[str, str]) -> dict[str, Any]:
        client_id = self.client_id(raw["client_ref"])
        kind = parse_event_kind(raw["kind"])
        at = parse_datetime(raw["occurred_at"], "occurred_at", self.settings.tz)
        not_in_future(at, self.now, "occurred_at")
        self.once((client_id, kind, at), SAME_EVENT)
        return {"client_id": client_id, "kind": kind, "occurred_at": at, "note": raw.get("note", "").strip()}

    def write(self, values: dict[str, Any]) -> str:
        return "created" if record_event(self.conn, now=self.now, **values) else "unchanged"

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.client_row(values, ("client_id", "kind", "occurred_at"))

    def described(self, record: dict[str, Any]) -> tuple[str, str, str]:
        return (
            "event",
            f"client {record['client_ref']}",
            f"{record['kind']} at {record['occurred_at'].isoformat()}",
        )


class _Measures(_Checker):
    table = measurements

    def check(self, raw: dict[str, str]) -> dict[str, Any]:
        client_id = self.client_id(raw["client_ref"])
        code, score = parse_score(raw["score"], raw["instrument"])
        day = parse_date(raw["measured_at"], "measured_at")
        not_in_future(day, self.now, "measured_at")
        self.once((client_id, code, day), SAME_MEASURE)
        return {"client_id": client_id, "instrument": code, "score": score, "measured_on": day}

    def write(self, values: dict[str, Any]) -> str:
        return record_measure(self.conn, now=self.now, **values)

    def stored(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.client_row(values, ("client_id", "instrument", "measured_on"), measured_on="measured_at")

    def described(self, record: dict[str, Any]) -> tuple[str, str, str]:
        what = f"{record['instrument']} {record['score']:g} on {record['measured_at']}"
        return "measure", f"client {record['client_ref']}", what


_CHECKERS: dict[str, Callable[..., _Checker]] = {
    "physicians": _Physicians,
    "clients": _Clients,
    "events": _Events,
    "measures": _Measures,
}
