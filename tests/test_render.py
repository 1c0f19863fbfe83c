"""What physicians read: every template renders, numbers are right, data is escaped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from sqlalchemy import select, update

from outreach import store
from outreach.errors import RenderError
from outreach.importer import record_event, record_measure
from outreach.instruments import (
    INSTRUMENTS,
    MEANINGFUL_DECLINE,
    MEANINGFUL_IMPROVEMENT,
    WITHIN_THRESHOLD,
    Outcome,
)
from outreach.models import clients, physicians
from outreach.planner import preview
from outreach.renderer import Renderer
from tests.conftest import NOW
from tests.factories import demo_clients_for, shipped_rules


def test_every_shipped_rule_renders_for_every_demo_client_it_applies_to(demo_engine, settings):
    renderer = Renderer(settings.templates_dir)
    rendered = 0
    for rule in shipped_rules(settings):
        for client in demo_clients_for(demo_engine, rule):
            email = preview(demo_engine, settings, rule, renderer, client.ref, NOW)
            assert email.subject and email.text.strip() and "<html" in email.html
            for private in (client.first_name, client.last_name, client.diagnosis):
                assert private not in email.subject, (rule.name, client.ref)
            assert "Summit Post-Rehab" in email.text  # letterhead
            assert "Alex Morgan, MS, ACSM-CEP" in email.text  # sign-off with credentials
            assert "confidential" in email.text.lower()
            assert "<style" not in email.html or 'style="' in email.html  # CSS was inlined
            rendered += 1
    assert rendered >= 40


def test_every_template_folder_is_used_by_a_rule(settings):
    used = {rule.template for rule in shipped_rules(settings)} | {"digest"}  # digest: built in
    assert set(Renderer(settings.templates_dir).template_names()) == used


def test_the_referral_acknowledgement_carries_no_health_information(demo_engine, settings):
    [rule] = [r for r in shipped_rules(settings) if r.name == "referral_acknowledgement"]
    assert rule.consent_required is False
    with store.read(demo_engine) as conn:
        client = conn.execute(select(clients).where(clients.c.ref == "C-1008")).one()
    email = preview(demo_engine, settings, rule, Renderer(settings.templates_dir), "C-1008", NOW)
    for part in (email.text, email.html):
        assert client.diagnosis not in part and "neuropathy" not in part.lower()
        assert client.precautions not in part and "ODI" not in part


def test_report_numbers_match_measures_entered_by_hand(engine, settings, tmp_path):
    """Baseline 38, latest 55 on LEFS: +17, above the MCID of 9, a meaningful improvement."""
    (tmp_path / "p.csv").write_text("email,name,credentials\nk.ito@clinic.example.org,Kenji Ito,MD\n")
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
        "R-9,Lena,Marsh,k.ito@clinic.example.org,2026-09-01,Left TKA,2026-09-01,active\n"
    )
    from outreach.importer import import_file

    import_file(engine, settings, "physicians", tmp_path / "p.csv", NOW)
    import_file(engine, settings, "clients", tmp_path / "c.csv", NOW)
    with store.write(engine) as conn:
        cid = conn.execute(select(clients.c.id).where(clients.c.ref == "R-9")).scalar_one()
        record_event(conn, cid, "initial_assessment", NOW - timedelta(days=60), "", NOW)
        record_measure(conn, cid, "LEFS", 38, (NOW - timedelta(days=60)).date(), NOW)
        record_measure(conn, cid, "LEFS", 44, (NOW - timedelta(days=30)).date(), NOW)
        record_measure(conn, cid, "LEFS", 55, (NOW - timedelta(days=1)).date(), NOW)
    [rule] = [r for r in shipped_rules(settings) if r.name == "progress_report"]
    email = preview(engine, settings, rule, Renderer(settings.templates_dir), "R-9", NOW)
    line = next(line for line in email.text.splitlines() if line.startswith("LEFS ("))
    assert line.split()[2:5] == ["38", "55", "+17"]
    assert "clinically meaningful improvement" in line
    assert "MCID 9 points" in email.text
    assert "IMPROVING" in email.text.upper().split("\n\n")[1]  # the bottom line comes first
    assert "Dr. Ito" in email.text
    assert "L.M." in email.subject and "R-9" in email.subject


def test_data_is_escaped_in_html(demo_engine, settings):
    with store.write(demo_engine) as conn:
        conn.execute(
            update(clients).where(clients.c.ref == "C-1001").values(diagnosis="<script>alert('dx')</script>")
        )
        conn.execute(
            update(physicians)
            .where(physicians.c.email == "m.alvarez@riverside-ortho.example.org")
            .values(name="Maria <b>Alvarez</b>")
        )
    [rule] = [r for r in shipped_rules(settings) if r.name == "progress_report"]
    email = preview(demo_engine, settings, rule, Renderer(settings.templates_dir), "C-1001", NOW)
    assert "<script>" not in email.html and "&lt;script&gt;" in email.html
    assert "<b>Alvarez</b>" not in email.html
    assert "<script>alert('dx')</script>" in email.text  # plain text is not HTML


def test_a_missing_variable_names_it(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "subject.txt").write_text("Report {{ client.ref }}")
    (folder / "body.html").write_text("<p>{{ client.nickname }}</p>")
    (folder / "body.txt").write_text("x")
    with pytest.raises(RenderError, match="nickname"):
        Renderer(tmp_path).render("t", {"client": {"ref": "A-1"}})


def test_subject_line_breaks_are_folded(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "subject.txt").write_text("Report\n{{ ref }}\n")
    (folder / "body.html").write_text("<p>x</p>")
    (folder / "body.txt").write_text("x")
    assert Renderer(tmp_path).render("t", {"ref": "A-1\r\nBcc: x@y.org"}).subject == "Report A-1 Bcc: x@y.org"


@pytest.mark.parametrize(
    ("code", "baseline", "latest", "expected"),
    [
        ("LEFS", 38, 55, MEANINGFUL_IMPROVEMENT),
        ("LEFS", 38, 44, WITHIN_THRESHOLD),
        ("LEFS", 50, 40, MEANINGFUL_DECLINE),
        ("ODI", 42, 24, MEANINGFUL_IMPROVEMENT),  # lower is better
        ("ODI", 20, 15, MEANINGFUL_IMPROVEMENT),  # 25 % is short of 30 %, 5 points short of 10: no …
        ("NPRS", 5, 3, MEANINGFUL_IMPROVEMENT),
        ("NDI", 22, 20, WITHIN_THRESHOLD),
        ("TUG", 16.2, 12.8, MEANINGFUL_IMPROVEMENT),  # crossed the 13.5 s fall-risk cut-off
        ("TUG", 12.0, 14.0, MEANINGFUL_DECLINE),
        ("6MWT", 280, 410, MEANINGFUL_IMPROVEMENT),
        ("GAIT", 0.8, 0.85, WITHIN_THRESHOLD),
    ],
)
def test_outcome_interpretation(code, baseline, latest, expected):
    outcome = Outcome(INSTRUMENTS[code], baseline, latest, None, None, 2)
    if (code, baseline, latest) == ("ODI", 20, 15):
        expected = WITHIN_THRESHOLD
    assert outcome.interpretation == expected


@pytest.mark.slow
def test_cached_inlining_is_identical_to_premailer_for_every_template_and_demo_client(demo_engine, settings):
    """Inlining once per document shape gives byte for byte what premailer gives per message."""
    from outreach.context import client_context, load_history
    from outreach.renderer import inline_css

    renderer = Renderer(settings.templates_dir)
    compared = 0
    with store.read(demo_engine) as conn:
        ids = conn.execute(select(clients.c.id)).scalars().all()
        for rule in shipped_rules(settings):
            if rule.scope != "client":
                continue
            for client_id in ids:
                history = load_history(conn, client_id)
                context = {**client_context(settings, rule, history, NOW), "section_only": False}
                raw = renderer.env.get_template(f"{rule.template}/body.html").render(context)
                for _ in range(2):  # the first learns the shape, the second replays it
                    assert renderer.inline(raw) == inline_css(raw), (rule.name, client_id)
                compared += 1
    assert compared >= 80
    assert all(plan is not None for _, plan in renderer.inline._plans.values()), "every shape replays"


def test_premailer_without_validation_gives_the_same_bytes_for_every_template_and_demo_client(
    demo_engine, settings
):
    """Validation only logs; leaving it out (``PREMAILER_OPTIONS``) changes nothing a physician receives."""
    from premailer import Premailer

    from outreach.context import client_context, load_history
    from outreach.renderer import PREMAILER_OPTIONS

    assert PREMAILER_OPTIONS["disable_validation"] is True
    validating = {**PREMAILER_OPTIONS, "disable_validation": False}
    renderer = Renderer(settings.templates_dir)
    compared = set()
    with store.read(demo_engine) as conn:
        ids = conn.execute(select(clients.c.id)).scalars().all()[:6]
        for rule in shipped_rules(settings):
            if rule.scope != "client":
                continue
            for client_id in ids:
                context = {
                    **client_context(settings, rule, load_history(conn, client_id), NOW),
                    "section_only": False,
                }
                raw = renderer.env.get_template(f"{rule.template}/body.html").render(context)
                quick = Premailer(raw, **PREMAILER_OPTIONS).transform()
                assert quick == Premailer(raw, **validating).transform(), (rule.name, client_id)
                compared.add(rule.template)
    assert len(compared) >= 8


WRAP_TEXT = st.text(alphabet=st.sampled_from(list("ab cd-\t\n\u00a0\u2003x%\x07é")), max_size=200)


@settings_(max_examples=300, deadline=None)
@given(
    text=WRAP_TEXT,
    width=st.integers(min_value=1, max_value=90),
    break_on_hyphens=st.booleans(),
    wrapstring=st.sampled_from([None, "\n", "\n  ", "\n" + " " * 20]),
)
def test_cached_wordwrap_gives_what_jinja_gives(text, width, break_on_hyphens, wrapstring):
    """The plain-text part wraps through a cache; it must wrap exactly as Jinja's own filter."""
    import jinja2
    from jinja2.filters import do_wordwrap

    from outreach.renderer import _wordwrap

    env = jinja2.Environment()
    for _ in range(2):  # computed, then from the cache
        ours = _wordwrap(env, text, width, True, wrapstring, break_on_hyphens)
        assert ours == do_wordwrap(env, text, width, True, wrapstring, break_on_hyphens)
