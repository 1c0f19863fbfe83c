"""The Clients list and a client's page: search, record, timeline, charts, consent, forms and their checks."""

from __future__ import annotations

import re
from datetime import date, timedelta

from sqlalchemy import func, select

from outreach import records, store, timeline
from outreach.instruments import INSTRUMENTS
from outreach.models import SENT, audit, clients, events, measurements, physicians
from outreach.web import charts
from tests.conftest import NOW
from tests.factories import queue_message

TODAY = "2026-11-25"  # NOW in the practice's time zone (America/New_York)
HOSTILE_FIRST, HOSTILE_LAST, HOSTILE_NOTE = "<script>alert(1)</script>", "O'Brien & <b>Sons</b>", "{{ 7*7 }}"


def text(response) -> str:
    return response.get_data(as_text=True)


def rows(engine, table, ref: str) -> int:
    """How many rows of ``events`` or ``measurements`` the client has, read from the database."""
    with store.read(engine) as conn:
        return conn.execute(
            select(func.count())
            .select_from(table.join(clients, clients.c.id == table.c.client_id))
            .where(clients.c.ref == ref)
        ).scalar_one()


def audit_lines(engine, action: str) -> list:
    with store.read(engine) as conn:
        return list(conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.id)))


def client_row(engine, ref: str):
    with store.read(engine) as conn:
        return conn.execute(select(clients).where(clients.c.ref == ref)).one()


def table_refs(page: str) -> list[str]:
    """The refs the clients list shows, in order."""
    return re.findall(r'<td><a href="/clients/([^"]+)">\1</a></td>', page)


# --- the list -------------------------------------------------------------------------------


def test_the_list_finds_clients_by_ref_or_name_and_status(demo_console):
    browser = demo_console.login("viewer")
    everyone = text(browser.get("/clients"))
    assert table_refs(everyone) == [f"C-{n}" for n in range(1001, 1011)]
    assert "Jordan Davis" in everyone and "Maria Alvarez" in everyone
    assert 'href="/physicians/m.alvarez@riverside-ortho.example.org"' in everyone
    assert "reassessment" in everyone and "2026-11-24 10:00" in everyone  # C-1001's last event, local time
    assert "no consent to share health information on record" in everyone  # C-1005

    assert table_refs(text(browser.get("/clients?q=davis"))) == ["C-1001"]
    assert table_refs(text(browser.get("/clients?q=DAVIS+jordan"))) == ["C-1001"]
    assert table_refs(text(browser.get("/clients?q=c-100"))) == [f"C-100{n}" for n in range(1, 10)]
    assert table_refs(text(browser.get("/clients?status=discharged"))) == ["C-1003"]
    assert table_refs(text(browser.get("/clients?q=liu&status=referred"))) == []  # C-1008 is active now
    nobody = text(browser.get("/clients?q=100%25"))  # a literal %, not a wildcard
    assert table_refs(nobody) == [] and "No client matches" in nobody

    wrong = browser.get("/clients?status=asleep")
    assert wrong.status_code == 200
    assert '<p class="error">status &#39;asleep&#39; is not one of' in text(wrong)
    assert len(table_refs(text(wrong))) == 10
    assert [line.actor for line in audit_lines(demo_console.engine, "view clients")][-1] == (
        "viewer@practice.example"
    )


def test_the_list_is_limited_and_says_so(demo_engine):
    with store.read(demo_engine) as conn:
        few = timeline.find_clients(conn, date(2026, 11, 25), "", limit=3)
        all_ten = timeline.find_clients(conn, date(2026, 11, 25), "c-10")
    assert [row.ref for row in few.rows] == ["C-1001", "C-1002", "C-1003"] and few.more
    assert len(all_ten.rows) == 10 and not all_ten.more


# --- the client's page ----------------------------------------------------------------------


