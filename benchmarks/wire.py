"""End to end at the wire's speed (issue 15): the service as a process, against bare smtplib.

Run by ``benchmarks.bench`` after its other phases (they are measured on the
practice exactly as before; these only add to it):

1. end to end: ``scale.wire`` new referrals, each from a new physician, so
   that many acknowledgements are due; ``outreach run --once`` as a
   subprocess (start-up, plan, render, inline, store, send, record) sends
   them to the counting server, on one connection; then a second, equal set
   of referrals with ``OUTREACH_SMTP_CONNECTIONS=4``; last, a third set on
   one connection to a server that does not offer PIPELINING. The counting
   server offers it, as Postfix, Exim and the big providers do; outreach
   uses it, bare smtplib does not, so the last figure shows what it is worth;
2. the ceilings, in the same run and to the same server: bare smtplib sends
   the first set's emails, prebuilt, on 1, 2 and 4 connections (a thread and
   an ``smtplib.SMTP`` each);
3. a reference: django-post_office (the ``bench`` extra) queues the same
   emails in its own SQLite database, rendering a template at queue time, and
   sends its queue to the same server;
4. PostgreSQL only: ``scale.services`` urgent emails queued directly, drained
   by one ``outreach run`` service, then a fresh queue by three at once; the
   server counts every Message-ID, so each must have arrived exactly once.

One physician per referral: an acknowledgement is normal mail, and two to
one physician would leave as one digest (``outreach.digest``), which is not
the burst of N emails these figures are about.
"""

from __future__ import annotations

import compileall
import importlib.util
import logging
import multiprocessing
import random
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from benchmarks.bench import (
    CONDITIONS,
    FIRST_NAMES,
    LAST_NAMES,
    NOW,
    BenchError,
    CountingServer,
    Figure,
    Loader,
    _event_row,
    log_step,
    outreach_command,
    physician_row,
    send_bare,
    service_env,
    sync_sequences,
)
from outreach import store
from outreach.compose import build_email
from outreach.models import (
    PENDING,
    PRIORITIES,
    SENT,
    clients,
    events,
    message_events,
    messages,
    physicians,
)
from outreach.outbox import insert_messages, trail_many, with_body
from outreach.settings import SOURCE_ROOT, Settings

CEILING_CONNECTIONS = (1, 2, 4)
WIRE_CONNECTIONS = 4  # the several-connections end-to-end figure
SERVICES = 3
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


# --- what the end-to-end runs send -----------------------------------------------------------


class Busy:
    """How busy the machine's cores were over a stretch, in percent (``/proc/stat``).

    Every figure here shares two cores between the sender, the server, the
    database and the plan: a figure taken with the cores all busy is bound
    by them, not by the code.
    """

    def __enter__(self) -> Busy:
        self._start = cpu_ticks()
        self.pct: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = (end - start for start, end in zip(self._start, cpu_ticks(), strict=True))
        self.pct = 100 * busy / total if total else None


