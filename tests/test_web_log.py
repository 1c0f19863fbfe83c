"""The log page and a message's page: filters, counts, keyset pages, CSV, the email framed, and
retry, cancel and resend from the console (and ``records.resend`` beneath them).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from outreach import accounts, records, review, store
from outreach.backends.base import Backend
from outreach.dispatcher import Dispatcher
from outreach.errors import NotFound, OutreachError
from outreach.models import CANCELLED, FAILED, PENDING, SENT, SUPPRESSED, audit, clients, messages, physicians
from outreach.review import LogQuery, count_by_status, cursor_of, find_messages, message_detail
from outreach.web import log as log_view
from outreach.web.security import EMAIL_POLICY
from tests.conftest import NOW
from tests.factories import message, queue_message, trail

SMITH = "a.smith@clinic.example.org"
JONES = "b.jones@clinic.example.org"
XSS = "<script>alert(1)</script>"
SSTI = "{{ 7*7 }}"


@pytest.fixture(autouse=True)
def quick_passwords(monkeypatch):
    """Logins here hash cheaply: these tests are about the pages, not argon2's cost (0.3 s a login)."""
    from argon2 import PasswordHasher

    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def practice(engine) -> dict[str, int]:
    """Two physicians and a client of each (both consenting); their ids by email and ref."""
    with store.write(engine) as conn:
        records.save_physician(conn, {"email": SMITH, "name": "Anna Smith"}, NOW)
        records.save_physician(conn, {"email": JONES, "name": "Ben Jones"}, NOW)
        ids = dict(conn.execute(select(physicians.c.email, physicians.c.id)).all())
        for ref, doctor in (("C-1", SMITH), ("C-2", JONES)):
            client = {
                "ref": ref,
                "first_name": "Jordan",
                "last_name": f"Davis{ref}",
                "physician_id": ids[doctor],
            }
            records.save_client(conn, {**client, "status": "active", "consent_date": NOW.date()}, NOW)
        ids.update(conn.execute(select(clients.c.ref, clients.c.id)).all())
    return ids


def to(ids: dict[str, int], doctor: str, ref: str | None = None, **overrides) -> dict:
    """A message's columns for a physician (and a client of theirs)."""
    values = {"physician_id": ids[doctor], "recipient": doctor, "recipient_name": doctor.split("@")[0]}
    if ref:
        values["client_id"] = ids[ref]
    return {**values, **overrides}


def audit_lines(engine, action: str) -> list[tuple[str, str, str, str | None]]:
    with store.read(engine) as conn:
        rows = conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)).all()
    return [(row.actor, row.subject, row.detail, row.address) for row in rows]


def ids_on(page: str) -> list[int]:
    """The messages a log page lists, in order (each row links its subject to the message)."""
    return [int(i) for i in re.findall(r'<td><a href="/messages/(\d+)">', page)]


def status_of(engine, message_id: int) -> str:
    return message(engine, message_id).status


# --- the query beneath the page ----------------------------------------------------------


