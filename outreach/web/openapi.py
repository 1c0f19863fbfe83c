"""The API described as OpenAPI 3.1, built here so it cannot drift from what the code accepts.

The fields each POST takes, and which are required, are the CSV import's
(``importer.SPECS``); the records it returns are read off the tables
(``models``); the statuses, event kinds and roles are the models' own lists.
Served at ``/api/v1/openapi.json`` (behind the token, like every route).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sqlalchemy import Boolean, Column, Date, Float, Integer, Table

from outreach.importer import SPECS
from outreach.loops import STATES
from outreach.models import (
    CLIENT_STATUSES,
    EVENT_KINDS,
    MESSAGE_STATUSES,
    UTCDateTime,
    clients,
    physicians,
)
from outreach.review import LOG_FIELDS

Schema = dict[str, Any]

JSON = "application/json"
ERROR = {"$ref": "#/components/schemas/Error"}


def _nullable(schema: Schema) -> Schema:
    kind = schema["type"]
    return {**schema, "type": [*kind, "null"] if isinstance(kind, list) else [kind, "null"]}


TEXT: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
DATE: Schema = {"type": "string", "format": "date"}
MOMENT: Schema = {"type": "string", "format": "date-time", "description": "ISO 8601 with its UTC offset"}


def _column(column: Column[Any]) -> Schema:
    """A table column as the JSON the API gives it: dates and times as ISO 8601 text."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        schema = dict(MOMENT)
    elif isinstance(kind, Date):
        schema = dict(DATE)
    elif isinstance(kind, Boolean):
        schema = {"type": "boolean"}
    elif isinstance(kind, Integer):
        schema = dict(INTEGER)
    elif isinstance(kind, Float):
        schema = {"type": "number"}
    else:
        schema = dict(TEXT)
    return _nullable(schema) if column.nullable else schema


def _record(table: Table, leave_out: tuple[str, ...] = (), **extra: Schema) -> Schema:
    """A stored record: the table's columns (but ``leave_out``), and ``extra`` ones named as the API names them."""
    properties = {c.name: _column(c) for c in table.c if c.name not in leave_out}
    properties.update(extra)
    return {"type": "object", "required": list(properties), "properties": properties}


# What each field of a POST holds, in the import's terms (``outreach import --help``).
FIELD_NOTES = {
    "email": "the physician's address (the key: posting it again updates that physician)",
    "timezone": "IANA time zone, e.g. America/Chicago",
    "send_window": "e.g. Mon-Fri 08:00-17:00",
    "weekly_cap": "a whole number from 1 to 100",
    "ref": "the practice's reference for the client (the key: posting it again updates that client)",
    "physician_email": "the referring physician (already known)",
    "status": f"for a new client only: one of {', '.join(CLIENT_STATUSES)}",
    "kind": f"one of {', '.join(EVENT_KINDS)}",
    "occurred_at": "ISO 8601; without an offset, the practice's local time; a date alone is 09:00",
    "instrument": "an outcome measure's code or name, e.g. 6MWT",
    "score": "a number in the instrument's range",
    "measured_at": "YYYY-MM-DD",
    "referral_date": "YYYY-MM-DD, not in the future",
    "consent_date": "YYYY-MM-DD, not in the future",
    "consent_expires": "YYYY-MM-DD",
    "next_reassessment": "YYYY-MM-DD",
    "client_ref": "a known client's ref",
}
DATE_FIELDS = {"referral_date", "consent_date", "consent_expires", "next_reassessment", "measured_at"}


def _input(kind: str) -> Schema:
    """A POST body: the import's columns for ``kind``; text or numbers (numbers are read as their text)."""
    spec = SPECS[kind]
    properties: dict[str, Schema] = {}
    for name in spec.columns:
        field: Schema = {"type": ["string", "number", "null"]}
        if name in spec.required:
            field = {"type": ["string", "number"], "minLength": 1}
        if name in ("email", "physician_email"):
            field["format"] = "email"
        elif name in DATE_FIELDS and name in spec.required:
            field["format"] = "date"  # an optional one may be "" (none)
        note = FIELD_NOTES.get(name)
        if note:
            field["description"] = note
        properties[name] = field
    return {
        "type": "object",
        "required": list(spec.required),
        "properties": properties,
        "additionalProperties": False,
        "description": "null, or a field left out, leaves that value as it is on record (for a new record: empty)",
    }