def cpu_ticks() -> tuple[int, int]:
    """Busy and total ticks of all cores since boot; (0, 0) where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(n) for n in stat.readline().split()[1:9]]  # user .. steal (guests are in user)
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def referral_client(client_id: int, physician_id: int, at: datetime) -> dict:
    """A client referred at ``at``, not yet seen: only the acknowledgement is due for them."""
    rng = random.Random(client_id)
    diagnosis, precautions, goals, _ = rng.choice(CONDITIONS)
    return {
        "id": client_id,
        "ref": f"B{client_id:06d}",
        "first_name": rng.choice(FIRST_NAMES),
        "last_name": rng.choice(LAST_NAMES),
        "physician_id": physician_id,
        "referral_date": at.date(),
        "diagnosis": diagnosis,
        "precautions": precautions,
        "goals": goals,
        "consent_date": None,  # an acknowledgement carries no health information: none needed
        "consent_expires": None,
        "consent_revoked_on": None,
        "status": "referred",
        "plan": "",
        "next_reassessment": None,
        "created_at": at,
        "updated_at": at,
    }


def add_referrals(engine: Engine, count: int) -> range:
    """``count`` new physicians, each referring one new client an hour ago; their ids."""
    with store.read(engine) as conn:
        first = [
            (conn.execute(select(func.max(table.c.id))).scalar() or 0) + 1
            for table in (physicians, clients, events)
        ]
    received = NOW - timedelta(hours=1)
    loader = Loader(engine)
    for n in range(count):
        physician_id, client_id, event_id = (start + n for start in first)
        loader.add(physicians, physician_row(physician_id))
        loader.add(clients, referral_client(client_id, physician_id, received))
        loader.add(events, _event_row(event_id, client_id, "referral_received", received, "Referral by fax"))
    loader.flush()
    sync_sequences(engine)
    return range(first[0], first[0] + count)


def of_physicians(ids: range) -> Any:
    return messages.c.physician_id.between(ids.start, ids.stop - 1)


def wire_env(settings: Settings) -> dict[str, str]:
    """``outreach`` on the bench database, sending by SMTP as ``settings`` say."""
    env = service_env(settings)
    env.update(
        OUTREACH_EMAIL_BACKEND="smtp",
        OUTREACH_SMTP_HOST=settings.smtp_host,
        OUTREACH_SMTP_PORT=str(settings.smtp_port),
        OUTREACH_SMTP_SECURITY=settings.smtp_security,
        OUTREACH_SMTP_CONNECTIONS=str(settings.smtp_connections),
        OUTREACH_PRACTICE_NAME=settings.practice_name,
        OUTREACH_PRACTICE_ADDRESS=settings.practice_address,
        OUTREACH_SENDER_NAME=settings.sender_name,
        OUTREACH_SENDER_CREDENTIALS=settings.sender_credentials,
    )
    return env


def run_once(engine: Engine, settings: Settings, folder: Path, ids: range) -> float:
    """``outreach run --once`` as a subprocess; its wall time, once every email is checked sent."""
    command = [*outreach_command(), "run", "--once", "--now", NOW.isoformat()]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            env=wire_env(settings),
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"outreach run --once did not finish in {exc.timeout:g} s") from None
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"outreach run --once exited with {done.returncode}:\n{done.stderr[-2000:]}")
    with store.read(engine) as conn:
        found: dict[str, int] = dict(
            conn.execute(
                select(messages.c.status, func.count()).where(of_physicians(ids)).group_by(messages.c.status)
            ).all()
        )
    if found != {SENT: len(ids)}:
        raise BenchError(f"outreach run --once: {len(ids)} acknowledgements due, the log says {found}")
    return seconds


def built_for(engine: Engine, settings: Settings, ids: range) -> list[tuple[str, bytes]]:
    """The emails sent to these physicians, as (recipient, bytes), built as the dispatcher builds them."""
    with store.read(engine) as conn:
        rows = conn.execute(with_body().where(of_physicians(ids)).order_by(messages.c.id)).all()
    return [(row.recipient, build_email(row, settings, NOW).data) for row in rows]


# --- the ceilings -------------------------------------------------------------------------------


def measure_ceiling_on(settings: Settings, built: list[tuple[str, bytes]], connections: int) -> float:
    """Bare smtplib on ``connections`` connections at once (a thread each); seconds for all."""
    shares = [built[n::connections] for n in range(connections)]
    with ThreadPoolExecutor(max_workers=connections) as pool:
        start = time.perf_counter()
        for future in [pool.submit(send_bare, settings, share) for share in shares]:
            future.result()
        return time.perf_counter() - start


def measure_ceilings(
    settings: Settings, built: list[tuple[str, bytes]], server: CountingServer, received: int, runs: int
) -> tuple[dict, int]:
    """Each ceiling ``runs`` times, in turn (1, 2, 4, 1, 2, 4...): the median of each, and of how busy
    the cores were; the server's count."""
    times: dict[int, list[float]] = {c: [] for c in CEILING_CONNECTIONS}
    busy: dict[int, list[float]] = {c: [] for c in CEILING_CONNECTIONS}
    for _ in range(runs):
        for connections in CEILING_CONNECTIONS:
            with Busy() as share:
                times[connections].append(measure_ceiling_on(settings, built, connections))
            if share.pct is not None:
                busy[connections].append(share.pct)
            received = expect_received(server, received, len(built), f"bare smtplib on {connections}")
    r = {f"ceiling_{c}_s": statistics.median(t) for c, t in times.items()}
    r |= {f"ceiling_{c}_busy": statistics.median(b) for c, b in busy.items() if b}
    return r, received


