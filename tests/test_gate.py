"""The last gate before the wire: what changed after a message was queued stops it there.

Each test queues mail, changes the world (consent, referring physician,
opt-out, a refused address), then runs ``outreach run --once`` against a
real SMTP server and reads what arrived and what the log says.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from outreach import store
from outreach.backends import get_backend
from outreach.backends.base import Backend
from outreach.dispatcher import GATE_FRESH_SECONDS, Dispatcher
from outreach.models import clients, physicians
from tests.conftest import NOW, checked_cli, smtp_settings
from tests.factories import message, queue_message

OSEI = "r.osei@ortho.example.org"
PARK = "l.park@fm.example.org"
MORNING = "2026-11-03T10:00:00-05:00"  # a Tuesday morning in New York: inside the send window
EVENING = "2026-11-02T22:00:00-05:00"  # the Monday before: mail waits for the window


@pytest.fixture
def clinic(run_cli, settings, engine, smtp_server, tmp_path):
    """Two physicians in New York, four consenting clients of Dr Osei, through the CLI.

    The database is the suite's migrated one (``engine``): ``outreach init`` has tests of its own.
    """
    cli = checked_cli(run_cli, smtp_settings(settings, smtp_server))
    now = "2026-11-02T09:00:00-05:00"
    (tmp_path / "p.csv").write_text(
        "email,name,credentials,timezone\n"
        f"{OSEI},Ruth Osei,MD,America/New_York\n{PARK},Lee Park,DO,America/New_York\n"
    )
    cli("import", "physicians", str(tmp_path / "p.csv"), "--now", now)
    import_clients(cli, tmp_path, {ref: OSEI for ref in ("K-1", "K-2", "K-3", "K-4")}, now)
    return cli, smtp_server, tmp_path


def import_clients(cli, tmp_path, doctors: dict[str, str], now: str) -> None:
    rows = "".join(
        f"{ref},First{ref[-1]},Last{ref[-1]},{doctor},2026-10-01,Left knee pain,2026-10-01,referred\n"
        for ref, doctor in doctors.items()
    )
    (tmp_path / "c.csv").write_text(
        "ref,first_name,last_name,physician_email,referral_date,diagnosis,consent_date,status\n" + rows
    )
    cli("import", "clients", str(tmp_path / "c.csv"), "--now", now)


def assess(cli, ref, at=EVENING):
    cli("event", "add", ref, "initial_assessment", "--at", at, "--now", at)


def entries(cli) -> list[dict]:
    return json.loads(cli("log", "--format", "json", "--limit", "0").stdout)


def by_ref(cli, ref) -> list[dict]:
    return [e for e in entries(cli) if e["client_ref"] == ref]


def everything_sent(server) -> str:
    """Every byte that reached the server, decoded: what a physician could read."""
    return "\n".join(r.message.as_string() for r in server.received)


def digest_of(cli, refs: tuple[str, ...]) -> dict:
    """Plan at the window's opening: the updates about ``refs`` are combined into one digest."""
    cli("plan", "--now", MORNING)
    [digest] = [e for e in entries(cli) if e["rule"] == "digest" and e["status"] == "pending"]
    assert {e["client_ref"] for e in entries(cli) if e["digest_id"] == digest["id"]} == set(refs)
    return digest


def test_revoked_consent_takes_an_update_out_of_a_queued_digest(clinic):
    cli, server, _ = clinic
    for ref in ("K-1", "K-2", "K-3"):
        assess(cli, ref)
    digest = digest_of(cli, ("K-1", "K-2", "K-3"))

    cli("client", "revoke-consent", "K-1", "--now", MORNING)
    cli("run", "--once", "--now", MORNING)

    [mail] = server.received
    assert "(ref K-1)" not in everything_sent(server) and "K-1" not in mail.message["Subject"]
    assert "(ref K-2)" in everything_sent(server) and "(ref K-3)" in everything_sent(server)
    [update] = by_ref(cli, "K-1")
    assert update["status"] == "suppressed" and update["digest_id"] is None
    assert (
        "consent revoked" in update["last_error"] and f"digest message {digest['id']}" in update["last_error"]
    )
    old = next(e for e in entries(cli) if e["id"] == digest["id"])
    assert old["status"] == "cancelled" and "consent revoked" in old["last_error"]
    [new] = [e for e in entries(cli) if e["rule"] == "digest" and e["status"] == "sent"]
    assert new["sent_message_id"] == mail.message["Message-ID"]
    assert {e["client_ref"] for e in entries(cli) if e["digest_id"] == new["id"]} == {"K-2", "K-3"}