@pytest.fixture
def logged(engine):
    """Messages that differ in one thing each, a minute apart (newest last)."""
    ids = practice(engine)
    at = [NOW - timedelta(days=3, minutes=10 - i) for i in range(7)]
    made = {
        "smith_sent": queue_message(engine, **to(ids, SMITH, "C-1", status=SENT, created_at=at[0])),
        "smith_failed": queue_message(
            engine, **to(ids, SMITH, "C-1", status=FAILED, last_error="550 no", created_at=at[1])
        ),
        "jones_pending": queue_message(engine, **to(ids, JONES, "C-2", created_at=at[2], rule="discharge")),
        "jones_nobody": queue_message(
            engine, **to(ids, JONES, created_at=at[3], subject="Thank you, Dr Jones")
        ),
        "old": queue_message(engine, **to(ids, SMITH, "C-1", created_at=NOW - timedelta(days=40))),
        "knee": queue_message(
            engine, **to(ids, SMITH, "C-1", created_at=at[4], subject="Knee REPLACEMENT: 50% better_ok")
        ),
        "today": queue_message(engine, **to(ids, JONES, "C-2", created_at=NOW, status=SUPPRESSED)),
    }
    return engine, made


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["today", "knee", "jones_nobody", "jones_pending", "smith_failed", "smith_sent", "old"]),
        ({"status": FAILED}, ["smith_failed"]),
        ({"physician": " B.Jones@Clinic.example.org"}, ["today", "jones_nobody", "jones_pending"]),
        ({"client": "C-1"}, ["knee", "smith_failed", "smith_sent", "old"]),
        ({"rule": "discharge"}, ["jones_pending"]),
        ({"since": NOW - timedelta(days=4), "until": NOW - timedelta(days=1)}, None),
        ({"words": "knee replacement"}, ["knee"]),
        ({"words": "50%"}, ["knee"]),
        ({"words": "better_ok"}, ["knee"]),
        ({"words": "%"}, ["knee"]),  # % is the letter, not "anything"
        ({"words": "knee hip"}, []),  # every word
        ({"client": "C-1", "status": SENT}, ["smith_sent"]),
    ],
    ids=["all", "status", "physician", "client", "rule", "range", "words", "percent", "underscore",
         "lone percent", "every word", "two filters"],
)  # fmt: skip
def test_each_filter_narrows_the_log_newest_first(logged, filters, expected):
    engine, made = logged
    if expected is None:
        expected = ["knee", "jones_nobody", "jones_pending", "smith_failed", "smith_sent"]
    with store.read(engine) as conn:
        rows = find_messages(conn, LogQuery(**filters))
    assert [row["id"] for row in rows] == [made[name] for name in expected]
    assert all(tuple(row) == review.LOG_FIELDS for row in rows)


def test_counts_follow_every_filter_but_status_in_one_grouped_count(logged):
    engine, _ = logged
    with store.read(engine) as conn:
        everything = count_by_status(conn, LogQuery())
        smith = count_by_status(conn, LogQuery(physician=SMITH, status=SENT, before="2030-01-01T00:00:00Z_1"))
    assert everything == {
        "pending": 4,
        "sending": 0,
        "sent": 1,
        "failed": 1,
        "suppressed": 1,
        "cancelled": 0,
        "bounced": 0,
        "redirected": 0,
    }
    assert smith == {
        "pending": 2,
        "sending": 0,
        "sent": 1,
        "failed": 1,
        "suppressed": 0,
        "cancelled": 0,
        "bounced": 0,
        "redirected": 0,
    }


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (LogQuery(status="lost"), "status 'lost' is not one of pending, sending, sent, failed"),
        (LogQuery(physician="nobody@x.example"), "no physician with email 'nobody@x.example'"),
        (LogQuery(client="C-404"), "no client with ref 'C-404'"),
        (LogQuery(before="yesterday_1"), "the page cursor 'yesterday_1' is not one this log gave"),
        (LogQuery(before="2026-13-45T00:00:00Z_1"), "the page cursor '2026-13-45T00:00:00Z_1' names no time"),
    ],
    ids=["status", "physician", "client", "cursor", "impossible date"],
)
def test_an_unknown_name_or_cursor_is_one_line(engine, query, error):
    with store.read(engine) as conn, pytest.raises(NotFound) as refused:
        find_messages(conn, query)
    assert str(refused.value).startswith(error) and "\n" not in str(refused.value)