def expect_received(server: CountingServer, before: int, count: int, what: str) -> int:
    """The server's count went up by exactly ``count``; the new count."""
    now, _ = server.count()
    if now - before != count:
        raise BenchError(f"{what}: {count} sent, the counting server received {now - before}")
    return now


# --- the end-to-end phase -------------------------------------------------------------------


def measure_wire(engine: Engine, settings: Settings, folder: Path, count: int, runs: int) -> dict:
    """Items 1 to 3 of the module: end to end on 1 and 4 connections, the ceilings, the reference."""
    compileall.compile_dir(str(SOURCE_ROOT / "outreach"), quiet=1)  # as installed: no recompiling
    server = CountingServer()
    try:
        settings = settings.with_(smtp_port=server.port)
        r = wire_runs(engine, settings, folder, count, runs, server)
    finally:
        server.stop()
    return r | wire_rates(r)


def wire_runs(
    engine: Engine, settings: Settings, folder: Path, count: int, runs: int, server: CountingServer
) -> dict:
    r: dict[str, Any] = {"wire": count}
    first = add_referrals(engine, count)
    log_step(f"outreach run --once: {count} acknowledgements on 1 connection")
    with Busy() as busy:
        r["wire_1_s"] = run_once(engine, settings.with_(smtp_connections=1), folder, first)
    r["wire_1_busy"] = busy.pct
    received = expect_received(server, 0, count, "outreach run --once")
    built = built_for(engine, settings, first)
    r["wire_bytes"] = sum(len(data) for _, data in built)
    log_step(f"bare smtplib on {', '.join(map(str, CEILING_CONNECTIONS))} connections, {runs} time(s) each")
    ceilings, received = measure_ceilings(settings, built, server, received, runs)
    r.update(ceilings)
    second = add_referrals(engine, count)
    log_step(f"outreach run --once: {count} acknowledgements on {WIRE_CONNECTIONS} connections")
    with Busy() as busy:
        r[f"wire_{WIRE_CONNECTIONS}_s"] = run_once(
            engine, settings.with_(smtp_connections=WIRE_CONNECTIONS), folder, second
        )
    r[f"wire_{WIRE_CONNECTIONS}_busy"] = busy.pct
    received = expect_received(server, received, count, f"outreach run --once on {WIRE_CONNECTIONS}")
    log_step("reference: django-post_office")
    r.update(measure_post_office(engine, settings, folder, first, server, received))
    log_step(f"outreach run --once: {count} acknowledgements, 1 connection, a server without PIPELINING")
    r["wire_plain_s"] = run_without_pipelining(engine, settings.with_(smtp_connections=1), folder, count)
    return r


def run_without_pipelining(engine: Engine, settings: Settings, folder: Path, count: int) -> float:
    """``run --once`` against a server that does not offer PIPELINING (smtplib never uses it either)."""
    plain = CountingServer(pipelining=False)
    try:
        ids = add_referrals(engine, count)
        seconds = run_once(engine, settings.with_(smtp_port=plain.port), folder, ids)
        expect_received(plain, 0, count, "outreach run --once without PIPELINING")
    finally:
        plain.stop()
    return seconds


