"""One consent rule for the planner, the gate and ``outreach loops``."""

from __future__ import annotations

import json
from datetime import date

import pytest

from outreach.consent import consent_problem
from tests.conftest import checked_cli, smtp_settings

TODAY = date(2026, 11, 24)


@pytest.mark.parametrize(
    ("given", "expires", "revoked", "problem"),
    [
        (date(2026, 11, 1), None, None, None),
        (None, None, None, "no consent"),
        (date(2026, 12, 1), None, None, "not yet in effect"),
        (date(2026, 1, 1), date(2026, 11, 23), None, "expired on 2026-11-23"),
        (date(2026, 1, 1), date(2026, 11, 24), None, None),  # the last day still counts
        (date(2026, 1, 1), None, date(2026, 11, 24), "revoked on 2026-11-24"),
        (date(2026, 1, 1), None, date(2026, 11, 25), None),  # revoked from tomorrow
    ],
)
def test_consent_problem(given, expires, revoked, problem):
    found = consent_problem(given, expires, revoked, TODAY)
    assert (found is None) if problem is None else (problem in found)


def test_loops_call_an_expired_consent_blocked_as_the_planner_does(run_cli, settings, smtp_server, tmp_path):
    cli = checked_cli(run_cli, smtp_settings(settings, smtp_server))
    cli("init")
    now = "2026-11-23T09:00:00-05:00"
    (tmp_path / "p.csv").write_text("email,name,credentials\nr.osei@ortho.example.org,Ruth Osei,MD\n")
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n"
        "E-1,Eva,Ng,r.osei@ortho.example.org,2026-11-01,Left TKA,2026-01-01,referred\n"
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", now)
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", now)
    cli("client", "consent", "E-1", "--on", "2026-01-01", "--expires", "2026-11-20", "--now", now)
    at = "2026-11-23T10:00:00-05:00"
    cli("event", "add", "E-1", "initial_assessment", "--at", at, "--now", at)

    loops = json.loads(cli("loops", "--format", "json", "--now", at).stdout)
    [report] = [lp for lp in loops if lp["client_ref"] == "E-1" and "assessment" in lp["loop"]]
    assert report["state"] == "blocked" and "expired on 2026-11-20" in report["detail"]
