"""The JSON API under /api/v1: the import's checks one record at a time, the log paged, the document true.

Real app (Flask test client), real database (SQLite, and PostgreSQL when
``OUTREACH_TEST_POSTGRES_URL`` is set), real tokens.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from outreach import accounts, store
from outreach.loops import format_loops, open_loops
from outreach.models import FAILED, SENT, audit, clients, events, measurements, physicians
from tests.conftest import NOW
from tests.factories import queue_message

OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")

DOCTOR = {
    "email": "a.rivera@lakeside.example.org",
    "name": "Ana Rivera",
    "credentials": "MD",
    "weekly_cap": 3,
}
CLIENT = {
    "ref": "C-77",
    "first_name": "Sam",
    "last_name": "Okafor",
    "physician_email": DOCTOR["email"],
    "referral_date": "2026-11-20",
    "diagnosis": "Knee replacement, left",
}
EVENT = {"client_ref": "C-77", "kind": "referral_received", "occurred_at": "2026-11-20T09:30", "note": "fax"}
MEASURE = {"client_ref": "C-77", "instrument": "6MWT", "score": 310, "measured_at": "2026-11-24"}


def count(engine, table, *where) -> int:
    with store.read(engine) as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def audit_rows(engine, action: str) -> list:
    with store.read(engine) as conn:
        return conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)).all()


@pytest.fixture
def api(console):
    """The test client and a staff token's headers (the token is named ``ehr-bridge``)."""
    return console.app.test_client(), console.token("staff", "ehr-bridge")


def seed(client, headers) -> None:
    for path, body in (("physicians", DOCTOR), ("clients", CLIENT)):
        assert client.post(f"/api/v1/{path}", json=body, headers=headers).status_code == 201


# --- writes: created, then the same again ---------------------------------------------


def test_a_physician_is_created_then_updated_by_email_never_twice(api, console):
    client, headers = api
    created = client.post("/api/v1/physicians", json=DOCTOR, headers=headers)
    assert created.status_code == 201, created.get_json()
    record = created.get_json()
    assert record["id"] > 0 and record["email"] == DOCTOR["email"] and record["weekly_cap"] == 3
    assert OFFSET.match(record["created_at"]) and record["timezone"] is None

    again = client.post("/api/v1/physicians", json=DOCTOR, headers=headers)
    assert again.status_code == 200 and again.get_json() == record

    renamed = client.post(
        "/api/v1/physicians",
        json={**DOCTOR, "email": DOCTOR["email"].upper(), "name": "Ana Rivera-Lu"},
        headers=headers,
    )
    assert renamed.status_code == 200
    assert renamed.get_json()["id"] == record["id"] and renamed.get_json()["name"] == "Ana Rivera-Lu"
    assert count(console.engine, physicians) == 1


def test_a_client_is_created_then_updated_by_ref(api, console):
    client, headers = api
    seed(client, headers)
    first = client.post("/api/v1/clients", json=CLIENT, headers=headers)
    assert first.status_code == 200, "posted once by seed(): this is the same client again"
    record = first.get_json()
    assert record["physician_email"] == DOCTOR["email"] and "physician_id" not in record
    assert record["referral_date"] == "2026-11-20" and record["status"] == "referred"

    changed = client.post("/api/v1/clients", json={**CLIENT, "goals": "stairs unaided"}, headers=headers)
    assert changed.status_code == 200 and changed.get_json()["goals"] == "stairs unaided"
    assert changed.get_json()["id"] == record["id"]
    assert count(console.engine, clients) == 1


def test_an_event_posted_twice_is_one_event(api, console):
    client, headers = api
    seed(client, headers)
    created = client.post("/api/v1/events", json=EVENT, headers=headers)
    assert created.status_code == 201, created.get_json()
    record = created.get_json()
    # 09:30 with no offset is the practice's local time (New York, UTC-5 in November).
    assert record["occurred_at"] == "2026-11-20T14:30:00+00:00" and record["client_ref"] == "C-77"

    again = client.post("/api/v1/events", json={**EVENT, "note": "a different note"}, headers=headers)
    assert again.status_code == 200 and again.get_json() == record
    assert count(console.engine, events) == 1

    assessed = {**EVENT, "kind": "initial_assessment", "occurred_at": "2026-11-24"}
    assert client.post("/api/v1/events", json=assessed, headers=headers).status_code == 201
    assert client.post("/api/v1/clients", json=CLIENT, headers=headers).get_json()["status"] == "active"