def test_a_digest_left_with_one_update_sends_it_alone(clinic):
    cli, server, _ = clinic
    for ref in ("K-1", "K-2"):
        assess(cli, ref)
    digest_of(cli, ("K-1", "K-2"))
    cli("client", "revoke-consent", "K-2", "--now", MORNING)
    cli("run", "--once", "--now", MORNING)

    [mail] = server.received
    assert mail.message["Subject"].startswith("Initial assessment report: F.L. (ref K-1)")
    assert "K-2" not in everything_sent(server)


def test_revoked_consent_stops_a_single_update_claimed_for_sending(clinic, settings, smtp_server, engine):
    """Consent revoked after the planner's last look: only the gate can stop it."""
    cli, server, _ = clinic
    assess(cli, "K-1", MORNING)
    cli("plan", "--now", MORNING)
    cli("client", "revoke-consent", "K-1", "--now", MORNING)
    cfg = smtp_settings(settings, smtp_server)
    from outreach.daemon import make_clock
    from outreach.importer import parse_datetime

    clock = make_clock(parse_datetime(MORNING, "now", cfg.tz))
    report = Dispatcher(engine, cfg, get_backend(cfg), clock).send_due()
    assert server.received == [] and report.sent == []
    [update] = by_ref(cli, "K-1")
    assert update["status"] == "suppressed" and "consent revoked" in update["last_error"]
    shown = cli("log", "show", str(update["id"])).stdout
    assert "suppressed" in shown and "consent revoked" in shown


def test_a_client_moved_to_another_physician_is_reported_to_the_new_one_only(clinic):
    cli, server, tmp_path = clinic
    assess(cli, "K-1")
    cli("plan", "--now", EVENING)  # queued for Dr Osei, waiting for her send window
    [queued] = by_ref(cli, "K-1")
    assert queued["to"] == OSEI and queued["status"] == "pending"

    import_clients(cli, tmp_path, {"K-1": PARK}, MORNING)  # the client now sees Dr Park
    cli("run", "--once", "--now", MORNING)

    assert [r.rcpt_tos for r in server.received] == [[PARK]]
    text = server.received[0].message.get_body(("plain",)).get_content()
    assert "Dear Dr. Park" in text and "Left knee pain" in text
    old, new = sorted(by_ref(cli, "K-1"), key=lambda e: e["id"])
    assert old["status"] == "cancelled" and PARK in old["last_error"]
    assert new["status"] == "sent" and new["to"] == PARK


def test_a_moved_client_leaves_a_digest_to_the_former_physician(clinic):
    cli, server, tmp_path = clinic
    for ref in ("K-1", "K-2", "K-3"):
        assess(cli, ref)
    digest_of(cli, ("K-1", "K-2", "K-3"))
    import_clients(cli, tmp_path, {"K-1": PARK}, MORNING)
    cli("run", "--once", "--now", MORNING)

    to_osei = [r.message for r in server.received if r.rcpt_tos == [OSEI]]
    to_park = [r.message for r in server.received if r.rcpt_tos == [PARK]]
    assert len(to_osei) == 1 and "K-1" not in to_osei[0].as_string()
    assert "(ref K-2)" in to_osei[0].as_string() and "(ref K-3)" in to_osei[0].as_string()
    assert len(to_park) == 1 and "(ref K-1)" in to_park[0]["Subject"]


def test_opt_out_after_a_quarterly_summary_was_queued_stops_it(demo_engine, settings, run_cli, smtp_server):
    cfg = smtp_settings(settings, smtp_server)
    doctor = "m.alvarez@riverside-ortho.example.org"
    quarter_night = "2027-01-05T23:00:00-05:00"  # the summary is queued, waiting for the window
    assert run_cli("plan", "--now", quarter_night, env_settings=cfg).exit_code == 0
    queued = json.loads(run_cli("log", "--format", "json", "--physician", doctor, env_settings=cfg).stdout)
    [summary] = [e for e in queued if e["rule"] == "quarterly_summary"]
    assert summary["status"] == "pending"

    assert run_cli("physician", "opt-out", doctor, env_settings=cfg).exit_code == 0
    result = run_cli("run", "--once", "--now", "2027-01-06T10:00:00-05:00", env_settings=cfg)
    assert result.exit_code == 0, result.output
    to_her = [r.message for r in smtp_server.received if r.rcpt_tos == [doctor]]
    assert not any("Quarterly" in m["Subject"] for m in to_her)
    assert any("Quarterly" in r.message["Subject"] for r in smtp_server.received if r.rcpt_tos != [doctor])
    shown = run_cli("log", "show", str(summary["id"]), env_settings=cfg).stdout
    assert "[suppressed]" in shown and "opted out" in shown