def test_a_client_page_shows_record_consent_timeline_and_charts(demo_console):
    with store.read(demo_console.engine) as conn:
        client_id = conn.execute(select(clients.c.id).where(clients.c.ref == "C-1001")).scalar_one()
    sent = queue_message(
        demo_console.engine,
        client_id=client_id,
        subject="Progress report: Jordan Davis",
        status=SENT,
        sent_at=NOW,
    )
    browser = demo_console.login("viewer")
    response = browser.get("/clients/C-1001")
    assert response.status_code == 200
    page = text(response)

    assert "<h1>Jordan Davis" in page and "Left ACL reconstruction (hamstring autograft)" in page
    assert '<a href="/physicians/m.alvarez@riverside-ortho.example.org">Maria Alvarez, MD</a>' in page
    assert "<li>Return to recreational cycling</li>" in page  # goals, one by one
    assert "2 sessions/week for 8 weeks" in page and "2026-12-22" in page  # plan, next reassessment
    assert '<span class="status status-sent">in effect</span>' in page
    assert "2026-09-11" in page  # consent given on the referral day, 75 days before NOW

    # The timeline: newest first; the message links to its page with its status.
    assert (
        f'<a href="/messages/{sent}">Message {sent}</a> <span class="status status-sent">sent</span>' in page
    )
    assert (
        page.index(f"Message {sent}") < page.index("12-week reassessment") < page.index("Initial assessment")
    )
    assert '<span class="score">55</span> points' in page

    # The LEFS chart: an inline SVG, described in words, with its baseline and MCID band.
    lefs = re.search(
        r'<svg class="chart".*?aria-label="LEFS from 38 to 55 points;[^"]*".*?</svg>', page, re.S
    )
    assert lefs is not None
    chart = lefs.group(0)
    assert 'role="img"' in chart
    assert "<title>LEFS from 38 to 55 points; improvement beyond the MCID of 9 points" in chart
    assert 'class="chart-band"' in chart and "baseline ± 9 points (MCID)" in chart
    assert 'class="chart-baseline"' in chart and "baseline 38" in chart
    assert chart.count("<circle") == 3 and 'class="chart-line"' in chart
    assert "NPRS from 5 to 2 points" in page  # every instrument measured has its chart

    # Works without scripts and within the Content-Security-Policy.
    assert "<script" not in page and "style=" not in page and "<style" not in page
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    # A viewer reads; no form, no button to change anything.
    for control in ("Record event", "Record measure", "Record consent", "Revoke consent", 'name="score"'):
        assert control not in page
    line = audit_lines(demo_console.engine, "view client")[-1]
    assert (line.actor, line.subject) == ("viewer@practice.example", "client C-1001")

    # Nor may a viewer change anything by posting the forms anyway.
    engine = demo_console.engine
    before = rows(engine, events, "C-1001"), rows(engine, measurements, "C-1001")
    attempts = {
        "/clients/C-1001/events": {"kind": "reassessment", "occurred_at": "2026-11-25T09:00"},
        "/clients/C-1001/measures": {"instrument": "LEFS", "score": "60", "measured_at": TODAY},
        "/clients/C-1005/consent": {"on": TODAY},
        "/clients/C-1001/consent/revoke": {},
    }
    for url, form in attempts.items():
        assert browser.post(url, form).status_code == 403, url
    assert (rows(engine, events, "C-1001"), rows(engine, measurements, "C-1001")) == before
    assert client_row(engine, "C-1005").consent_date is None
    assert client_row(engine, "C-1001").consent_revoked_on is None


def test_a_chart_reads_change_as_the_reports_do():
    day = date(2026, 9, 1)

    def series(code: str, *scores: float) -> timeline.Series:
        points = [(day + timedelta(days=14 * n), score) for n, score in enumerate(scores)]
        return timeline.Series(INSTRUMENTS[code], points)

    assert charts.describe(series("LEFS", 32, 45, 58)).startswith(
        "LEFS from 32 to 58 points; improvement beyond the MCID of 9 points; 3 scores"
    )
    assert "worse by more than the MCID of 10 points" in charts.describe(series("ODI", 40, 52))
    assert "change within the MCID of 7.5 points" in charts.describe(series("NDI", 20, 16))
    # NPRS: 30 % of a baseline of 5 is 1.5, smaller than its 2 points, so that is the band.
    assert charts.threshold(INSTRUMENTS["NPRS"], 5).points == 1.5
    assert "TUG from 16.2 to 12.8 s; now below the 13.5 s cut-off (not at risk)" in charts.describe(
        series("TUG", 16.2, 12.8)
    )
    assert charts.describe(series("LEFS", 40)) == "LEFS baseline 40 points on 2026-09-01; one score so far"

    drawn = str(charts.svg(series("LEFS", 40, 60)))
    # The band spans baseline ± 9 on a 0-80 axis: 18/80 of the plot's height, centred on 40.
    band = re.search(r'class="chart-band" x="\d+" y="([\d.]+)" width="\d+" height="([\d.]+)"', drawn)
    assert band is not None
    plot = charts.HEIGHT - charts.TOP - charts.BOTTOM
    assert abs(float(band.group(2)) - plot * 18 / 80) < 0.2
    assert abs(float(band.group(1)) - (charts.TOP + plot * (80 - 49) / 80)) < 0.2
    assert "risk cut-off 13.5 s" in str(charts.svg(series("TUG", 16.2, 12.8)))


# --- recording ------------------------------------------------------------------------------