LOG_ENTRY: dict[str, Schema] = {
    "id": INTEGER,
    "created_at": MOMENT,
    "sent_at": _nullable(MOMENT),
    "status": {"type": "string", "enum": list(MESSAGE_STATUSES)},
    "rule": TEXT,
    "template": TEXT,
    "to": TEXT,
    "subject": TEXT,
    "client_ref": _nullable(TEXT),
    "physician_email": _nullable(TEXT),
    "attempts": INTEGER,
    "last_error": _nullable(TEXT),
    "message_id": {"type": "string", "description": "this entry's own Message-ID"},
    "sent_message_id": {
        "type": ["string", "null"],
        "description": "the Message-ID that went out (a digest's, for an update carried in one)",
    },
    "priority": INTEGER,
    "next_attempt_at": _nullable(MOMENT),
    "smtp_response": _nullable(TEXT),
    "digest_id": _nullable(INTEGER),
    "redirected_to": {
        "type": ["string", "null"],
        "description": "staging: the addresses (comma-separated) the last attempt went to instead of `to`",
    },
}
assert tuple(LOG_ENTRY) == LOG_FIELDS, "the Message schema must name the log's fields"

DETAIL_EXTRA: dict[str, Schema] = {
    "recipient_name": TEXT,
    "client_name": _nullable(TEXT),
    "physician_name": _nullable(TEXT),
    "kind": {"type": "string", "description": "clinical, relationship or digest"},
    "reason": _nullable(TEXT),
    "not_before": _nullable(MOMENT),
    "html": TEXT,
    "text": TEXT,
    "trail": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["at", "event", "detail"],
            "properties": {"at": MOMENT, "event": TEXT, "detail": TEXT},
        },
    },
    "digest_members": {"type": "array", "items": INTEGER},
    "resent_as": {"type": "array", "items": INTEGER},
    "resent_from": _nullable(INTEGER),
    "body_removed_at": {
        **_nullable(MOMENT),
        "description": "when the retention setting removed the body (html and text are then empty)",
    },
    "body_sha256": {
        "type": ["string", "null"],
        "description": "SHA-256 (hex) of the removed body: UTF-8 html, a NUL byte, UTF-8 text",
    },
}


def _schemas() -> dict[str, Schema]:
    return {
        "Error": {
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "properties": {
                            "field": {
                                "type": "string",
                                "description": "the field or query parameter at fault ('' when none)",
                            },
                            "message": TEXT,
                        },
                    },
                }
            },
        },
        "PhysicianInput": _input("physicians"),
        "ClientInput": _input("clients"),
        "EventInput": _input("events"),
        "MeasureInput": _input("measures"),
        "Physician": _record(physicians),
        "Client": _record(clients, ("physician_id",), physician_email=TEXT),
        "Event": {
            "type": "object",
            "required": ["id", "client_ref", "kind", "occurred_at", "note", "created_at"],
            "properties": {
                "id": INTEGER,
                "client_ref": TEXT,
                "kind": {"type": "string", "enum": list(EVENT_KINDS)},
                "occurred_at": MOMENT,
                "note": TEXT,
                "created_at": MOMENT,
            },
        },
        "Measure": {
            "type": "object",
            "required": ["id", "client_ref", "instrument", "score", "measured_at", "created_at"],
            "properties": {
                "id": INTEGER,
                "client_ref": TEXT,
                "instrument": {"type": "string", "description": "the instrument's code"},
                "score": {"type": "number"},
                "measured_at": DATE,
                "created_at": MOMENT,
            },
        },
        "Message": {"type": "object", "required": list(LOG_FIELDS), "properties": LOG_ENTRY},
        "MessagePage": {
            "type": "object",
            "required": ["messages", "next"],
            "properties": {
                "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
                "next": {
                    "type": ["string", "null"],
                    "description": "pass as ?cursor= (with the same filters) for the older messages; null on the last page",
                },
            },
        },
        "MessageDetail": {
            "type": "object",
            "required": [*LOG_FIELDS, *DETAIL_EXTRA],
            "properties": {**LOG_ENTRY, **DETAIL_EXTRA},
        },
        "Loop": {
            "type": "object",
            "required": ["client_ref", "physician_email", "loop", "state", "due_at", "done_at", "detail"],
            "properties": {
                "client_ref": TEXT,
                "physician_email": TEXT,
                "loop": {"type": "string", "description": "the expected communication"},
                "state": {"type": "string", "enum": list(STATES)},
                "due_at": _nullable(MOMENT),
                "done_at": _nullable(MOMENT),
                "detail": TEXT,
                "message_id": _nullable(INTEGER),
            },
        },
        "Status": {
            "type": "object",
            "required": ["ok", "problems", "now", "last_heartbeat", "queue", "oldest_pending", "last_error"],
            "properties": {
                "ok": {"type": "boolean", "description": "false when a monitor should page someone"},
                "problems": {"type": "array", "items": TEXT},
                "now": MOMENT,
                "last_heartbeat": _nullable(MOMENT),
                "running": {"type": "array", "items": TEXT},
                "stale": {"type": "array", "items": TEXT},
                "queue": {
                    "type": "object",
                    "description": "messages in each status",
                    "properties": {status: INTEGER for status in MESSAGE_STATUSES},
                    "additionalProperties": INTEGER,
                },
                "oldest_pending": {
                    "type": ["object", "null"],
                    "required": ["id", "created_at", "next_attempt_at"],
                    "properties": {"id": INTEGER, "created_at": MOMENT, "next_attempt_at": _nullable(MOMENT)},
                },
                "last_error": _nullable(TEXT),
                "last_error_at": _nullable(MOMENT),
                "staging": {
                    "type": "array",
                    "items": TEXT,
                    "description": "staging addresses every email goes to instead of the physician; empty when off",
                },
            },
        },
    }