def wire_rates(r: dict) -> dict:
    count = r["wire"]
    rates = {f"ceiling_{n}_rate": count / r[f"ceiling_{n}_s"] for n in CEILING_CONNECTIONS}
    for n in (1, WIRE_CONNECTIONS):
        rates[f"wire_{n}_rate"] = count / r[f"wire_{n}_s"]
        rates[f"wire_{n}_pct"] = 100 * rates[f"wire_{n}_rate"] / rates[f"ceiling_{n}_rate"]
    rates["ceiling_gain"] = rates[f"ceiling_{WIRE_CONNECTIONS}_rate"] / rates["ceiling_1_rate"]
    if "wire_plain_s" in r:
        rates["wire_plain_rate"] = count / r["wire_plain_s"]
        rates["wire_plain_pct"] = 100 * rates["wire_plain_rate"] / rates["ceiling_1_rate"]
    if "post_office_s" in r:
        rates["post_office_rate"] = count / r["post_office_s"]
    return rates


# --- the reference: django-post_office, in a process of its own ----------------------------


def post_office_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("django", "post_office"))


def measure_post_office(
    engine: Engine, settings: Settings, folder: Path, ids: range, server: CountingServer, received: int
) -> dict:
    """django-post_office queues and sends the emails of ``ids`` to the same server; or why not."""
    if not post_office_installed():
        return {"post_office": NOT_INSTALLED}
    with store.read(engine) as conn:
        rows = conn.execute(with_body().where(of_physicians(ids)).order_by(messages.c.id)).all()
    emails = [
        {"to": row.recipient, "subject": row.subject, "text": row.text, "html": row.html} for row in rows
    ]
    spec = {"folder": str(folder), "port": settings.smtp_port, "from": settings.from_addr, "emails": emails}
    context = multiprocessing.get_context("spawn")  # Django's global settings stay out of the bench
    pipe, child_end = context.Pipe()
    child = context.Process(target=post_office_child, args=(spec, child_end), daemon=True)
    child.start()
    child_end.close()
    try:
        result = pipe.recv() if pipe.poll(1800) else {"error": "no answer in 30 minutes"}
    except EOFError:
        result = {"error": f"its process exited with {child.exitcode}"}
    finally:
        child.join(30)
        if child.is_alive():
            child.terminate()
            child.join(5)
        pipe.close()
    if "error" in result:
        log_step(f"django-post_office failed: {result['error']}")
        return {"post_office": f"failed: {result['error']}"}
    expect_received(server, received, len(emails), "django-post_office")
    if result["sent"] != len(emails):
        raise BenchError(f"django-post_office sent {result['sent']} of {len(emails)}")
    return {
        "post_office": f"django-post_office {result['version']}",
        "post_office_queue_s": result["queue_s"],
        "post_office_send_s": result["send_s"],
        "post_office_s": result["queue_s"] + result["send_s"],
    }


def post_office_child(spec: dict, pipe: Connection) -> None:
    """Process entry point: Django configured in process, the queue in its own SQLite file."""
    try:
        pipe.send(post_office_run(spec))
    except Exception as exc:  # a reference that cannot run is reported, never a crash
        first_line = (str(exc).strip().splitlines() or [""])[0]
        pipe.send({"error": f"{type(exc).__name__}: {first_line}"})


# Django and post_office ship no type information, and without the extra they are not there
# at all: their imports below are ignored by mypy either way.


def configure_django(folder: Path, port: int, sender: str) -> None:
    """Django set up in this process: post_office alone, its SQLite file, SMTP to the counting server."""
    import django  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from django.conf import settings  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from django.core.management import call_command  # type: ignore[import-untyped, import-not-found, unused-ignore]

    settings.configure(
        INSTALLED_APPS=["post_office"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(folder / "post_office.db")}
        },
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        DEFAULT_FROM_EMAIL=sender,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
    )
    django.setup()
    call_command("migrate", verbosity=0)
    logging.getLogger("post_office").setLevel(logging.WARNING)  # else a line for every batch