def test_staff_record_an_event_and_it_is_audited(demo_console):
    browser = demo_console.login("staff")
    page = text(browser.get("/clients/C-1001"))
    assert 'value="2026-11-25T10:00"' in page  # the event form starts at now, practice time
    before = rows(demo_console.engine, events, "C-1001")
    form = {"kind": "discharged", "occurred_at": "2026-11-25T09:30", "note": "Goals met; home programme"}
    # A form posted without this session's CSRF token (from another site, say) changes nothing.
    assert browser.client.post("/clients/C-1001/events", data=form).status_code == 400
    assert browser.client.post("/clients/C-1001/events", data={**form, "csrf": "forged"}).status_code == 400
    assert browser.client.post("/clients/C-1001/consent/revoke", data={}).status_code == 400
    assert rows(demo_console.engine, events, "C-1001") == before
    assert client_row(demo_console.engine, "C-1001").consent_revoked_on is None

    response = browser.post("/clients/C-1001/events", form)
    assert response.status_code == 302 and response.headers["Location"] == "/clients/C-1001"
    shown = text(browser.get("/clients/C-1001"))
    notice = re.search(r'<p class="notice">Recorded discharged on 2026-11-25 09:30 \(event (\d+)\)', shown)
    assert notice is not None
    assert "Goals met; home programme" in shown
    assert rows(demo_console.engine, events, "C-1001") == before + 1
    assert client_row(demo_console.engine, "C-1001").status == "discharged"
    line = audit_lines(demo_console.engine, "event")[-1]
    assert (line.actor, line.subject) == ("staff@practice.example", "client C-1001")
    assert line.detail == "discharged at 2026-11-25T09:30:00-05:00"

    again = browser.post("/clients/C-1001/events", form)
    assert again.status_code == 302
    assert "Discharged on 2026-11-25 09:30 was already on record" in text(browser.get("/clients/C-1001"))
    assert rows(demo_console.engine, events, "C-1001") == before + 1


def test_staff_record_a_measure_and_it_is_audited(demo_console):
    browser = demo_console.login("staff")
    browser.get("/clients/C-1001")
    before = rows(demo_console.engine, measurements, "C-1001")
    response = browser.post(
        "/clients/C-1001/measures", {"instrument": "lefs", "score": "63", "measured_at": TODAY}
    )
    assert response.status_code == 302
    page = text(browser.get("/clients/C-1001"))
    assert '<p class="notice">Recorded LEFS 63 on 2026-11-25.</p>' in page
    assert "LEFS from 38 to 63 points" in page  # the chart has the new score
    assert rows(demo_console.engine, measurements, "C-1001") == before + 1
    line = audit_lines(demo_console.engine, "measure")[-1]
    assert (line.actor, line.subject, line.detail) == (
        "staff@practice.example",
        "client C-1001",
        "LEFS 63 on 2026-11-25: created",
    )
    browser.post("/clients/C-1001/measures", {"instrument": "LEFS", "score": "64", "measured_at": TODAY})
    assert "replacing the score recorded earlier that day" in text(browser.get("/clients/C-1001"))
    assert rows(demo_console.engine, measurements, "C-1001") == before + 1


def test_bad_values_are_refused_inline_and_nothing_is_saved(demo_console):
    engine = demo_console.engine
    browser = demo_console.login("staff")
    browser.get("/clients/C-1001")
    counts = (rows(engine, events, "C-1001"), rows(engine, measurements, "C-1001"))
    changes = (len(audit_lines(engine, "event")), len(audit_lines(engine, "measure")))

    bad_score = browser.post(
        "/clients/C-1001/measures", {"instrument": "LEFS", "score": "500", "measured_at": TODAY}
    )
    assert bad_score.status_code == 422
    page = text(bad_score)
    assert '<p class="error">Score: 500 is outside the LEFS range (0 to 80)</p>' in page
    assert 'name="score" value="500" required aria-invalid="true"' in page  # the input kept, marked
    assert '<option value="LEFS" selected>' in page

    unknown_kind = browser.post(
        "/clients/C-1001/events", {"kind": "flying", "occurred_at": "2026-11-24T09:00", "note": "kept note"}
    )
    assert unknown_kind.status_code == 422
    page = text(unknown_kind)
    assert '<p class="error">Kind: &#39;flying&#39; is not a known event kind' in page
    assert ">kept note</textarea>" in page and 'value="2026-11-24T09:00"' in page
    assert '<option value="flying" selected>' in page

    future = browser.post(
        "/clients/C-1001/events", {"kind": "reassessment", "occurred_at": "2026-11-27T09:00"}
    )
    assert future.status_code == 422
    assert "When: 2026-11-27 09:00:00-05:00 is in the future" in text(future)
    future_score = browser.post(
        "/clients/C-1001/measures", {"instrument": "LEFS", "score": "60", "measured_at": "2026-12-01"}
    )
    assert future_score.status_code == 422 and "Measured on: 2026-12-01 is in the future" in text(
        future_score
    )
    not_a_time = browser.post(
        "/clients/C-1001/events", {"kind": "reassessment", "occurred_at": "last tuesday"}
    )
    assert not_a_time.status_code == 422 and "When: &#39;last tuesday&#39; is not a date-time" in text(
        not_a_time
    )
    no_such = browser.post(
        "/clients/C-1001/measures", {"instrument": "VAS", "score": "3", "measured_at": TODAY}
    )
    assert no_such.status_code == 422 and "Instrument: &#39;VAS&#39; is not a known outcome measure" in text(
        no_such
    )

    assert (rows(engine, events, "C-1001"), rows(engine, measurements, "C-1001")) == counts
    assert (len(audit_lines(engine, "event")), len(audit_lines(engine, "measure"))) == changes
    assert client_row(engine, "C-1001").status == "active"