def test_a_measure_posted_twice_is_one_measure_and_a_new_score_replaces_it(api, console):
    client, headers = api
    seed(client, headers)
    created = client.post("/api/v1/measures", json=MEASURE, headers=headers)
    assert created.status_code == 201, created.get_json()
    record = created.get_json()
    assert record == {**record, "instrument": "6MWT", "score": 310, "measured_at": "2026-11-24"}

    assert client.post("/api/v1/measures", json=MEASURE, headers=headers).get_json() == record
    rescored = client.post("/api/v1/measures", json={**MEASURE, "score": "325.5"}, headers=headers)
    assert rescored.status_code == 200 and rescored.get_json()["score"] == 325.5
    assert rescored.get_json()["id"] == record["id"]
    assert count(console.engine, measurements) == 1


# --- writes refused: 422 naming the field, nothing saved ------------------------------

BAD = [
    ("physicians", {**DOCTOR, "email": "not an address"}, "email"),
    ("physicians", {"email": DOCTOR["email"]}, "name"),
    ("physicians", {**DOCTOR, "name": "   "}, "name"),
    ("physicians", {**DOCTOR, "nickname": "Ana"}, "nickname"),
    ("physicians", {**DOCTOR, "weekly_cap": 0}, "weekly_cap"),
    ("physicians", {**DOCTOR, "weekly_cap": True}, "weekly_cap"),
    ("physicians", {**DOCTOR, "timezone": "Mars/Olympus"}, "timezone"),
    ("physicians", {**DOCTOR, "name": "Ana\x00"}, "name"),
    ("clients", {**CLIENT, "ref": "C-78", "physician_email": "nobody@else.example.org"}, "physician_email"),
    ("clients", {**CLIENT, "ref": "C-78", "referral_date": "2026-12-25"}, "referral_date"),
    ("clients", {**CLIENT, "ref": "C-78", "status": "asleep"}, "status"),
    ("clients", {**CLIENT, "ref": "C-78", "diagnosis": ["a", "list"]}, "diagnosis"),
    ("events", {**EVENT, "kind": "birthday"}, "kind"),
    ("events", {**EVENT, "occurred_at": "2026-11-26T12:00"}, "occurred_at"),
    ("events", {**EVENT, "occurred_at": "yesterday"}, "occurred_at"),
    ("events", {**EVENT, "client_ref": "C-404"}, "client_ref"),
    ("events", {**EVENT, "note": "x" * 70_000}, "note"),
    ("events", {"kind": "referral_received", "occurred_at": "2026-11-20"}, "client_ref"),
    ("measures", {**MEASURE, "score": -5}, "score"),
    ("measures", {**MEASURE, "score": "fast"}, "score"),
    ("measures", {**MEASURE, "instrument": "vibes"}, "instrument"),
    ("measures", {**MEASURE, "measured_at": "2026-12-01"}, "measured_at"),
    ("measures", {**MEASURE, "measured_at": "24/11/2026"}, "measured_at"),
]


def test_each_bad_value_is_a_422_naming_its_field_and_saves_nothing(api, console):
    client, headers = api
    seed(client, headers)
    before = {t.name: count(console.engine, t) for t in (physicians, clients, events, measurements)}
    for path, body, field in BAD:
        response = client.post(f"/api/v1/{path}", json=body, headers=headers)
        assert response.status_code == 422, (path, body, response.get_json())
        found = response.get_json()["errors"]
        assert field in [e["field"] for e in found], (path, body, found)
        assert all(e["message"] for e in found)
    after = {t.name: count(console.engine, t) for t in (physicians, clients, events, measurements)}
    assert after == before


def test_a_body_that_is_not_one_json_object_of_known_fields_is_a_422(api):
    client, headers = api
    typed = {**headers, "Content-Type": "application/json"}
    for data in (b"email=a@b.org&name=X", b"", b"[1, 2]", b'"text"', b"{", b'{"score": NaN}', b"\xff\xfe{"):
        response = client.post("/api/v1/physicians", data=data, headers=typed)
        assert response.status_code == 422, data
        (error,) = response.get_json()["errors"]
        assert error["field"] == "body" and "JSON object" in error["message"], data
    infinite = client.post(
        "/api/v1/physicians", data=b'{"email": "a@b.org", "name": "A", "weekly_cap": 1e999}', headers=typed
    )
    assert infinite.status_code == 422 and infinite.get_json()["errors"][0]["field"] == "weekly_cap"
    # Every field missing or unknown is named at once.
    response = client.post("/api/v1/events", json={"client": "C-77", "when": "today"}, headers=headers)
    assert response.status_code == 422
    named = {e["field"] for e in response.get_json()["errors"]}
    assert named == {"client", "when", "client_ref", "kind", "occurred_at"}


