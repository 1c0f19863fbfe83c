"""The console's loops, physicians and preview pages, on the demo practice (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from html.parser import HTMLParser

from markupsafe import escape
from sqlalchemy import select, update

from outreach import loops, planner, records, store
from outreach.models import FAILED, SENT, audit, clients, physicians
from tests.conftest import NOW
from tests.factories import queue_message

ALVAREZ = "m.alvarez@riverside-ortho.example.org"
CHEN = "j.chen@lakeside-sports.example.org"
NAIR = "p.nair@northgate-fm.example.org"
XSS = "<script>alert(1)</script>"


class Tables(HTMLParser):
    """The rows of a page's tables: each cell's text and links, and each row's class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr":
            self.rows.append({"class": found.get("class") or "", "cells": [], "links": []})
        elif tag in ("td", "th") and self.rows:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")
        elif tag == "a" and self.rows and self._cell is not None:
            self.rows[-1]["links"].append(found.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1]["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str, row_class: str = "") -> list[dict]:
    parser = Tables()
    parser.feed(html)
    return [row for row in parser.rows if row["cells"] and row["class"].startswith(row_class)]


def ids(engine) -> tuple[dict[str, int], dict[str, int]]:
    """Client ids by ref and physician ids by email."""
    with store.read(engine) as conn:
        people = dict(conn.execute(select(clients.c.ref, clients.c.id)).all())
        doctors = dict(conn.execute(select(physicians.c.email, physicians.c.id)).all())
    return people, doctors


def audited(engine, action: str) -> list[tuple[str, str, str]]:
    with store.read(engine) as conn:
        rows = conn.execute(
            select(audit.c.actor, audit.c.subject, audit.c.detail).where(audit.c.action == action)
        )
        return [tuple(row) for row in rows]


def clean(body: str) -> None:
    """What every page must be under the Content-Security-Policy: no inline script or style."""
    assert "<script" not in body
    assert " style=" not in body
    assert "<style" not in body


def physician_row(engine) -> object:
    with store.read(engine) as conn:
        return conn.execute(select(physicians).where(physicians.c.email == ALVAREZ)).one()


# --- loops ---------------------------------------------------------------------------


def test_loops_blocked_first_then_overdue_with_links_to_act(demo_console):
    people, doctors = ids(demo_console.engine)
    failed = queue_message(
        demo_console.engine, client_id=people["C-1007"], physician_id=doctors[CHEN],
        rule="initial_assessment_report", template="initial_assessment_report", status=FAILED,
        last_error="550 mailbox unavailable",
    )  # fmt: skip
    sent = queue_message(
        demo_console.engine, client_id=people["C-1005"], physician_id=doctors[CHEN],
        rule="referral_acknowledgement", template="referral_acknowledgement", status=SENT,
        sent_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    browser = demo_console.login("viewer")
    response = browser.get("/loops")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    clean(body)

    with store.read(demo_console.engine) as conn:
        expected = loops.open_loops(conn, demo_console.app.config["OUTREACH_SETTINGS"], NOW)
    shown = table_rows(body, "loop-")
    states = [row["class"].removeprefix("loop-") for row in shown]
    assert states == [lp.state for lp in expected]  # the library's order, done ones last
    assert states.index("overdue") > max(i for i, s in enumerate(states) if s == "blocked")
    assert states[0] == "blocked"

    by_detail = {(row["cells"][1], row["cells"][3]): row for row in shown}
    retry = by_detail[("Samuel Okafor C-1007", "initial assessment report")]
    assert f"/messages/{failed}" in retry["links"]
    assert f"Retry message {failed}" in retry["cells"][6]
    assert "failed delivery: 550 mailbox unavailable" in retry["cells"][5]
    consent = by_detail[("Grace Liu C-1008", "initial assessment report")]
    assert "/clients/C-1008#consent" in consent["links"]
    assert consent["cells"][6] == "Record consent"
    assert "/clients/C-1008" in consent["links"] and f"/physicians/{NAIR}" in str(consent["links"])
    # The one sent is done, folded away with a count.
    assert '<details class="done-loops">' in body and "Done (1)" in body
    done = by_detail[("Thomas Becker C-1005", "referral acknowledged")]
    assert done["class"] == "loop-done" and f"See message {sent}" in done["cells"][6]
    assert audited(demo_console.engine, "view loops") == [("viewer@practice.example", "all physicians", "")]


def test_loops_for_one_physician_and_an_unknown_one(demo_console):
    browser = demo_console.login("viewer")
    response = browser.get(f"/loops?physician={CHEN.upper()}")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    refs = {re.search(r"C-\d+", row["cells"][1]).group(0) for row in table_rows(body, "loop-")}
    assert refs == {"C-1002", "C-1005", "C-1007", "C-1009"}  # James Chen's clients with a loop
    assert f'<option value="{CHEN}" selected>James Chen</option>' in body

    response = browser.get("/loops?physician=nobody@example.org")
    assert response.status_code == 404
    assert "There is no physician with the email &#39;nobody@example.org&#39;." in response.get_data(
        as_text=True
    )
    assert ("viewer@practice.example", f"physician {CHEN}", "") in audited(demo_console.engine, "view loops")


# --- physicians ----------------------------------------------------------------------


def test_physicians_report_matches_the_summary(demo_console):
    people, doctors = ids(demo_console.engine)
    for ref, template, hours in (("C-1001", "progress_report", 30), ("C-1004", "progress_report", 5)):
        queue_message(
            demo_console.engine, client_id=people[ref], physician_id=doctors[ALVAREZ], template=template,
            status=SENT, sent_at=NOW - timedelta(hours=hours),
        )  # fmt: skip
    browser = demo_console.login("viewer")
    response = browser.get("/physicians")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    clean(body)
    with store.read(demo_console.engine) as conn:
        summary = loops.physician_summary(conn, demo_console.app.config["OUTREACH_SETTINGS"], NOW)
    shown = table_rows(body)[1:]  # under the header
    assert len(shown) == len(summary) == 3
    for row, expected in zip(shown, summary, strict=True):
        assert row["cells"][0] == f"{expected['physician']} {expected['email']}"
        assert row["links"] == [f"/physicians/{expected['email']}"]
        assert row["cells"][1] == str(expected["referrals_90d"])
        assert row["cells"][2] == str(expected["referrals_total"])
        assert row["cells"][3] == f"{expected['conversion_pct']} %"
        median = expected["median_days_to_first_report"]
        assert row["cells"][4] == ("no report yet" if median is None else f"{median:g}")
        assert row["cells"][5] == str(expected["emails_sent"])
        assert row["cells"][6] == (expected["last_contact"] or "never")
    alvarez = shown[[r["email"] for r in summary].index(ALVAREZ)]
    assert alvarez["cells"][5] == "2" and alvarez["cells"][6] == "2026-11-25 05:00"  # local time
    assert audited(demo_console.engine, "view physicians") == [
        ("viewer@practice.example", "all physicians", "")
    ]


def test_a_physicians_page_lists_their_clients_and_newest_messages(demo_console):
    people, doctors = ids(demo_console.engine)
    made = [
        queue_message(
            demo_console.engine,
            client_id=people["C-1001"],
            physician_id=doctors[ALVAREZ],
            subject=f"Update {n}",
            created_at=NOW - timedelta(days=30 - n),
            recipient=ALVAREZ,
        )
        for n in range(22)
    ]
    queue_message(demo_console.engine, physician_id=doctors[CHEN], subject="For someone else")
    browser = demo_console.login("viewer")
    response = browser.get(f"/physicians/{ALVAREZ}")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    clean(body)
    assert "<h1>Maria Alvarez, MD</h1>" in body
    for shown in (
        "Riverside Orthopaedics",
        "Orthopaedic Surgery",
        "555-0101",
        "555-0102",
        "America/New_York",
    ):
        assert shown in body
    assert "the practice's (Mon-Fri 08:00-17:00)" in body and "the practice's (3)" in body

    listed = table_rows(body)
    client_rows = [row for row in listed if row["links"] and row["links"][0].startswith("/clients/")]
    assert [row["links"][0] for row in client_rows][:3] == [
        "/clients/C-1004",
        "/clients/C-1001",
        "/clients/C-1003",
    ]
    assert "/clients/C-1002" not in body  # James Chen's

    message_rows = [row for row in listed if any("/messages/" in link for link in row["links"])]
    assert [row["links"][0] for row in message_rows] == [f"/messages/{i}" for i in reversed(made)][:20]
    assert message_rows[0]["cells"][3] == "Update 21" and "For someone else" not in body
    assert message_rows[0]["cells"][0] == (NOW - timedelta(days=9)).strftime("%Y-%m-%d 10:00")
    log_link = re.search(r'<a href="(/\?physician=[^"]+)">All messages to Maria Alvarez in the log</a>', body)
    assert log_link and log_link.group(1).replace("%40", "@") == f"/?physician={ALVAREZ}"
    assert audited(demo_console.engine, "view physician") == [
        ("viewer@practice.example", f"physician {ALVAREZ}", "")
    ]


def test_an_unknown_physician_is_404(demo_console):
    browser = demo_console.login("viewer")
    response = browser.get("/physicians/nobody@example.org")
    assert response.status_code == 404
    assert "There is no physician with the email" in response.get_data(as_text=True)
    assert audited(demo_console.engine, "view physician") == []


def test_staff_opt_a_physician_out_and_back_in(demo_console):
    browser = demo_console.login("staff")
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert "Opt out of non-clinical mail</button>" in page and "Resume non-clinical mail" not in page

    response = browser.post(f"/physicians/{ALVAREZ}/opt-out")
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/physicians/{ALVAREZ}")
    assert physician_row(demo_console.engine).opted_out_on == date(2026, 11, 25)  # the practice's day
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert '<p class="notice">Opted out of non-clinical mail from 2026-11-25' in page
    assert "Resume non-clinical mail</button>" in page and "Opt out of non-clinical mail</button>" not in page

    response = browser.post(f"/physicians/{ALVAREZ}/opt-in")
    assert response.status_code == 302
    assert physician_row(demo_console.engine).opted_out_on is None
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert '<p class="notice">Non-clinical mail resumed.</p>' in page
    assert "Opt out of non-clinical mail</button>" in page
    assert audited(demo_console.engine, "opt out") == [
        ("staff@practice.example", f"physician {ALVAREZ}", "from 2026-11-25")
    ]
    assert audited(demo_console.engine, "opt in") == [("staff@practice.example", f"physician {ALVAREZ}", "")]


def test_a_viewer_sees_no_toggle_and_is_refused(demo_console):
    browser = demo_console.login("viewer")
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert "receives it" in page
    assert f'action="/physicians/{ALVAREZ}/opt-out"' not in page
    assert "<button" not in page.split("<main>", 1)[1]  # not one action for a viewer
    for action in ("opt-out", "opt-in", "deliverable"):
        assert browser.post(f"/physicians/{ALVAREZ}/{action}").status_code == 403
    assert physician_row(demo_console.engine).opted_out_on is None
    assert audited(demo_console.engine, "opt out") == []


def test_a_post_without_the_csrf_token_is_refused(demo_console):
    browser = demo_console.login("staff")
    browser.get(f"/physicians/{ALVAREZ}")
    response = browser.client.post(f"/physicians/{ALVAREZ}/opt-out", data={})
    assert response.status_code == 400
    response = browser.client.post(f"/physicians/{ALVAREZ}/opt-out", data={"csrf": "forged"})
    assert response.status_code == 400
    assert physician_row(demo_console.engine).opted_out_on is None


def test_staff_clear_an_undeliverable_mark(demo_console):
    with store.write(demo_console.engine) as conn:
        conn.execute(
            update(physicians)
            .where(physicians.c.email == ALVAREZ)
            .values(undeliverable_on=date(2026, 11, 20), undeliverable_reason="550 5.1.1 no such user")
        )
    viewer = demo_console.login("viewer").get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert "refused the address on 2026-11-20: 550 5.1.1 no such user" in viewer
    assert "Clear the undeliverable mark" not in viewer

    browser = demo_console.login("staff")
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert "Clear the undeliverable mark</button>" in page
    response = browser.post(f"/physicians/{ALVAREZ}/deliverable")
    assert response.status_code == 302
    doctor = physician_row(demo_console.engine)
    assert doctor.undeliverable_on is None and doctor.undeliverable_reason is None
    page = browser.get(f"/physicians/{ALVAREZ}").get_data(as_text=True)
    assert '<p class="notice">Marked deliverable again' in page and 'id="undeliverable"' not in page
    assert audited(demo_console.engine, "deliverable") == [
        ("staff@practice.example", f"physician {ALVAREZ}", "undeliverable mark cleared")
    ]


def test_a_physicians_name_and_clinic_show_literally(demo_console):
    with store.write(demo_console.engine) as conn:
        records.save_physician(
            conn,
            {"email": "odd@clinic.example.org", "name": XSS, "clinic": XSS, "credentials": "{{ 7*7 }}"},
            NOW,
        )
    browser = demo_console.login("viewer")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for url in ("/physicians/odd@clinic.example.org", "/physicians", "/loops"):
        body = browser.get(url).get_data(as_text=True)
        clean(body)
        assert escaped in body, url
    page = browser.get("/physicians/odd@clinic.example.org").get_data(as_text=True)
    assert f"<h1>{escaped}, {{{{ 7*7 }}}}</h1>" in page and "49" not in page.split("<h1>", 1)[1][:60]
    assert page.count(escaped) >= 3  # heading, clinic, and the words about their clients and messages


# --- preview -------------------------------------------------------------------------


def test_preview_renders_a_rule_for_a_client_in_a_sandboxed_frame(demo_console):
    settings = demo_console.app.config["OUTREACH_SETTINGS"]
    expected = planner.preview_rule(demo_console.engine, settings, "initial_assessment_report", "C-1001", NOW)
    browser = demo_console.login("viewer")
    form = browser.get("/preview")
    assert form.status_code == 200
    assert '<option value="initial_assessment_report">' in form.get_data(as_text=True)
    assert audited(demo_console.engine, "view preview") == []  # the empty form shows no one

    response = browser.get("/preview?rule=initial_assessment_report&client=C-1001")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    clean(body)
    assert '<option value="initial_assessment_report" selected>' in body
    assert f'<dd class="preview-subject">{expected.subject}</dd>' in body
    assert "C-1001" in expected.text and f'<pre class="text">{escape(expected.text)}</pre>' in body
    frame = re.search(r'<iframe class="email" sandbox src="([^"]*)" title="[^"]+"></iframe>', body)
    assert frame, "the HTML part in a sandboxed frame"
    assert "allow-scripts" not in body
    html = browser.get(frame.group(1).replace("&amp;", "&"))
    assert html.status_code == 200 and html.get_data(as_text=True) == expected.html
    policy = html.headers["Content-Security-Policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "script" not in policy
    assert audited(demo_console.engine, "view preview") == [
        ("viewer@practice.example", "client C-1001", "rule initial_assessment_report")
    ]


def test_preview_says_what_is_wrong_inline(demo_console):
    browser = demo_console.login("viewer")
    for query, message in (
        ("rule=no_such_rule&client=C-1001", "no rule named &#39;no_such_rule&#39;"),
        ("rule=initial_assessment_report&client=C-9999", "no client with ref &#39;C-9999&#39;"),
        ("rule=discharge_summary&client=C-1001", "client C-1001 has no discharged event to report on"),
        ("rule=initial_assessment_report&client=", "Name the client to render it for"),
        ("rule=&client=C-1001", "Choose a rule to preview."),
    ):
        response = browser.get(f"/preview?{query}")
        body = response.get_data(as_text=True)
        assert response.status_code == 422, query
        assert re.search(r'<p class="error">[^<]*' + re.escape(message), body), body
        assert "<iframe" not in body
    assert 'value="C-1001"' in body  # what was typed stays in the form
    assert audited(demo_console.engine, "view preview") == []