def test_an_address_refused_as_nonexistent_is_marked_and_nothing_more_goes_there(clinic, engine):
    cli, server, _ = clinic
    server.handler.refuse_rcpt[OSEI] = "550 5.1.1 No such mailbox"
    assess(cli, "K-1", MORNING)
    cli("run", "--once", "--now", MORNING)
    [first] = by_ref(cli, "K-1")
    assert first["status"] == "failed" and "5.1.1" in first["last_error"]
    with store.read(engine) as conn:
        mark = conn.execute(
            select(physicians.c.undeliverable_on, physicians.c.undeliverable_reason).where(
                physicians.c.email == OSEI
            )
        ).one()
    assert mark.undeliverable_on is not None and "5.1.1" in mark.undeliverable_reason

    server.handler.refuse_rcpt.clear()  # even if the server would take it now: the mark holds
    later = "2026-11-04T10:00:00-05:00"
    assess(cli, "K-2", later)
    cli("run", "--once", "--now", later)
    assert server.received == []
    [second] = by_ref(cli, "K-2")
    assert second["status"] == "suppressed" and "undeliverable" in second["last_error"]


def test_a_policy_refusal_does_not_mark_the_address(clinic, engine):
    """5.7.1 (relaying denied) is about us, not the mailbox: the physician stays deliverable."""
    cli, server, _ = clinic
    server.handler.refuse_rcpt[OSEI] = "550 5.7.1 Relaying denied"
    assess(cli, "K-1", MORNING)
    cli("run", "--once", "--now", MORNING)
    with store.read(engine) as conn:
        mark = conn.execute(select(physicians.c.undeliverable_on).where(physicians.c.email == OSEI)).scalar()
    assert mark is None


def test_clearing_the_undeliverable_mark_lets_new_mail_go(clinic, engine):
    cli, server, _ = clinic
    server.handler.refuse_rcpt[OSEI] = "550 5.1.1 No such mailbox"
    assess(cli, "K-1", MORNING)
    cli("run", "--once", "--now", MORNING)
    server.handler.refuse_rcpt.clear()
    assert "marked deliverable" in cli("physician", "deliverable", OSEI).stdout
    later = "2026-11-04T10:00:00-05:00"
    assess(cli, "K-2", later)
    cli("run", "--once", "--now", later)
    assert [r.rcpt_tos for r in server.received] == [[OSEI]]


def test_a_batch_going_for_more_than_a_second_is_judged_again_before_each_message(demo_engine, settings):
    """Consent withdrawn while a batch is on the wire: the messages after it in the batch stay home."""
    with store.read(demo_engine) as conn:
        consenting = conn.execute(
            select(clients.c.id, clients.c.ref, physicians.c.id.label("doctor"), physicians.c.email)
            .join(physicians, physicians.c.id == clients.c.physician_id)
            .where(clients.c.consent_date.is_not(None), clients.c.consent_revoked_on.is_(None))
            .order_by(clients.c.id)
            .limit(3)
        ).all()
    ids = [
        queue_message(demo_engine, client_id=c.id, physician_id=c.doctor, recipient=c.email)
        for c in consenting
    ]
    moment, sent = [NOW], []

    class Slow(Backend):
        """Each email takes longer than the gate's verdict stays fresh; the first one's client withdraws."""

        def _data(self, msg):
            sent.append(msg.message_id)
            if len(sent) == 1:
                with store.write(demo_engine) as conn:
                    conn.execute(
                        clients.update()
                        .where(clients.c.id.in_([c.id for c in consenting[1:]]))
                        .values(consent_revoked_on=NOW.date())
                    )
            moment[0] += timedelta(seconds=GATE_FRESH_SECONDS * 2)
            return "250 ok"

    report = Dispatcher(demo_engine, settings, Slow(), lambda: moment[0]).send_due()
    assert report.sent == [ids[0]]
    for later in ids[1:]:
        row = message(demo_engine, later)
        assert (row.status, row.reason) == ("suppressed", "consent") and "consent revoked" in row.last_error
