"""The JSON API under /api/v1: what a practice's other systems send in, and what they read back.

The writes are the CSV import's, one record at a time (``importer.save_record``:
the same fields, the same checks, the same row writers, an audit line by the
token); the reads are the CLI's (``review``, ``loops``, ``status``). Every
route needs a bearer token (``security._bearer``); writes need a staff one.
Errors are always ``{"errors": [{"field": ..., "message": ...}]}``, naming the
field or query parameter at fault. The document describing all of this is
served at ``/api/v1/openapi.json`` (``openapi.document``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from datetime import date, datetime
from functools import partial
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.datastructures import MultiDict

from outreach import importer, loops, review, status, store
from outreach.errors import NotFound
from outreach.models import IMPORT_KINDS
from outreach.records import RowError, encodable, parse_date
from outreach.review import FIRST_DAY, LAST_DAY
from outreach.web import openapi
from outreach.web.security import audit, engine, need, now, principal, settings

bp = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_LIMIT = 500  # messages in one page
DEFAULT_LIMIT = 100
# The log's days: a day at the calendar's ends has no start or end in every time zone.
MAX_ID = 2**31 - 1  # an id the database's integer column can hold: anything above is no message


class Refused(Exception):
    """A request the API will not act on: each problem as (field, message); 422."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


def errors(status_code: int, problems: list[tuple[str, str]]) -> Response:
    """The one error shape: every problem, each naming its field (or query parameter)."""
    response = jsonify({"errors": [{"field": field, "message": message} for field, message in problems]})
    response.status_code = status_code
    return response