# --- who may: 401, 403, 413 -----------------------------------------------------------


def test_without_a_valid_token_every_route_is_a_401(console):
    client = console.app.test_client()
    value = console.token("staff", "old-bridge")["Authorization"]
    accounts.revoke_token(console.engine, "old-bridge", NOW, actor="test")
    refused = [
        {},
        {"Authorization": "Bearer otk_wrong"},
        {"Authorization": value},
        {"Authorization": "Basic eDp5"},
    ]
    for path in ("/api/v1/messages", "/api/v1/status", "/api/v1/openapi.json", "/api/v1/loops"):
        for wrong in refused:
            response = client.get(path, headers=wrong)
            assert response.status_code == 401, (path, wrong)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.get_json()["errors"][0]["message"]
    for wrong in refused:
        assert client.post("/api/v1/physicians", json=DOCTOR, headers=wrong).status_code == 401
    assert count(console.engine, physicians) == 0


def test_a_viewer_token_reads_but_may_not_write(console):
    client, viewer = console.app.test_client(), console.token("viewer")
    assert client.get("/api/v1/messages", headers=viewer).status_code == 200
    for path, body in (("physicians", DOCTOR), ("clients", CLIENT), ("events", EVENT), ("measures", MEASURE)):
        response = client.post(f"/api/v1/{path}", json=body, headers=viewer)
        assert response.status_code == 403
        assert response.get_json()["errors"] == [{"field": "role", "message": "this needs the staff role"}]
    assert count(console.engine, physicians) == 0