def _error(description: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": ERROR}}}


def _ok(description: str, schema: str) -> Schema:
    return {
        "description": description,
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


UNAUTHORIZED = _error("No valid API token (Authorization: Bearer TOKEN): missing, wrong, revoked or expired")


def _write(noun: str, schema: str, key: str) -> Schema:
    """A POST: one record, created or updated (201 or 200), or every problem with it (422)."""
    return {
        "post": {
            "summary": f"Create or update one {noun}",
            "description": (
                f"Checked exactly as a row of `outreach import {noun}s` is: the same fields, required "
                f"fields and rules. {key} Every call is audited under the token's name. Needs a staff token."
            ),
            "operationId": f"post_{noun}",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}Input"}}},
            },
            "responses": {
                "201": _ok(f"Created: the {noun} as stored", schema),
                "200": _ok(f"Already on record (updated, or unchanged): the {noun} as stored", schema),
                "401": UNAUTHORIZED,
                "403": _error("The token's role may only read (a viewer token)"),
                "413": _error("The request body is over 1 MB"),
                "422": _error(
                    "Not saved: the body is not a JSON object, or a field is unknown, missing or has a bad "
                    "value; each error names its field"
                ),
            },
        }
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _in_path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _read(summary: str, schema: str, operation: str, **extra: Any) -> Schema:
    responses = {"200": _ok(summary, schema), "401": UNAUTHORIZED}
    responses.update(extra.pop("responses", {}))
    return {"get": {"summary": summary, "operationId": operation, "responses": responses, **extra}}


def _version() -> str:
    try:
        return version("outreach")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0"


def document() -> Schema:
    """The OpenAPI 3.1 document of ``/api/v1``."""
    days = "a day (YYYY-MM-DD) in the practice's time zone"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "outreach API",
            "version": _version(),
            "description": (
                "The practice's records in (physicians, clients, milestones, outcome measures) and its "
                "message log, loops and health out. Every route needs a bearer token "
                "(`outreach token create NAME --role staff|viewer`); writes need a staff token. Times are "
                'ISO 8601 with their offset. Errors are `{"errors": [{"field", "message"}]}`.'
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/physicians": _write(
                "physician", "Physician", "Posting the same email updates that physician."
            ),
            "/api/v1/clients": _write(
                "client", "Client", "Posting the same ref updates that client (its status only when new)."
            ),
            "/api/v1/events": _write(
                "event", "Event", "The same client, kind and time again returns the event already on record."
            ),
            "/api/v1/measures": _write(
                "measure",
                "Measure",
                "A second score for the same client, instrument and day replaces the first.",
            ),
            "/api/v1/messages": _read(
                "The message log, newest first, a page at a time",
                "MessagePage",
                "list_messages",
                parameters=[
                    _query(
                        "status", {"type": "string", "enum": list(MESSAGE_STATUSES)}, "only in this state"
                    ),
                    _query("physician", {"type": "string", "format": "email"}, "only to this physician"),
                    _query("client", TEXT, "only about this client (ref)"),
                    _query("rule", TEXT, "only from this rule"),
                    _query("since", DATE, f"queued on or after {days}"),
                    _query("until", DATE, f"queued on or before {days}"),
                    _query("q", TEXT, "every word in the subject (case-insensitive)"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                        "messages in one page",
                    ),
                    _query("cursor", TEXT, "a page's `next`, for the page after it"),
                ],
                responses={"422": _error("A filter's value is not usable (the error names the parameter)")},
            ),
            "/api/v1/messages/{message_id}": _read(
                "One message whole: its parts, its trail, its links (the view is audited)",
                "MessageDetail",
                "get_message",
                parameters=[_in_path("message_id", {"type": "integer", "minimum": 1})],
                responses={"404": _error("No message with this id")},
            ),
            "/api/v1/loops": _read(
                "Each referral's expected updates: done, due, overdue or blocked (blocked first)",
                "Loops",
                "list_loops",
                parameters=[
                    _query("physician", {"type": "string"}, "only this physician's referrals (email)")
                ],
            ),
            "/api/v1/status": _read("Is the service alive and delivering?", "Status", "get_status"),
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "get_openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        },
                        "401": UNAUTHORIZED,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_schemas(),
                "Loops": {
                    "type": "object",
                    "required": ["loops"],
                    "properties": {
                        "loops": {"type": "array", "items": {"$ref": "#/components/schemas/Loop"}}
                    },
                },
            },
        },
    }