def post_office_run(spec: dict) -> dict:
    """Queue (a template rendered at queue time, as ``render_on_delivery=False`` does) and send.

    The template passes our rendered subject, text and HTML through, so the
    same bytes travel: what is measured is post_office's queue and sender.
    Django's start-up and the migrations are not timed.
    """
    folder = Path(spec["folder"])
    configure_django(folder, spec["port"], spec["from"])
    from django.utils.safestring import mark_safe  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from post_office import mail  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from post_office.models import STATUS, Email, EmailTemplate  # type: ignore[import-untyped, import-not-found, unused-ignore]

    template = EmailTemplate.objects.create(
        name="bench", subject="{{ subject }}", content="{{ text }}", html_content="{{ html }}"
    )
    queue = [
        {
            "recipients": [email["to"]],
            "sender": spec["from"],
            "template": template,
            "context": {key: mark_safe(email[key]) for key in ("subject", "text", "html")},
            "render_on_delivery": False,
        }
        for email in spec["emails"]
    ]
    start = time.perf_counter()
    mail.send_many(queue)
    queue_s = time.perf_counter() - start
    start = time.perf_counter()
    mail.send_queued_mail_until_done(lockfile=str(folder / "post_office"))  # as its send_queued_mail command
    send_s = time.perf_counter() - start
    sent = Email.objects.filter(status=STATUS.sent).count()
    return {"version": version("django-post_office"), "queue_s": queue_s, "send_s": send_s, "sent": sent}


# --- three services on one PostgreSQL database -----------------------------------------------


COPIED_FRESH = {
    "status": PENDING,
    "attempts": 0,
    "not_before": None,
    "next_attempt_at": NOW - timedelta(minutes=1),
    "lease_until": None,
    "claimed_by": None,
    "last_error": None,
    "smtp_response": None,
    "sent_at": None,
    "redirected_to": None,
    "body_removed_at": None,
    "body_sha256": None,
    "created_at": NOW,
    "updated_at": NOW,
}


def urgent_sent(engine: Engine) -> list[int]:
    """The urgent emails the cycle sent (``DUE_KIND``): what the services' queues are copies of."""
    with store.read(engine) as conn:
        return list(
            conn.execute(
                select(messages.c.id)
                .where(messages.c.priority == PRIORITIES["urgent"], messages.c.sent_at > NOW)
                .order_by(messages.c.id)
            ).scalars()
        )


def queue_copies(engine: Engine, sources: list[int], count: int, tag: str) -> list[int]:
    """``count`` pending copies of those emails (new dedupe key and Message-ID), queued directly."""
    made: list[int] = []
    order = [sources[n % len(sources)] for n in range(count)]
    for first in range(0, count, 1000):
        chunk = order[first : first + 1000]
        with store.read(engine) as conn:
            found = {
                row.id: row._asdict()
                for row in conn.execute(with_body().where(messages.c.id.in_(set(chunk))))
            }
        rows = []
        for n, source in enumerate(chunk, start=first):
            row = {k: v for k, v in found[source].items() if k != "id"} | COPIED_FRESH
            row["dedupe_key"] = f"bench-services:{tag}:{n}"
            row["message_id"] = f"<bench-{tag}-{n}@bench-rehab.example.org>"
            rows.append({k: v for k, v in row.items() if k in messages.c or k in ("html", "text")})
        with store.write(engine) as conn:
            ids = insert_messages(conn, rows)
            if None in ids:
                raise BenchError("a copy for the services' queue was already queued: not a fresh database")
            trail_many(conn, NOW, [(i, "queued", "") for i in ids if i is not None])
        made += [i for i in ids if i is not None]
    return made