def test_a_body_over_1_mb_is_a_413_in_json(api, console):
    client, headers = api
    body = json.dumps({**DOCTOR, "clinic": "x" * (1100 * 1024)})
    response = client.post(
        "/api/v1/physicians", data=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert response.get_json() == {"errors": [{"field": "", "message": "the request body is over 1 MB"}]}
    assert count(console.engine, physicians) == 0


def test_every_write_is_audited_under_the_token_with_the_address(api, console):
    client, headers = api
    seed(client, headers)
    client.post("/api/v1/events", json=EVENT, headers=headers)
    client.post("/api/v1/events", json=EVENT, headers=headers)
    client.post("/api/v1/measures", json=MEASURE, headers=headers)
    client.post("/api/v1/measures", json={**MEASURE, "score": "bad"}, headers=headers)  # refused: not audited
    for action, subject, lines in (
        ("physician", f"physician {DOCTOR['email']}", 1),
        ("client", "client C-77", 1),
        ("event", "client C-77", 2),
        ("measure", "client C-77", 1),
    ):
        rows = audit_rows(console.engine, action)
        assert len(rows) == lines, action
        for row in rows:
            assert (row.actor, row.address, row.subject) == ("token:ehr-bridge", "127.0.0.1", subject)
    created, unchanged = audit_rows(console.engine, "event")
    assert created.detail.startswith("created: referral_received at 2026-11-20T14:30")
    assert unchanged.detail.startswith("unchanged:")


# --- the log ----------------------------------------------------------------------------


@pytest.fixture
def log(api, console):
    """Seven messages over three days (two queued in the same microsecond), about C-77 or no one."""
    client, headers = api
    seed(client, headers)
    with store.read(console.engine) as conn:
        pid = conn.execute(select(physicians.c.id)).scalar_one()
        cid = conn.execute(select(clients.c.id)).scalar_one()
    about = {"client_id": cid, "physician_id": pid, "recipient": DOCTOR["email"]}
    ids = {
        "old": queue_message(console.engine, created_at=NOW - timedelta(days=2), subject="Referral received"),
        "a": queue_message(
            console.engine, created_at=NOW - timedelta(days=1), **about, rule="ack", subject="Thanks"
        ),
        "b": queue_message(
            console.engine, created_at=NOW - timedelta(days=1), **about, status=FAILED, subject="Assessed"
        ),
        "c": queue_message(console.engine, created_at=NOW - timedelta(hours=3), subject="Discharge summary"),
        "d": queue_message(
            console.engine,
            created_at=NOW - timedelta(hours=2),
            **about,
            status=SENT,
            sent_at=NOW,
            rule="ack",
            subject="Seen",
        ),
        "e": queue_message(
            console.engine, created_at=NOW - timedelta(hours=1), subject="Progress report: week 4"
        ),
        "f": queue_message(console.engine, created_at=NOW, subject="progress REPORT: week 8"),
    }
    return client, headers, ids


def page_ids(client, headers, query: str) -> list[int]:
    response = client.get(f"/api/v1/messages?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [m["id"] for m in response.get_json()["messages"]]


def test_the_log_pages_back_by_cursor_without_gaps_or_repeats(log):
    client, headers, ids = log
    # Newest first; "a" and "b" were queued at the same moment: the later id first.
    newest_first = [ids[name] for name in ("f", "e", "d", "c", "b", "a", "old")]
    seen: list[int] = []
    url, pages = "/api/v1/messages?limit=2", 0
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200
        page = response.get_json()
        assert len(page["messages"]) <= 2
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        url = f"/api/v1/messages?limit=2&cursor={page['next']}" if page["next"] else ""
    assert pages == 4 and seen == newest_first and len(set(seen)) == len(ids)

    first = client.get("/api/v1/messages", headers=headers).get_json()
    assert first["next"] is None and len(first["messages"]) == len(ids)
    assert [m["id"] for m in first["messages"]] == newest_first


def test_the_log_filters(log):
    from outreach.review import LOG_FIELDS

    client, headers, ids = log
    (entry,) = client.get("/api/v1/messages?status=sent", headers=headers).get_json()["messages"]
    assert set(entry) == set(LOG_FIELDS)  # the fields of ``outreach log --format json``
    assert (
        entry["id"] == ids["d"]
        and entry["client_ref"] == "C-77"
        and entry["physician_email"] == DOCTOR["email"]
    )
    assert OFFSET.match(entry["sent_at"]) and OFFSET.match(entry["created_at"])
    assert page_ids(client, headers, "status=failed") == [ids["b"]]
    assert set(page_ids(client, headers, f"physician={DOCTOR['email'].upper()}")) == {
        ids["a"],
        ids["b"],
        ids["d"],
    }
    assert set(page_ids(client, headers, "client=C-77&rule=ack")) == {ids["a"], ids["d"]}
    assert page_ids(client, headers, "q=progress+report") == [ids["f"], ids["e"]]
    assert page_ids(client, headers, "q=week+8") == [ids["f"]]
    # Days in New York: NOW is 10:00 on the 25th there; "old" was queued on the 23rd.
    assert page_ids(client, headers, "until=2026-11-23") == [ids["old"]]
    assert set(page_ids(client, headers, "since=2026-11-24&until=2026-11-24")) == {ids["a"], ids["b"]}
    assert len(page_ids(client, headers, "since=2026-11-25")) == 4


def test_a_bad_filter_is_a_422_naming_the_parameter(log):
    client, headers, _ = log
    for query, field in (
        ("status=lost", "status"),
        ("physician=nobody@else.example.org", "physician"),
        ("client=C-404", "client"),
        ("since=2026-02-30", "since"),
        ("since=1899-12-31", "since"),
        ("until=9999-12-31", "until"),
        ("until=tomorrow", "until"),
        ("cursor=not-a-cursor", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("q=%00", "q"),
    ):
        response = client.get(f"/api/v1/messages?{query}", headers=headers)
        assert response.status_code == 422, query
        assert [e["field"] for e in response.get_json()["errors"]] == [field], query


def test_one_message_whole_and_its_view_audited(log, console):
    client, headers, ids = log
    response = client.get(f"/api/v1/messages/{ids['d']}", headers=headers)
    assert response.status_code == 200
    found = response.get_json()
    assert found["id"] == ids["d"] and found["status"] == SENT and found["client_name"] == "Sam Okafor"
    assert found["html"].startswith("<html>") and found["text"].startswith("Report")
    assert found["trail"][0]["event"] == "queued" and OFFSET.match(found["trail"][0]["at"])
    (seen,) = audit_rows(console.engine, "view message")
    assert (seen.actor, seen.subject, seen.address) == (
        "token:ehr-bridge",
        f"message {ids['d']}",
        "127.0.0.1",
    )

    for missing in (ids["f"] + 100, 2**40):
        response = client.get(f"/api/v1/messages/{missing}", headers=headers)
        assert response.status_code == 404 and response.get_json()["errors"][0]["message"].startswith(
            "no message"
        )


# --- loops, status, the document ---------------------------------------------------------


def test_loops_are_the_cli_json_objects(demo_console, settings):
    client, headers = demo_console.app.test_client(), demo_console.token("viewer")
    response = client.get("/api/v1/loops", headers=headers)
    assert response.status_code == 200
    with store.read(demo_console.engine) as conn:
        expected = json.loads(format_loops(open_loops(conn, settings, NOW), "json"))
    assert response.get_json()["loops"] == expected and expected
    doctor = expected[0]["physician_email"]
    mine = client.get(f"/api/v1/loops?physician={doctor}", headers=headers).get_json()["loops"]
    assert mine == [loop for loop in expected if loop["physician_email"] == doctor]


def test_status_says_whether_the_service_is_alive(log, console):
    client, headers, _ = log
    found = client.get("/api/v1/status", headers=headers).get_json()
    assert found["ok"] is False and found["problems"] == ["the service has never run (no heartbeat)"]
    assert found["queue"]["pending"] == 5 and found["queue"]["failed"] == 1 and found["queue"]["sent"] == 1
    assert found["last_heartbeat"] is None and OFFSET.match(found["now"])
    assert found["oldest_pending"]["created_at"] == "2026-11-23T15:00:00+00:00"


def test_no_secret_is_served(log, console):
    client, headers, ids = log
    bearer = headers["Authorization"].split()[1]
    for path in (
        "/api/v1/messages",
        f"/api/v1/messages/{ids['a']}",
        "/api/v1/status",
        "/api/v1/openapi.json",
    ):
        text = client.get(path, headers=headers).get_data(as_text=True)
        assert (
            bearer not in text
            and "argon2" not in text
            and "password_hash" not in text
            and "token_hash" not in text
        )


def test_the_document_describes_every_route(api, console):
    client, headers = api
    document = client.get("/api/v1/openapi.json", headers=headers).get_json()
    assert document["openapi"].startswith("3.1")
    routes = {
        (rule.rule.replace("<int:message_id>", "{message_id}"), method.lower())
        for rule in console.app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == described
    for path, method in described:
        responses = document["paths"][path][method]["responses"]
        assert "401" in responses
        if method == "post":
            assert {"201", "200", "403", "413", "422"} <= set(responses)
    schema = document["components"]["schemas"]["EventInput"]
    assert (
        schema["required"] == ["client_ref", "kind", "occurred_at"]
        and schema["additionalProperties"] is False
    )
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


# --- the document against the API: schemathesis ------------------------------------------


@pytest.mark.slow
def test_the_api_keeps_to_its_document(demo_console):
    """Every operation, with records that save and generated requests valid and not: documented codes and shapes, no 500."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    headers = demo_console.token("staff", "schemathesis")
    message_id = queue_message(demo_console.engine, created_at=NOW - timedelta(hours=1))
    with store.read(demo_console.engine) as conn:
        ref, email = conn.execute(
            select(clients.c.ref, physicians.c.email).join(physicians).order_by(clients.c.ref)
        ).first()
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", demo_console.app, headers=headers)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    assert set(operations) >= {
        "POST /api/v1/physicians",
        "GET /api/v1/messages",
        "GET /api/v1/messages/{message_id}",
        "GET /api/v1/loops",
        "GET /api/v1/status",
    }
    seen: set[tuple[str, int]] = set()

    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        seen.add((case.operation.label, response.status_code))
        case.validate_response(response, checks=checks, headers=headers)

    # Records that save (201), then the same again (200): their shapes are the document's.
    saved = {
        "physicians": {**DOCTOR, "timezone": "America/Chicago", "send_window": "Mon-Fri 08:00-17:00"},
        "clients": {
            **CLIENT,
            "physician_email": email,
            "consent_date": "2026-11-20",
            "next_reassessment": None,
        },
        "events": {**EVENT, "client_ref": ref},
        "measures": {**MEASURE, "client_ref": ref},
    }
    for kind, body in saved.items():
        for _ in range(2):
            check(operations[f"POST /api/v1/{kind}"].Case(body=body, media_type="application/json"))
    check(operations["GET /api/v1/messages/{message_id}"].Case(path_parameters={"message_id": message_id}))
    check(operations["GET /api/v1/messages"].Case(query={"limit": 1}))

    for operation in operations.values():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=8,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case: schemathesis.Case) -> None:
                check(case)

            conforms()
    assert {(f"POST /api/v1/{kind}", code) for kind in saved for code in (200, 201)} <= seen
    assert {("GET /api/v1/messages/{message_id}", 200), ("GET /api/v1/messages", 200)} <= seen
    assert any(code == 422 for _, code in seen) and any(code == 404 for _, code in seen)