def plain(value: Any) -> Any:
    """A value JSON can carry: datetimes as ISO 8601 with their offset, dates as YYYY-MM-DD."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def reply(body: Any, status_code: int = 200) -> Response:
    """``body`` as JSON (Flask's own encoder would write datetimes in the HTTP date format)."""
    response = jsonify(plain(body))
    response.status_code = status_code
    return response


# --- writes ----------------------------------------------------------------------------


def _no_constant(name: str) -> float:
    """Python reads NaN and Infinity as numbers; JSON has no such thing, and no cell means it."""
    raise ValueError(f"{name} is not a JSON number")


def request_fields() -> dict[str, str]:
    """The body's one JSON object, each value as the text a CSV cell would hold.

    Numbers become their text (``5``, ``42.5``); ``null`` an empty cell.
    Anything else (``true``, a list, an object) is refused, naming the field,
    as is a body that is not a JSON object. A body over 1 MB never gets here
    (413, from ``MAX_CONTENT_LENGTH``).
    """
    data = request.get_data(cache=True)
    if not data.strip():
        raise Refused([("body", "the body is empty: send one JSON object")])
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Refused(
            [("body", "the body is not JSON: send one JSON object (Content-Type: application/json)")]
        ) from None
    if not isinstance(body, dict):
        raise Refused([("body", f"the body must be a JSON object, not {_json_type(body)}")])
    fields: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for name, value in body.items():
        if value is None:
            fields[name] = ""
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append((name, f"must be text or a number, not {_json_type(value)}"))
        elif isinstance(value, str):
            if not encodable(value) or not encodable(name):
                problems.append((name, "is not valid Unicode text (a lone surrogate)"))
            elif "\x00" in value:
                problems.append((name, "contains a NUL character"))
            fields[name] = value
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((name, f"{value} is not a finite number"))
        else:
            fields[name] = _number_text(value)
    if problems:
        raise Refused(problems)
    return fields


def _number_text(value: int | float) -> str:
    """A JSON number as a person would write it in a cell: 5, not 5.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def _json_type(value: Any) -> str:
    """What a JSON value is, in the words of an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    return "a number"


def save(kind: str) -> Response:
    """Create or update one record of ``kind``: 201 when created, else 200 with the record on file."""
    try:
        outcome, record = importer.save_record(
            engine(), settings(), kind, request_fields(), now(), principal().name
        )
    except Refused as exc:
        return errors(422, exc.problems)
    except importer.RecordRefused as exc:
        return errors(422, [(problem.field, problem.problem) for problem in exc.problems])
    return reply(record, 201 if outcome == "created" else 200)


# A POST route for each kind of record the CSV import reads, its endpoint named by the kind
# (``api.physicians``): a physician is created or updated by email, a client by ref (a known
# physician's email names who referred them); an event (a milestone in a client's care) is
# recorded once; a second score for the same instrument and day replaces the first.
for _kind in IMPORT_KINDS:
    bp.add_url_rule(f"/{_kind}", _kind, need("staff")(partial(save, _kind)), methods=["POST"])


# --- reads -----------------------------------------------------------------------------


def log_query(args: MultiDict[str, str]) -> review.LogQuery:
    """The log's filters from the query string, as the console's filter form names them.

    ``since`` and ``until`` are days in the practice's time zone, both
    included; ``limit`` is 1 to 500; ``cursor`` is a page's ``next``.
    """
    problems: list[tuple[str, str]] = []

    def text(name: str) -> str | None:
        value = args.get(name, "").strip()
        return value or None

    def day(name: str) -> date | None:
        value = text(name)
        try:
            found = parse_date(value, name) if value else None
        except RowError as exc:
            problems.append((exc.field, exc.problem))
            return None
        if found is not None and not FIRST_DAY <= found <= LAST_DAY:
            problems.append((name, f"{found} is out of range ({FIRST_DAY} to {LAST_DAY})"))
            return None
        return found

    for name, value in args.items():
        if "\x00" in value:
            problems.append((name, "contains a NUL character"))
    since, until = day("since"), day("until")
    limit = DEFAULT_LIMIT
    given = text("limit")
    if given is not None:
        if not given.isascii() or not given.isdigit() or not 1 <= int(given) <= MAX_LIMIT:
            problems.append(("limit", f"{given!r} is not a whole number from 1 to {MAX_LIMIT}"))
        else:
            limit = int(given)
    if problems:
        raise Refused(problems)
    start, end = review.day_bounds(since, until, settings().tz)
    return review.LogQuery(
        status=text("status"),
        physician=text("physician"),
        client=text("client"),
        rule=text("rule"),
        since=start,
        until=end,
        words=text("q"),
        before=text("cursor"),
        limit=limit,
    )


# What ``review.find_messages`` says (``NotFound``) about each filter it looks up, by its first words.
_REFUSALS = (
    ("status ", "status"),
    ("no physician ", "physician"),
    ("no client ", "client"),
    ("the page cursor ", "cursor"),
)


def _parameter_of(exc: NotFound) -> str:
    """The query parameter a refusal of the log's filters is about."""
    text = str(exc)
    return next((name for start, name in _REFUSALS if text.startswith(start)), "")


@bp.get("/messages")
def messages() -> Response:
    """The log, newest first, a page at a time: ``next`` is the cursor for the page after."""
    try:
        query = log_query(request.args)
        assert query.limit is not None
        with store.read(engine()) as conn:
            rows = review.find_messages(conn, replace(query, limit=query.limit + 1))
    except Refused as exc:
        return errors(422, exc.problems)
    except NotFound as exc:
        return errors(422, [(_parameter_of(exc), str(exc))])
    page, more = rows[: query.limit], len(rows) > query.limit
    shown = {k: v for k, v in request.args.items() if v}
    audit("view log", "messages", ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return reply({"messages": page, "next": review.cursor_of(page[-1]) if more else None})


@bp.get("/messages/<int:message_id>")
def message(message_id: int) -> Response:
    """One message whole: its parts, its trail, what it carried or was carried in."""
    try:
        if message_id > MAX_ID:
            raise NotFound(f"no message with id {message_id}")
        with store.read(engine()) as conn:
            found = review.message_detail(conn, message_id)
    except NotFound as exc:
        return errors(404, [("message_id", str(exc))])
    audit("view message", f"message {message_id}")
    return reply(found)


@bp.get("/loops")
def open_loops() -> Response:
    """Each referral's expected updates (``outreach loops --format json``): blocked and overdue first."""
    physician = request.args.get("physician", "").strip() or None
    with store.read(engine()) as conn:
        found = loops.open_loops(conn, settings(), now(), physician)
    audit("view loops", f"physician {physician}" if physician else "loops")
    return reply({"loops": [asdict(loop) for loop in found]})


@bp.get("/status")
def health() -> Response:
    """Is the service alive and delivering (``outreach status``): no health information in it."""
    with store.read(engine()) as conn:
        found = status.health(conn, now(), settings().tick_seconds, settings().redirect_all_to)
    oldest = found.oldest_pending
    return reply(
        {
            "ok": found.ok,
            "problems": found.problems,
            "now": found.now,
            "last_heartbeat": found.last_heartbeat,
            "running": found.running,
            "stale": found.stale,
            "queue": found.queue,
            "oldest_pending": asdict(oldest) if oldest else None,
            "last_error": found.last_error,
            "last_error_at": found.last_error_at,
            "staging": list(found.staging),
        }
    )


@bp.get("/openapi.json")
def document() -> Response:
    """This API described (OpenAPI 3.1), for people and for client generators."""
    return reply(openapi.document())