def test_staff_record_and_revoke_consent(demo_console):
    engine = demo_console.engine
    demo_console.clock.now = NOW + timedelta(hours=13, minutes=55)  # 23:55 in the practice: see the end
    browser = demo_console.login("staff")
    page = text(browser.get("/clients/C-1005"))
    assert '<span class="status status-blocked">not in effect</span> No consent to share' in page
    assert "Revoke consent" not in page and "Record consent" in page  # nothing to revoke yet
    refused = browser.post("/clients/C-1005/consent", {"on": "2026-12-02", "expires": ""})
    assert refused.status_code == 422
    assert "Given on: 2026-12-02 is in the future" in text(refused) and 'value="2026-12-02"' in text(refused)
    assert client_row(engine, "C-1005").consent_date is None

    given = browser.post("/clients/C-1005/consent", {"on": "2026-11-20", "expires": "2027-11-20"})
    assert given.status_code == 302
    page = text(browser.get("/clients/C-1005"))
    assert "Consent recorded as given on 2026-11-20, until 2027-11-20" in page
    assert '<span class="status status-sent">in effect</span>' in page and "Revoke consent" in page
    row = client_row(engine, "C-1005")
    assert (row.consent_date, row.consent_expires) == (date(2026, 11, 20), date(2027, 11, 20))
    assert audit_lines(engine, "consent")[-1].actor == "staff@practice.example"

    assert browser.post("/clients/C-1005/consent/revoke").status_code == 302
    page = text(browser.get("/clients/C-1005"))
    assert "Consent revoked on 2026-11-25: queued updates" in page
    assert "<dt>Revoked</dt><dd>2026-11-25</dd>" in page and "not in effect" in page
    assert client_row(engine, "C-1005").consent_revoked_on == date(2026, 11, 25)
    revoked = audit_lines(engine, "revoke consent")
    assert [(r.actor, r.subject) for r in revoked] == [("staff@practice.example", "client C-1005")]

    demo_console.clock.now += timedelta(
        minutes=10
    )  # past midnight: a second click keeps the day it was revoked
    browser.post("/clients/C-1005/consent/revoke")
    assert "already revoked on 2026-11-25" in text(browser.get("/clients/C-1005"))
    assert client_row(engine, "C-1005").consent_revoked_on == date(2026, 11, 25)
    assert len(audit_lines(engine, "revoke consent")) == 1

    missing = browser.get("/clients/C-9999")
    assert missing.status_code == 404 and "no client with ref &#39;C-9999&#39;" in text(missing)
    assert browser.post("/clients/C-9999/consent", {"on": "2026-11-20"}).status_code == 404


# --- who may, and forged requests -----------------------------------------------------------


def test_markup_and_template_syntax_in_data_show_literally(demo_console):
    engine = demo_console.engine
    with store.write(engine) as conn:
        doctor = conn.execute(select(physicians.c.id).limit(1)).scalar_one()
        values = {
            "ref": "C-666",
            "first_name": HOSTILE_FIRST,
            "last_name": HOSTILE_LAST,
            "physician_id": doctor,
        }
        records.save_client(conn, {**values, "diagnosis": HOSTILE_NOTE, "goals": HOSTILE_NOTE}, NOW)
    records.add_event(engine, "C-666", "referral_received", NOW - timedelta(hours=2), NOW, note=HOSTILE_NOTE)
    browser = demo_console.login("staff")
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; O&#39;Brien &amp; &lt;b&gt;Sons&lt;/b&gt;"
    for url in ("/clients", "/clients?q=script", "/clients/C-666"):
        page = text(browser.get(url))
        assert escaped in page, url
        assert HOSTILE_FIRST not in page and "<b>Sons" not in page, url
    page = text(browser.get("/clients/C-666"))
    assert "<td>{{ 7*7 }}</td>" in page  # the note, as typed
    assert "<dd>{{ 7*7 }}</dd>" in page  # the diagnosis
    assert ">49<" not in page and "49</" not in page
    assert table_refs(text(browser.get("/clients?q=%3Cscript"))) == ["C-666"]