def test_keyset_pages_have_no_gap_and_no_repeat_among_equal_times(engine):
    same = [queue_message(engine, created_at=NOW) for _ in range(7)]
    older = [queue_message(engine, created_at=NOW - timedelta(seconds=s)) for s in (1, 1, 2)]
    newer = queue_message(engine, created_at=NOW + timedelta(microseconds=1))
    seen, before = [], None
    with store.read(engine) as conn:
        for _ in range(10):
            rows = find_messages(conn, LogQuery(before=before, limit=3))
            seen += [row["id"] for row in rows]
            if len(rows) < 3:
                break
            before = cursor_of(rows[-1])
            assert re.fullmatch(r"[0-9A-Za-z:._-]+", before)  # URL-safe as it is
    assert seen == [newer, *sorted(same, reverse=True), *sorted(older[:2], reverse=True), older[2]]
    assert cursor_of({"created_at": NOW, "id": 42}) == "2026-11-25T15:00:00.000000Z_42"
    with store.read(engine) as conn:  # the example form "+00:00" is read too ("+" arrives as " " in a URL)
        for text in (
            "2026-11-25T15:00:00+00:00_" + str(same[3]),
            "2026-11-25T15:00:00 00:00_" + str(same[3]),
        ):
            assert [r["id"] for r in find_messages(conn, LogQuery(before=text))][:3] == sorted(same)[2::-1]


def test_outreach_log_still_reads_through_the_same_query(logged, run_cli):
    engine, made = logged
    result = run_cli("log", "--status", "failed", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in csv.DictReader(io.StringIO(result.stdout))] == [str(made["smith_failed"])]
    with store.read(engine) as conn:
        assert [r["id"] for r in review.list_messages(conn, client="C-2", limit=1)] == [made["today"]]


# --- the log page -------------------------------------------------------------------------


def test_the_log_page_filters_counts_and_audits_the_view(console):
    ids = practice(console.engine)
    sent = queue_message(
        console.engine,
        **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW, subject="Progress report: knee", rule="progress"),
    )
    failed = queue_message(
        console.engine, **to(ids, JONES, "C-2", status=FAILED, last_error="550 5.1.1 no such user")
    )
    pending = queue_message(console.engine, **to(ids, SMITH, "C-1", rule="discharge"))
    browser = console.login("viewer")

    page = browser.get("/").get_data(as_text=True)
    assert set(ids_on(page)) == {sent, failed, pending}
    for name in ("status", "physician", "client", "rule", "since", "until", "q"):
        assert f'name="{name}"' in page
    assert ">Filter</button>" in page and ">Download CSV</a>" in page
    assert '<span class="status status-failed">failed</span>' in page
    assert "550 5.1.1 no such user" in page and "sent 2026-11-25 10:00" in page  # New York time
    assert 'href="/clients/C-1"' in page
    assert f'<td>a.smith<br><span class="muted">{SMITH}</span></td>' in page  # to whom: name and address

    page = browser.get("/?physician=" + SMITH + "&q=KNEE").get_data(as_text=True)
    assert ids_on(page) == [sent]
    assert f'value="{SMITH}"' in page and 'value="KNEE"' in page  # the filter stays in the form
    counts = dict(
        re.findall(r'<a href="([^"]+)" class="status status-(\w+)"', page)[i][::-1] for i in range(6)
    )
    assert counts["sent"] == f"/?physician={SMITH}&amp;q=KNEE&amp;status=sent"
    assert re.search(r'class="status status-sent"[^>]*>sent 1</a>', page)
    assert re.search(r'class="status status-pending"[^>]*>pending 0</a>', page)
    assert ids_on(browser.get("/?status=failed").get_data(as_text=True)) == [failed]
    assert ids_on(browser.get("/?rule=discharge&client=C-1").get_data(as_text=True)) == [pending]
    assert ids_on(browser.get("/?since=2026-11-26").get_data(as_text=True)) == []
    assert set(ids_on(browser.get("/?since=2026-11-25&until=2026-11-25").get_data(as_text=True))) == {
        sent,
        failed,
        pending,
    }

    viewer = "viewer@practice.example"
    assert audit_lines(console.engine, "view log")[1] == (
        viewer,
        "message log",
        f"physician={SMITH} q=KNEE",
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("status=lost", "status &#39;lost&#39; is not one of"),
        ("physician=nobody@x.example", "no physician with email &#39;nobody@x.example&#39;"),
        ("client=C-404", "no client with ref &#39;C-404&#39;"),
        ("since=26/11/2026", "since: &#39;26/11/2026&#39; is not a date (YYYY-MM-DD)"),
        ("since=2026-11-25&until=2026-11-01", "until: 2026-11-01 is before since (2026-11-25)"),
        ("before=garbage", "the page cursor &#39;garbage&#39; is not one this log gave"),
    ],
    ids=["status", "physician", "client", "date", "range", "cursor"],
)
def test_a_bad_filter_is_said_on_the_page_not_a_500(console, query, error):
    queue_message(console.engine)
    response = console.login("viewer").get("/?" + query)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert re.search(r'<p class="error">' + re.escape(error), page)
    assert ids_on(page) == []
    if not query.startswith("before="):  # the export is the whole filtered log: no cursor
        csv_response = console.login("staff").get("/log.csv?" + query)
        assert csv_response.status_code == 422 and error in csv_response.get_data(as_text=True)