class Service:
    """``outreach run`` in its own process, its log in a file."""

    def __init__(self, env: dict[str, str], folder: Path, name: str):
        self.log_path = folder / f"{name}.log"
        with self.log_path.open("wb") as log:
            command = [*outreach_command(), "run", "--now", NOW.isoformat()]
            self.process = subprocess.Popen(
                command, env=env, cwd=folder, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def stop(self) -> int:
        """SIGTERM once it is up (before its handler is in place, SIGTERM would simply kill it)."""
        deadline = time.monotonic() + 60
        while self.process.poll() is None and "outreach running" not in self.log():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def all_sent(engine: Engine, ids: list[int]) -> bool:
    """Whether every one of ``ids`` is recorded sent.

    Looks from the highest id down, where the services, claiming in id
    order, arrive last: one row read until the last batches, a few hundred
    then. Counting all of them twenty times a second took about a fifth of
    a core from the services it was timing.
    """
    with store.read(engine) as conn:
        unsent = conn.execute(
            select(messages.c.id)
            .where(messages.c.id.between(ids[0], ids[-1]), messages.c.status != SENT)
            .order_by(messages.c.id.desc())
            .limit(1)
        ).first()
    return unsent is None


def drain(
    engine: Engine, settings: Settings, folder: Path, ids: list[int], services: int
) -> tuple[float, float | None, dict]:
    """Start ``services`` services at once; seconds until every one of ``ids`` is recorded sent, how
    busy the cores were meanwhile, and how many each service sent."""
    env = wire_env(settings)
    start = time.perf_counter()
    running: list[Service] = []
    try:
        with Busy() as busy:
            running += [Service(env, folder, f"service-{services}-{n}") for n in range(services)]
            wait_for(lambda: all_sent(engine, ids), max(120.0, len(ids) / 10), f"{len(ids)} sent")
        seconds = time.perf_counter() - start
    finally:
        codes = [service.stop() for service in running]
    for service, code in zip(running, codes, strict=True):
        if code != 0 or "Traceback" in service.log():
            raise BenchError(f"an outreach run service exited with {code}:\n{service.log()[-2000:]}")
    with store.read(engine) as conn:
        senders = Counter(
            conn.execute(
                select(messages.c.claimed_by).where(messages.c.id.between(ids[0], ids[-1]))
            ).scalars()
        )
    return seconds, busy.pct, {str(k): v for k, v in senders.items()}


def check_exactly_once(engine: Engine, ids: list[int], received: Counter[str]) -> None:
    """The server saw each Message-ID once, and the trail has one "sent" for each message."""
    with store.read(engine) as conn:
        expected = set(
            conn.execute(
                select(messages.c.message_id).where(messages.c.id.between(ids[0], ids[-1]))
            ).scalars()
        )
        trail = Counter(
            conn.execute(
                select(message_events.c.message_id).where(
                    message_events.c.message_id.between(ids[0], ids[-1]), message_events.c.action == "sent"
                )
            ).scalars()
        )
    twice = sum(1 for n in received.values() if n > 1)
    missing = len(expected - set(received))
    stray = len(set(received) - expected)
    if twice or missing or stray or len(trail) != len(ids) or set(trail.values()) != {1}:
        raise BenchError(
            f"not exactly once: {twice} received twice or more, {missing} never received, {stray} unknown, "
            f"{len(trail)} of {len(ids)} with a sent trail ({sum(trail.values())} entries)"
        )


def measure_services(engine: Engine, settings: Settings, folder: Path, count: int) -> dict:
    """Item 4: one service, then three, each draining ``count`` freshly queued emails."""
    sources = urgent_sent(engine)
    if not sources:
        raise BenchError("no urgent email was sent earlier in the run: nothing to copy for the services")
    server = CountingServer(by_message_id=True)
    r: dict[str, Any] = {"services_queued": count}
    try:
        settings = settings.with_(smtp_port=server.port, smtp_connections=1)
        for services in (1, SERVICES):
            ids = queue_copies(engine, sources, count, f"s{services}")
            if ids[-1] - ids[0] + 1 != len(ids):
                raise BenchError(
                    "the services' queue is not one run of ids: another writer is on the database"
                )
            log_step(f"{services} outreach run service(s) on one queue of {count}")
            r[f"services_{services}_s"], r[f"services_{services}_busy"], r[f"services_{services}_senders"] = (
                drain(engine, settings, folder, ids, services)
            )
            check_exactly_once(engine, ids, server.message_ids())
    finally:
        server.stop()
    r["services_1_rate"] = count / r["services_1_s"]
    r[f"services_{SERVICES}_rate"] = count / r[f"services_{SERVICES}_s"]
    r["services_gain"] = r[f"services_{SERVICES}_rate"] / r["services_1_rate"]
    return r


# --- the figures ----------------------------------------------------------------------------


def wire_figures(r: dict) -> dict[str, Figure]:
    """The figures of this module that were measured, with their targets."""
    f: dict[str, Figure] = {}
    if "wire" in r:
        n, many = r["wire"], WIRE_CONNECTIONS
        f["wire_msgs_per_s"] = Figure(
            f"outreach run --once, {n:,} due, 1 connection", r["wire_1_rate"], "msg/s"
        )
        f["wire_vs_ceiling_pct"] = Figure("run --once / bare smtplib, 1 connection", r["wire_1_pct"], "%",
                                          ">= 60 %", r["wire_1_pct"] >= 60)  # fmt: skip
        f[f"wire{many}_msgs_per_s"] = Figure(f"outreach run --once, {n:,} due, {many} connections",
                                             r[f"wire_{many}_rate"], "msg/s")  # fmt: skip
        f[f"wire{many}_vs_ceiling_pct"] = Figure(f"run --once / bare smtplib, {many} connections",
                                                 r[f"wire_{many}_pct"], "%", ">= 60 %",
                                                 r[f"wire_{many}_pct"] >= 60)  # fmt: skip
        if "wire_plain_pct" in r:
            f["wire_plain_vs_ceiling_pct"] = Figure(
                "run --once / bare smtplib, 1 connection, server without PIPELINING", r["wire_plain_pct"], "%"
            )
        for c in CEILING_CONNECTIONS:
            label = f"bare smtplib, {c} connection{'s' if c > 1 else ''}, same {n:,}"
            f[f"ceiling{c}_msgs_per_s"] = Figure(label, r[f"ceiling_{c}_rate"], "msg/s")
        f["ceiling_gain"] = Figure(f"bare smtplib, {many} connections / 1", r["ceiling_gain"], "x")
        measured = "post_office_rate" in r
        f["post_office_msgs_per_s"] = Figure(
            f"reference: {r['post_office'] if measured else 'django-post_office'}, queue + send",
            r.get("post_office_rate"), "msg/s", note="" if measured else r["post_office"]
        )  # fmt: skip
    if "services_queued" in r:
        n = r["services_queued"]
        f["services1_msgs_per_s"] = Figure(
            f"one outreach run service, {n:,} queued", r["services_1_rate"], "msg/s"
        )
        f[f"services{SERVICES}_msgs_per_s"] = Figure(f"three services, one PostgreSQL, {n:,} queued",
                                                     r[f"services_{SERVICES}_rate"], "msg/s")  # fmt: skip
        f["services_gain"] = Figure("three services / one", r["services_gain"], "x",
                                    ">= 1.5x", r["services_gain"] >= 1.5)  # fmt: skip
    f.update(busy_figures(r))
    return f


BUSY_FIGURES = (
    ("wire_1_busy", "cores busy: run --once, 1 connection"),
    (f"wire_{WIRE_CONNECTIONS}_busy", f"cores busy: run --once, {WIRE_CONNECTIONS} connections"),
    *(
        (f"ceiling_{c}_busy", f"cores busy: bare smtplib, {c} connection{'s' if c > 1 else ''}")
        for c in CEILING_CONNECTIONS
    ),
    ("services_1_busy", "cores busy: one service"),
    (f"services_{SERVICES}_busy", "cores busy: three services"),
)


def busy_figures(r: dict) -> dict[str, Figure]:
    """How busy the cores were during each figure above that was measured: what bounds it."""
    return {key: Figure(label, r[key], "%") for key, label in BUSY_FIGURES if r.get(key) is not None}