def test_older_pages_follow_the_cursor_without_gaps_or_repeats(console, monkeypatch):
    monkeypatch.setattr(log_view, "PAGE", 3)
    made = [queue_message(console.engine, created_at=NOW - timedelta(minutes=i // 2)) for i in range(8)]
    browser = console.login("viewer")
    seen, url, pages = [], "/?status=pending", 0
    while url:
        page = browser.get(url).get_data(as_text=True)
        seen += ids_on(page)
        pages += 1
        found = re.search(r'<a href="([^"]+)">Older</a>', page)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url:
            assert "status=pending" in url and "offset" not in url
    expected = sorted(made, key=lambda i: (made.index(i) // 2, -i))  # newest first, then by id
    assert (seen, pages) == (expected, 3)
    assert ">Newest</a>" in page


def test_the_csv_export_is_the_filtered_log_with_formulas_neutralised_and_is_audited(console):
    ids = practice(console.engine)
    evil = queue_message(
        console.engine,
        **to(ids, SMITH, "C-1", subject='=HYPERLINK("http://evil.example","Report")', status=FAILED),
    )
    plus = queue_message(
        console.engine, **to(ids, SMITH, status=FAILED, last_error="@SUM(1)", subject="+1 report")
    )
    queue_message(console.engine, **to(ids, JONES, status=FAILED))  # another physician: not exported
    queue_message(console.engine, **to(ids, SMITH))  # not failed: not exported

    response = console.login("staff").get(f"/log.csv?status=failed&physician={SMITH}")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="outreach-log.csv"'
    text = response.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == review.LOG_FIELDS
    assert [int(row["id"]) for row in rows] == [plus, evil]
    assert rows[1]["subject"] == '\'=HYPERLINK("http://evil.example","Report")'
    assert (rows[0]["subject"], rows[0]["last_error"]) == ("'+1 report", "'@SUM(1)")
    with store.read(console.engine) as conn:  # exactly ``outreach log --format csv``
        cli = review.format_csv(find_messages(conn, LogQuery(status=FAILED, physician=SMITH, limit=None)))
    assert text == cli + "\n"
    query = LogQuery(status=FAILED, physician=SMITH)  # read a page of one at a time: the same
    assert "".join(review.iter_csv(console.engine, query, batch=1)) == text
    assert audit_lines(console.engine, "export") == [
        ("staff@practice.example", "message log", f"status=failed physician={SMITH}", "127.0.0.1")
    ]


# --- a message's page ---------------------------------------------------------------------


def test_the_message_page_shows_headers_trail_text_and_the_email_framed(console):
    ids = practice(console.engine)
    html = '<html><body><p style="color:red">Knee <b>better</b></p><script>steal()</script></body></html>'
    sent = queue_message(
        console.engine,
        **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW, html=html, text="Dear Dr Smith,\nKnee better.\n"),
    )
    with store.write(console.engine) as conn:
        from outreach.outbox import trail as step

        step(conn, sent, NOW, "sent", "250 2.0.0 queued as ABC")
    browser = console.login("viewer")

    response = browser.get(f"/messages/{sent}")
    page = response.get_data(as_text=True)
    row = message(console.engine, sent)
    assert response.status_code == 200
    assert '<pre class="text">Dear Dr Smith,\nKnee better.\n</pre>' in page
    frame = re.search(r"<iframe[^>]*>", page).group(0)
    assert frame == (f'<iframe class="email" sandbox src="/messages/{sent}/html" title="The email as sent">')
    assert "allow-scripts" not in page and "<script" not in page
    assert "250 2.0.0 queued as ABC" in page and ">queued</td>" in page
    assert f"&lt;{row.message_id[1:-1]}&gt;" in page  # its Message-ID, and the one received
    assert page.count(f"&lt;{row.message_id[1:-1]}&gt;") == 2
    assert "Alex Morgan, Summit Post-Rehab &lt;updates@rehab.example.org&gt;" in page
    assert "2026-11-25 10:00" in page and "Jordan DavisC-1" in page
    assert 'href="/physicians/a.smith@clinic.example.org"' in page
    assert "Content-Security-Policy" in response.headers and "<style" not in page and "style=" not in page

    framed = browser.get(f"/messages/{sent}/html")
    assert framed.status_code == 200 and framed.mimetype == "text/html"
    assert framed.get_data(as_text=True) == html  # exactly as stored
    assert framed.headers["Content-Security-Policy"] == EMAIL_POLICY
    assert framed.headers["X-Frame-Options"] == "SAMEORIGIN"

    viewer = "viewer@practice.example"
    assert audit_lines(console.engine, "view message") == [
        (viewer, f"message {sent}", "", "127.0.0.1"),
        (viewer, f"message {sent}", "the email's HTML part", "127.0.0.1"),
    ]
    assert browser.get(f"/messages/{sent + 99}").status_code == 404
    assert browser.get(f"/messages/{sent + 99}/html").status_code == 404


def test_a_digest_links_its_updates_and_each_update_its_digest(console):
    digest = queue_message(console.engine, kind="digest", rule="digest", template="digest", status=SENT)
    updates = [queue_message(console.engine, digest_id=digest, status=SENT, sent_at=NOW) for _ in range(2)]
    browser = console.login("viewer")
    page = browser.get(f"/messages/{digest}").get_data(as_text=True)
    for update in updates:
        assert f'<a href="/messages/{update}">message {update}</a>' in page
    member = browser.get(f"/messages/{updates[0]}").get_data(as_text=True)
    assert f'<a href="/messages/{digest}">digest {digest}</a>' in member
    assert f"{message(console.engine, digest).message_id[1:-1]}&gt; (inside digest {digest})" in member
    log_page = browser.get("/").get_data(as_text=True)
    assert log_page.count(f'in <a href="/messages/{digest}">digest {digest}</a>') == 2
    with store.read(console.engine) as conn:
        assert message_detail(conn, digest)["digest_members"] == updates


def test_data_is_shown_literally_never_run(console):
    ids = practice(console.engine)
    sent = queue_message(
        console.engine,
        **to(ids, SMITH, "C-1", subject=XSS, recipient_name=SSTI, status=FAILED, last_error=XSS),
    )
    browser = console.login("staff")
    for url in ("/", f"/messages/{sent}", f"/messages/{sent}/retry"):
        page = browser.get(url).get_data(as_text=True)
        assert "<script>" not in page and "alert(1)" in page, url
    log_page = browser.get("/").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in log_page and SSTI in log_page
    page = browser.get(f"/messages/{sent}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and SSTI in page


# --- retry, cancel, resend ----------------------------------------------------------------


def confirm_then_do(browser, url: str, button: str):
    """The confirmation page (its question and button), then the confirmed POST."""
    question = browser.get(url)
    assert question.status_code == 200 and f">{button}</button>" in question.get_data(as_text=True)
    return browser.post(url, {"confirmed": "yes"})


def test_staff_retry_a_failed_message_after_confirming(console):
    failed = queue_message(console.engine, status=FAILED, attempts=5, last_error="550 5.7.1 refused")
    browser = console.login("staff")
    page = browser.get(f"/messages/{failed}").get_data(as_text=True)
    assert ">Retry</button>" in page and "Cancel message" not in page and ">Resend</button>" not in page

    assert browser.post(f"/messages/{failed}/retry", {}).status_code == 200  # not confirmed: asked again
    assert status_of(console.engine, failed) == FAILED
    done = confirm_then_do(browser, f"/messages/{failed}/retry", "Confirm retry")
    assert (done.status_code, done.headers["Location"]) == (302, f"/messages/{failed}")
    assert (status_of(console.engine, failed), message(console.engine, failed).attempts) == (PENDING, 0)
    shown = browser.get(f"/messages/{failed}").get_data(as_text=True)
    assert f'<p class="notice">Message {failed} is queued again' in shown
    assert audit_lines(console.engine, "retry") == [
        ("staff@practice.example", "messages", f"{failed}: 1 queued again", "127.0.0.1")
    ]


def test_staff_cancel_a_pending_message_after_confirming(console):
    pending = queue_message(console.engine)
    browser = console.login("staff")
    assert ">Cancel message</button>" in browser.get(f"/messages/{pending}").get_data(as_text=True)
    done = confirm_then_do(browser, f"/messages/{pending}/cancel", "Confirm cancel")
    assert done.headers["Location"] == f"/messages/{pending}"
    assert status_of(console.engine, pending) == CANCELLED
    assert trail(console.engine, pending)[-1] == ("cancelled", "cancelled by a person")
    assert "is cancelled: it will never be sent" in browser.get(f"/messages/{pending}").get_data(as_text=True)
    assert audit_lines(console.engine, "cancel") == [
        ("staff@practice.example", f"message {pending}", "cancelled by a person", "127.0.0.1")
    ]


def test_staff_resend_a_sent_message_as_a_new_one(console):
    ids = practice(console.engine)
    sent = queue_message(console.engine, **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW))
    browser = console.login("staff")
    page = browser.get(f"/messages/{sent}").get_data(as_text=True)
    assert ">Resend</button>" in page and 'name="why"' in page and ">Retry</button>" not in page

    question = browser.get(f"/messages/{sent}/resend?why=says+it+never+came").get_data(as_text=True)
    assert ">Confirm resend</button>" in question and 'name="why" value="says it never came"' in question
    done = browser.post(f"/messages/{sent}/resend", {"confirmed": "yes", "why": "says it never came"})
    new = int(done.headers["Location"].rpartition("/")[2])
    assert done.status_code == 302 and new != sent and status_of(console.engine, new) == PENDING
    shown = browser.get(f"/messages/{new}").get_data(as_text=True)
    assert f"Message {new} is queued: a resend of message {sent}" in shown
    assert f'Resend of</dt><dd><a href="/messages/{sent}">message {sent}</a>' in shown
    original = browser.get(f"/messages/{sent}").get_data(as_text=True)
    assert f'Resent as</dt><dd><a href="/messages/{new}">message {new}</a>' in original
    assert audit_lines(console.engine, "resend") == [
        ("staff@practice.example", f"message {sent}", f"as message {new}: says it never came", "127.0.0.1")
    ]


@pytest.mark.parametrize(
    ("status", "action", "refusal"),
    [
        (SENT, "retry", "Only a failed message can be retried: message {id} is sent."),
        (FAILED, "cancel", "Only a pending or suppressed message can be cancelled: message {id} is failed."),
        (PENDING, "resend", "Only a sent message can be resent: message {id} is pending."),
    ],
    ids=["retry sent", "cancel failed", "resend pending"],
)
def test_an_action_the_status_does_not_allow_is_refused_and_changes_nothing(console, status, action, refusal):
    target = queue_message(console.engine, status=status)
    browser = console.login("staff")
    for response in (
        browser.get(f"/messages/{target}/{action}"),
        browser.post(f"/messages/{target}/{action}", {"confirmed": "yes"}),
    ):
        assert response.status_code == 409
        assert f'<p class="error">{refusal.format(id=target)}</p>' in response.get_data(as_text=True)
    assert status_of(console.engine, target) == status
    with store.read(console.engine) as conn:
        assert conn.execute(select(messages.c.id)).scalars().all() == [target]
    assert audit_lines(console.engine, action) == []


def test_a_viewer_sees_no_buttons_and_may_not_act_and_a_forged_form_is_refused(console):
    failed = queue_message(console.engine, status=FAILED)
    sent = queue_message(console.engine, status=SENT)
    pending = queue_message(console.engine)
    viewer = console.login("viewer")
    for target in (failed, sent, pending):
        page = viewer.get(f"/messages/{target}").get_data(as_text=True)
        assert not re.search(r">(Retry|Cancel message|Resend)</button>", page)
        assert "/retry" not in page and "/cancel" not in page and "/resend" not in page
    for target, action in ((failed, "retry"), (pending, "cancel"), (sent, "resend")):
        assert viewer.get(f"/messages/{target}/{action}").status_code == 403
        assert viewer.post(f"/messages/{target}/{action}", {"confirmed": "yes"}).status_code == 403

    staff = console.login("staff")
    staff.get(f"/messages/{pending}")
    forged = staff.client.post(f"/messages/{pending}/cancel", data={"confirmed": "yes"})
    assert forged.status_code == 400
    assert (status_of(console.engine, failed), status_of(console.engine, pending)) == (FAILED, PENDING)
    assert audit_lines(console.engine, "cancel") == audit_lines(console.engine, "retry") == []


# --- records.resend -----------------------------------------------------------------------


class Recorder(Backend):
    """A backend that keeps what it was given (no network)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def _data(self, msg):
        self.sent.append(msg.data)
        return "250 recorded"


def test_resend_copies_the_message_with_a_new_message_id_trails_and_one_audit_line(engine):
    ids = practice(engine)
    original = queue_message(
        engine,
        **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW, priority=10, kind="clinical", needs_consent=True),
        dedupe_key="progress:C-1:2026-11",
    )
    later = NOW + timedelta(hours=1)
    new = records.resend(engine, original, later, actor="alex", why="not received")
    old, copy = message(engine, original), message(engine, new)
    same = ("recipient", "recipient_name", "physician_id", "client_id", "event_id", "rule", "template", "kind",
            "subject", "html", "text", "priority", "needs_consent")  # fmt: skip
    assert {c: getattr(copy, c) for c in same} == {c: getattr(old, c) for c in same}
    assert (copy.status, copy.attempts, copy.next_attempt_at, copy.created_at) == (PENDING, 0, later, later)
    assert copy.message_id != old.message_id and copy.message_id.endswith("@rehab.example.org>")
    assert copy.dedupe_key == f"progress:C-1:2026-11~resend:{new}"
    assert (old.status, old.dedupe_key) == (SENT, "progress:C-1:2026-11")
    assert trail(engine, original)[-1] == ("resent", f"resent as message {new} by alex: not received")
    assert trail(engine, new) == [("queued", f"resend of message {original}")]
    assert audit_lines(engine, "resend") == [
        ("alex", f"message {original}", f"as message {new}: not received", None)
    ]
    again = records.resend(engine, original, later)  # twice: keys cannot collide
    with store.read(engine) as conn:
        assert message_detail(conn, original)["resent_as"] == [new, again]
        assert (message_detail(conn, new)["resent_from"], message_detail(conn, original)["resent_from"]) == (
            original,
            None,
        )


def test_a_resend_of_a_long_key_stays_within_the_column(engine):
    original = queue_message(engine, status=SENT, dedupe_key="k" * 255)
    new = records.resend(engine, original, NOW)
    key = message(engine, new).dedupe_key
    assert len(key) == 255 and key.endswith(f"~resend:{new}")


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (PENDING, "clinical", "only sent messages can be resent: {id} is pending"),
        (FAILED, "clinical", "only sent messages can be resent: {id} is failed"),
        (SENT, "digest", "message {id} is a digest: resend the updates it carried instead ({member})"),
    ],
    ids=["pending", "failed", "digest"],
)
def test_resend_refuses_what_is_not_a_sent_message_and_writes_nothing(engine, status, kind, error):
    target = queue_message(engine, status=status, kind=kind)
    member = queue_message(engine, status=SENT, digest_id=target) if kind == "digest" else None
    with pytest.raises(OutreachError) as refused:
        records.resend(engine, target, NOW, actor="alex")
    assert str(refused.value) == error.format(id=target, member=member)
    with pytest.raises(NotFound, match=f"no message with id {target + 9}$"):
        records.resend(engine, target + 9, NOW)
    with pytest.raises(records.RowError, match="why: must be a single line"):
        records.resend(engine, target, NOW, why="one\ntwo")
    with store.read(engine) as conn:
        assert len(conn.execute(select(messages.c.id)).all()) == (2 if member else 1)
    assert audit_lines(engine, "resend") == []


def test_a_resend_passes_the_gate_like_any_message(engine, settings):
    ids = practice(engine)
    first = queue_message(engine, **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW, needs_consent=True))
    second = queue_message(engine, **to(ids, JONES, "C-2", status=SENT, sent_at=NOW, needs_consent=True))
    records.revoke_consent(engine, "C-2", NOW.date(), NOW)
    kept, held = records.resend(engine, first, NOW), records.resend(engine, second, NOW)
    backend = Recorder()
    Dispatcher(engine, settings, backend, lambda: NOW).send_due()
    assert (status_of(engine, kept), status_of(engine, held)) == (SENT, SUPPRESSED)
    assert len(backend.sent) == 1 and message(engine, kept).message_id.encode() in backend.sent[0]
    assert message(engine, held).reason == "consent"


def test_dates_and_cursors_out_of_range_are_said_on_the_page(console):
    browser = console.login("viewer")
    for query, said in (
        ("until=9999-12-31", "until: 9999-12-31 is outside the dates the log can hold"),
        ("since=0001-01-01", "since: 0001-01-01 is outside the dates the log can hold"),
        ("before=2026-11-25T15:00:00.000000Z_99999999999", "is not one this log gave"),
    ):
        response = browser.get(f"/?{query}")
        assert response.status_code == 422, query
        assert said in response.get_data(as_text=True), query


def test_the_message_page_shows_what_came_back_oldest_first(console):
    from tests.factories import record_inbound

    ids = practice(console.engine)
    sent = queue_message(console.engine, **to(ids, SMITH, "C-1", status=SENT, sent_at=NOW))
    record_inbound(
        console.engine, message_id=sent, kind="auto_reply", sender=SMITH, subject="Out of office",
        received_at=NOW + timedelta(hours=1), text="Back Monday.",
    )  # fmt: skip
    record_inbound(
        console.engine, message_id=sent, sender=SMITH, subject="Re: Progress",
        received_at=NOW + timedelta(hours=30), text="Hold <b>squats</b>; see her Tuesday.",
    )  # fmt: skip
    page = console.login("viewer").get(f"/messages/{sent}").get_data(as_text=True)

    came_back = page.split("What came back", 1)[1]
    assert came_back.index("Automatic reply") < came_back.index("Reply</strong>")
    assert "Back Monday." in came_back
    assert "Hold &lt;b&gt;squats&lt;/b&gt;; see her Tuesday." in came_back  # shown literally
    assert "2026-11-26 16:00" in came_back
