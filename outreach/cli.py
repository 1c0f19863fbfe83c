"""The ``outreach`` command: a thin layer over the library.

Each command parses its arguments, calls one library function and prints
the result. Errors a user can fix are one line on stderr and exit code 1;
usage errors are click's, exit code 2. ``.env`` is loaded here and only
here, and never overrides variables already set.

A command imports what it needs inside its function: ``outreach log`` must
not pay for alembic, Jinja or premailer, which only other commands use.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from dotenv import load_dotenv
from sqlalchemy.exc import SQLAlchemyError

from outreach import records, store
from outreach.errors import ImportFileError, OutreachError
from outreach.models import IMPORT_KINDS, utcnow
from outreach.review import (
    format_csv,
    format_json,
    format_table,
    list_messages,
    show_message,
    since_start,
)
from outreach.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from outreach.daemon import Service
    from outreach.dispatcher import SendReport

log = logging.getLogger("outreach")


def refuse_undecodable(ctx: click.Context) -> None:
    """An argument that is not UTF-8 text is refused, named, before anything is written.

    On Linux, bytes that are not UTF-8 reach click as surrogate escapes,
    which no database can store: the write would fail half way with a
    traceback. File names (``Path`` values) are left alone: the file system
    takes them as they are.
    """
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        values = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(item, str) and not records.encodable(item) for item in values):
            name = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
            raise OutreachError(f"{name}: not valid UTF-8 text")


class OutreachCommand(click.Command):
    """A command whose arguments are checked to be text (``refuse_undecodable``) before it runs."""

    def invoke(self, ctx: click.Context) -> Any:
        refuse_undecodable(ctx)
        return super().invoke(ctx)


class OutreachGroup(click.Group):
    """Turns every user-fixable error into one line per problem and exit 1.

    Its commands and sub-groups are ``OutreachCommand`` and ``OutreachGroup``,
    so every argument is checked to be text before any command runs.
    """

    command_class = OutreachCommand
    group_class = type  # sub-groups are OutreachGroups too

    def invoke(self, ctx: click.Context) -> Any:
        try:
            refuse_undecodable(ctx)
            return super().invoke(ctx)
        except ImportFileError as exc:
            for line in exc.problems:
                click.echo(f"error: {line}", err=True)
            click.echo(
                f"error: {exc.path}: nothing imported ({len(exc.problems)} problem(s); "
                "fix them, or use --skip-invalid to import the valid rows)",
                err=True,
            )
        except records.RowError as exc:  # a bad value, from any command: the one place it is shown
            click.echo(f"error: {as_option(exc)}", err=True)
        except OutreachError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            click.echo(f"error: database: {reason}", err=True)
        ctx.exit(1)


# ``records`` names a value as its CSV column does; these commands take it as an option.
OPTION_FOR_FIELD = {
    "occurred_at": "--at",
    "measured_at": "--at",
    "consent_date": "--on",
    "consent_expires": "--expires",
}


def as_option(exc: records.RowError) -> str:
    """The error's line, naming the command-line option rather than the CSV column."""
    option = OPTION_FOR_FIELD.get(exc.field)
    return f"{option}: {exc.problem}" if option else str(exc)


class Env:
    """Settings and the database, loaded when a command first needs them."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = store.connect(self.settings.database_url, self.settings.db_busy_seconds)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ready_engine(self) -> Engine:
        store.require_current(self.engine)
        return self.engine

    def now(self, value: str | None) -> datetime:
        if value is None:
            return utcnow()
        return records.parse_datetime(value, "--now", self.settings.tz)

    def day(self, moment: datetime, value: str | None = None, option: str = "") -> date:
        """The day ``option`` gives (``value``), or else the practice's calendar day at ``moment``."""
        given = records.parse_date(value, option) if value else None
        return given or moment.astimezone(self.settings.tz).date()


pass_env = click.make_pass_decorator(Env, ensure=True)
now_option = click.option(
    "--now", metavar="ISO", help="Act as if it were this time (ISO 8601), to replay or test a run."
)


def setup_logging(level: str) -> None:
    """One line per event on stderr, journald-friendly."""
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@click.group(cls=OutreachGroup)
@click.version_option(package_name="outreach")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Keep referring physicians informed: milestone in, clinically worded email out."""
    ctx.call_on_close(ctx.ensure_object(Env).dispose)


@cli.command()
@pass_env
def init(env: Env) -> None:
    """Create or upgrade the database; copy the rules and templates to edit.

    The first time, the rules (campaigns/) and email templates
    (templates/email/) that come with outreach are copied into this folder:
    they are the practice's to edit, and `outreach check` validates them.
    Nothing already there is overwritten, so running init again (after an
    upgrade, say) keeps your edits. A folder named by OUTREACH_CAMPAIGNS_DIR
    or OUTREACH_TEMPLATES_DIR is used as it is.
    """
    revision = store.migrate(env.engine)
    where = env.engine.url.render_as_string(hide_password=True)
    click.echo(f"database {where} is at schema revision {revision}")
    for key, relative, what in STARTER_FOLDERS:
        click.echo(_give_starter_folder(key, Path(relative), what))


# What ``outreach init`` copies for the practice to edit: its setting, its folder here, what it holds.
STARTER_FOLDERS = (
    ("OUTREACH_CAMPAIGNS_DIR", "campaigns", "rules"),
    ("OUTREACH_TEMPLATES_DIR", "templates/email", "email templates"),
)


def _give_starter_folder(key: str, target: Path, what: str) -> str:
    """Copy the shipped folder to ``target`` unless the practice has its own; say which.

    The copy is made beside the target and renamed into place, so a failure
    (a full disk, no permission) leaves no half-copied folder behind.
    """
    import os
    import tempfile

    from outreach.settings import SHIPPED

    named = os.environ.get(key, "").strip()
    if named:
        return f"{what}: {named} (set by {key}), used as it is"
    if target.exists():
        return f"{what}: {target}/ is already here, left as it is"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".outreach-init-") as scratch:
            staged = Path(scratch) / target.name
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(SHIPPED / target, staged, ignore=ignore, copy_function=shutil.copyfile)
            staged.rename(target)
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise OutreachError(f"{target}: could not copy the shipped {what} there: {reason}") from None
    return f"{what}: copied to {target}/; they are the practice's to edit (then run outreach check)"


@cli.command()
@pass_env
def check(env: Env) -> None:
    """Validate settings, every rule file and every template."""
    from outreach.checks import check_all, safety_settings

    problems, warnings = check_all(env.settings)
    for line in safety_settings(env.settings):
        click.echo(line)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo("settings, rules and templates are valid")


@cli.command("import")
@click.argument("kind", type=click.Choice(IMPORT_KINDS))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows and report the others.")
@now_option
@pass_env
def import_(env: Env, kind: str, file: Path, skip_invalid: bool, now: str | None) -> None:
    """Import physicians, clients, events or measures from a CSV FILE.

    \b
    physicians: email,name,credentials,specialty,clinic,phone,fax,timezone
    clients:    ref,first_name,last_name,physician_email,referral_date,
                diagnosis,precautions,goals,consent_date,status
    events:     client_ref,kind,occurred_at,note
    measures:   client_ref,instrument,score,measured_at

    A file with any bad row imports nothing unless --skip-invalid is given.
    """
    from outreach.importer import import_file

    report = import_file(env.ready_engine(), env.settings, kind, file, env.now(now), skip_invalid)
    for problem in report.skipped:
        click.echo(f"skipped: {problem}", err=True)
    click.echo(report.summary())


@cli.group()
def event() -> None:
    """Record milestones in a client's care."""


@event.command("add")
@click.argument("client_ref")
@click.argument("kind")
@click.option("--at", "at", metavar="ISO", help="When it happened (default: now).")
@click.option("--note", default="", help="What happened, in clinical words.")
@now_option
@pass_env
def event_add(env: Env, client_ref: str, kind: str, at: str | None, note: str, now: str | None) -> None:
    """Record that KIND (e.g. initial_assessment) happened for CLIENT_REF."""
    moment = env.now(now)
    occurred = records.parse_datetime(at, "--at", env.settings.tz) if at else moment
    added = records.add_event(env.ready_engine(), client_ref, kind, occurred, moment, note=note)
    what = f"{added.kind} for {client_ref} at {occurred.isoformat()}"
    if added.event_id is None:
        click.echo(f"{what} was already recorded")
    else:
        click.echo(f"recorded {what} (event {added.event_id})")


@cli.group()
def physician() -> None:
    """A referring physician's preferences (opt-out of non-clinical mail)."""


@physician.command("opt-out")
@click.argument("email")
@now_option
@pass_env
def physician_opt_out(env: Env, email: str, now: str | None) -> None:
    """Stop non-clinical mail to EMAIL; clinical updates still go."""
    moment = env.now(now)
    day = env.day(moment)
    records.opt_out(env.ready_engine(), email, day, moment)
    click.echo(
        f"{email}: opted out of non-clinical mail from {day}; clinical updates about shared clients still go"
    )


@physician.command("opt-in")
@click.argument("email")
@pass_env
def physician_opt_in(env: Env, email: str) -> None:
    """Resume non-clinical mail to EMAIL."""
    records.opt_in(env.ready_engine(), email, utcnow())
    click.echo(f"{email}: non-clinical mail resumed")


@physician.command("deliverable")
@click.argument("email")
@pass_env
def physician_deliverable(env: Env, email: str) -> None:
    """Send to EMAIL again after a "no such mailbox" refusal.

    A mail server's 5.1.x refusal marks a physician's address undeliverable,
    and nothing more is sent to it until the mark is cleared here.
    """
    records.mark_deliverable(env.ready_engine(), email, utcnow())
    click.echo(f"{email}: marked deliverable again; mail suppressed meanwhile stays in the log, not resent")


physician.add_command(physician_deliverable, "address-ok")  # the name `outreach status` suggests


@cli.group()
def client() -> None:
    """A client's consent to share health information, and their record on request."""


@client.command("consent")
@click.argument("client_ref")
@click.option("--on", "on", metavar="DATE", help="Day consent was given (default: today).")
@click.option("--expires", metavar="DATE", help="Day the consent ends, if it does.")
@now_option
@pass_env
def client_consent(env: Env, client_ref: str, on: str | None, expires: str | None, now: str | None) -> None:
    """Record consent to share health information; held updates then go out."""
    moment = env.now(now)
    day = env.day(moment, on, "--on")
    until = records.parse_date(expires, "--expires") if expires else None
    records.give_consent(env.ready_engine(), client_ref, day, moment, expires=until)
    click.echo(f"{client_ref}: consent recorded on {day}" + (f", until {until}" if until else ""))


@client.command("revoke-consent")
@click.argument("client_ref")
@now_option
@pass_env
def client_revoke_consent(env: Env, client_ref: str, now: str | None) -> None:
    """Record that consent was withdrawn: nothing more about them is sent."""
    moment = env.now(now)
    day = env.day(moment)
    records.revoke_consent(env.ready_engine(), client_ref, day, moment)
    click.echo(f"{client_ref}: consent revoked on {day}; queued updates about this client will not be sent")


@client.command("export")
@click.argument("client_ref")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A new file to write (default: client-REF-YYYYMMDD.zip here); an existing one is refused.",
)
@now_option
@pass_env
def client_export(env: Env, client_ref: str, out: Path | None, now: str | None) -> None:
    """Write everything held about CLIENT_REF to one zip, readable by you only.

    The zip holds README.txt, record.json (details, consent, events,
    measures, every message with its trail, every reply) and each email as
    an .eml file. An update sent inside a digest is exported alone; the
    digest is named by number only (it carried other clients' updates).
    The export is recorded in the audit log.
    """
    from outreach.export import default_name, export_client

    moment = env.now(now)
    target = out or Path(default_name(client_ref, env.day(moment)))
    done = export_client(env.ready_engine(), env.settings, client_ref, target, moment)
    click.echo(f"wrote {target}: {done.counts()} (readable by you only)")


@cli.group()
def measure() -> None:
    """Record outcome measures (LEFS, ODI, NDI, QuickDASH, NPRS, PSFS, TUG, …)."""


@measure.command("add")
@click.argument("client_ref")
@click.argument("instrument")
@click.argument("score")
@click.option("--at", "at", metavar="DATE", help="Day measured (YYYY-MM-DD, default: today).")
@now_option
@pass_env
def measure_add(
    env: Env, client_ref: str, instrument: str, score: str, at: str | None, now: str | None
) -> None:
    """Record SCORE on INSTRUMENT for CLIENT_REF."""
    moment = env.now(now)
    day = env.day(moment, at, "--at")
    measured = records.add_measure(env.ready_engine(), client_ref, instrument, score, day, moment)
    click.echo(f"{measured.instrument} {measured.score:g} on {day} for {client_ref}: {measured.outcome}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="List what is due; queue nothing.")
@now_option
@pass_env
def plan(env: Env, dry_run: bool, now: str | None) -> None:
    """Evaluate every rule and queue the emails that are due."""
    moment = env.now(now)
    if dry_run:
        from outreach.planner import find_due
        from outreach.rules import load_rules

        settings = env.settings
        rules = load_rules(settings.campaigns_dir, settings.templates_dir)
        with store.read(env.ready_engine()) as conn:
            drafts = find_due(conn, rules, settings, moment)
        for d in drafts:
            what = f"client {d.client_ref}" if d.client_ref else "physician summary"
            note = f"  (would be suppressed: {d.suppress_reason})" if d.suppress_reason else ""
            click.echo(f"{d.rule.name}: {what} -> {d.to.email}{note}")
        click.echo(f"{len(drafts)} email(s) due; nothing queued (dry run)")
        return
    report = _service(env).plan(moment)
    click.echo(
        f"queued {len(report.queued)}, suppressed {len(report.suppressed)}, "
        f"failed {len(report.failed)}, cancelled {report.cancelled}"
    )
    for draft, error in report.failed:
        click.echo(f"failed: {draft.dedupe_key}: {error}", err=True)


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N messages.")
@now_option
@pass_env
def send(env: Env, limit: int | None, now: str | None) -> None:
    """Deliver the queued messages that are due, once."""
    from outreach.daemon import make_clock

    report = _service(env).send(make_clock(env.now(now) if now else None), limit=limit)
    _print_send(report, env.settings)
    if report.aborted:
        sys.exit(1)


def _print_send(report: SendReport, settings: Settings) -> None:
    click.echo(f"sent {len(report.sent)}, deferred {len(report.deferred)}, failed {len(report.failed)}")
    if settings.staging:
        click.echo(f"staging: every email went to {', '.join(settings.redirect_all_to)}, none to a physician")
    if report.aborted:
        click.echo(f"error: sending stopped, messages left queued: {report.aborted}", err=True)


def _service(env: Env) -> Service:
    from outreach.daemon import Service

    setup_logging(env.settings.log_level)
    return Service.load(env.settings, engine=env.ready_engine())


@cli.command()
@click.option("--once", is_flag=True, help="One plan and one send, then exit.")
@now_option
@pass_env
def run(env: Env, once: bool, now: str | None) -> None:
    """Run the service: plan and send on a schedule until SIGTERM or Ctrl-C."""
    from outreach.daemon import Control, make_clock, run_forever

    service = _service(env)
    clock = make_clock(env.now(now) if now else None)
    if once:
        plan_report, send_report = service.cycle(clock)
        click.echo(f"planned {len(plan_report.queued)} new email(s)")
        _print_send(send_report, env.settings)
        if send_report.aborted:
            sys.exit(1)
        return
    control = Control()
    signal.signal(signal.SIGTERM, control.request_stop)
    signal.signal(signal.SIGINT, control.request_stop)
    signal.signal(signal.SIGHUP, control.request_reload)
    run_forever(service, clock, control)


@cli.command("status")
@now_option
@pass_env
def status_(env: Env, now: str | None) -> None:
    """Is the service alive and delivering? Exits 1 if not (for monitors)."""
    from outreach.status import format_health, health

    with store.read(env.ready_engine()) as conn:
        report = health(conn, env.now(now), env.settings.tick_seconds, env.settings.redirect_all_to)
    click.echo(format_health(report, env.settings.tz))
    loose = store.loose_mode(env.settings.database_url)
    if loose:  # worth fixing, but the service is no less alive for it: not a reason to exit 1
        click.echo(f"warning: {loose}", err=True)
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("message_ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Retry every failed message.")
@now_option
@pass_env
def retry(env: Env, message_ids: tuple[int, ...], all_failed: bool, now: str | None) -> None:
    """Send failed messages again (same content, same Message-ID).

    A message whose template failed when it was queued is rendered again
    from its rule and records with the templates as they are now; if one
    still fails, nothing is queued and the error says why.
    """
    if not message_ids and not all_failed:
        raise click.UsageError("give message IDs or --all-failed")
    ids = None if all_failed else list(message_ids)
    count = records.retry(env.ready_engine(), env.settings, env.now(now), ids)
    click.echo(f"{count} message(s) queued again")


@cli.command()
@click.argument("message_ids", metavar="ID...", nargs=-1, type=int, required=True)
@now_option
@pass_env
def cancel(env: Env, message_ids: tuple[int, ...], now: str | None) -> None:
    """Never send these pending or suppressed messages; all of them, or none.

    A cancelled digest takes the updates it carries with it. An update
    cancelled out of a waiting digest takes that digest apart; the other
    updates in it are combined again at the next plan. Sent, failed or
    already cancelled messages are refused, named.
    """
    done = records.cancel(env.ready_engine(), list(message_ids), env.now(now))
    click.echo(f"{len(done.messages)} message(s) cancelled: {', '.join(map(str, done.messages))}")
    if done.carried:
        click.echo(f"with them, the updates their digests carried: {', '.join(map(str, done.carried))}")
    if done.regrouped:
        click.echo(f"to be combined again at the next plan: {', '.join(map(str, done.regrouped))}")


@cli.group("log", invoke_without_command=True)
@click.option("--status", help="Only messages in this state (pending, sent, failed, suppressed, …).")
@click.option("--physician", metavar="EMAIL", help="Only messages to this physician.")
@click.option("--client", metavar="REF", help="Only messages about this client.")
@click.option("--since", metavar="DATE", help="Only messages queued on or after this day.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0 for all.")
@click.pass_context
def log_(
    ctx: click.Context,
    status: str | None,
    physician: str | None,
    client: str | None,
    since: str | None,
    fmt: str,
    limit: int,
) -> None:
    """The sent-message log, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    env = ctx.ensure_object(Env)
    since_day = records.parse_date(since, "--since") if since else None
    tz = env.settings.tz
    with store.read(env.ready_engine()) as conn:
        rows = list_messages(
            conn, status, physician, client, since_start(since_day, tz) if since_day else None, limit or None
        )
    output = {"json": format_json, "csv": format_csv}.get(fmt)
    click.echo(output(rows) if output else format_table(rows, tz))


@log_.command("show")
@click.argument("message_id", type=int)
@pass_env
def log_show(env: Env, message_id: int) -> None:
    """One message whole: headers, text, and its attempt trail."""
    with store.read(env.ready_engine()) as conn:
        click.echo(show_message(conn, message_id, env.settings.tz))


@cli.command()
@click.option("--physician", metavar="EMAIL", help="Only this physician's referrals.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@now_option
@pass_env
def loops(env: Env, physician: str | None, fmt: str, now: str | None) -> None:
    """Each referral's expected updates: done, due, overdue or blocked."""
    from outreach.loops import format_loops, open_loops

    with store.read(env.ready_engine()) as conn:
        found = open_loops(conn, env.settings, env.now(now), physician)
    click.echo(format_loops(found, fmt))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@now_option
@pass_env
def physicians(env: Env, fmt: str, now: str | None) -> None:
    """Referrals, conversion, time to first report and contact, per physician."""
    from outreach.loops import format_physicians, physician_summary

    with store.read(env.ready_engine()) as conn:
        rows = physician_summary(conn, env.settings, env.now(now))
    click.echo(format_physicians(rows, fmt))


@cli.command("preview")
@click.argument("rule_name", metavar="RULE")
@click.option("--client", "client_ref", metavar="REF", help="The client to render it for.")
@click.option(
    "--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the HTML part here."
)
@now_option
@pass_env
def preview_(
    env: Env, rule_name: str, client_ref: str | None, html_file: Path | None, now: str | None
) -> None:
    """Render what RULE would send now, without queuing it."""
    from outreach.planner import preview_rule

    rendered = preview_rule(env.ready_engine(), env.settings, rule_name, client_ref, env.now(now))
    click.echo(f"Subject: {rendered.subject}\n")
    click.echo(rendered.text.rstrip())
    if html_file:
        _write_private(html_file, rendered.html, "--html")
        click.echo(f"\n(HTML part written to {html_file})")


def _write_private(path: Path, text: str, option: str) -> None:
    """Write ``text`` to a file only its owner may read: it holds a client's health information.

    A new file is created owner-only (never chmod-ed after the text is in
    it); an existing one is made owner-only before anything is written.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise OutreachError(f"{option} {path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o600)
            handle.write(text)
        except OSError as exc:
            raise OutreachError(f"{option} {path}: cannot write: {exc.strerror}") from None


@cli.command()
@click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
    help="A new or empty folder for the demo database, CSV files and outbox, or one an earlier "
    "demo made (only what the demo made there is replaced). Any other folder is refused.",
)  # fmt: skip
@now_option
@pass_env
def demo(env: Env, folder: Path, now: str | None) -> None:
    """Build a demo practice in a fresh SQLite file and run one cycle (file backend).

    Nothing is emailed: the demo always writes .eml files to DIR/outbox,
    whatever OUTREACH_EMAIL_BACKEND says. Without --now, a demo started
    outside the physicians' office hours runs as of their next opening, so
    the whole cycle is sent instead of waiting.
    """
    from outreach.daemon import Service, make_clock
    from outreach.demo import DATABASE, demo_moment, load_demo, prepare_folder, shifted_note

    moment = env.now(now)  # before anything is touched: a typo must not cost the old demo
    settings = env.settings.with_(
        database_url=f"sqlite:///{folder / DATABASE}",
        email_backend="file",
        outbox_dir=folder / "outbox",
    )
    prepare_folder(folder)  # refuses, untouched, a folder the demo did not make
    if now is None and (shifted := demo_moment(moment, settings)) != moment:
        moment = shifted
        click.echo(shifted_note(moment, settings))
    engine = store.connect(settings.database_url, settings.db_busy_seconds)
    store.migrate(engine)
    load_demo(engine, settings, folder / "csv", moment)
    setup_logging("WARNING")
    service = Service.load(settings, engine=engine)
    plan_report, send_report = service.cycle(make_clock(moment))
    click.echo(f"Demo practice in {folder}/: database, CSV files (csv/) and emails (outbox/).")
    click.echo(
        f"Planned {len(plan_report.queued)} email(s), suppressed {len(plan_report.suppressed)}; "
        f"sent {len(send_report.sent)}.\n"
    )
    with store.read(engine) as conn:
        click.echo(format_table(list_messages(conn, limit=None), settings.tz))
    click.echo(f"\nRead one: outreach log show ID  (with OUTREACH_DATABASE_URL={settings.database_url})")
    engine.dispose()


@cli.group()
def inbox() -> None:
    """Replies and bounces, read from the practice's mailbox (IMAP)."""


@inbox.command("fetch")
@now_option
@pass_env
def inbox_fetch(env: Env, now: str | None) -> None:
    """Read new mail once: record and match it, move what was handled."""
    from outreach.inbox import fetch

    report = fetch(env.ready_engine(), env.settings, env.now(now))
    click.echo(report.summary())


@cli.command()
@click.option("--client", metavar="REF", help="Only what came back about this client.")
@click.option("--physician", metavar="EMAIL", help="Only what came back from this physician.")
@click.option("--unmatched", is_flag=True, help="Only mail that matched none of our messages.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@pass_env
def replies(env: Env, client: str | None, physician: str | None, unmatched: bool, fmt: str) -> None:
    """What physicians answered (and what bounced), newest first."""
    from outreach.replies import format_replies, list_replies

    with store.read(env.ready_engine()) as conn:
        rows = list_replies(conn, client, physician, unmatched)
    click.echo(format_replies(rows, fmt, env.settings.tz))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
@now_option
@pass_env
def purge(env: Env, dry_run: bool, now: str | None) -> None:
    """Remove bodies older than OUTREACH_RETENTION_DAYS; the log entries stay.

    The HTML and text of messages final for longer than that (sent, failed,
    bounced, suppressed, cancelled, redirected; a digest with all it
    carried), and the text and raw copy of inbound mail recorded before
    then. Never a pending or sending message. Each keeps its trail,
    Message-ID, status, dates and the SHA-256 of what was removed.
    """
    from outreach.retention import NOT_SET
    from outreach.retention import purge as purge_bodies

    moment = env.now(now)
    if env.settings.retention_days is None:  # said before the database is opened: nothing is touched
        click.echo(NOT_SET)
        return
    report = purge_bodies(env.ready_engine(), env.settings, moment, dry_run=dry_run)
    click.echo(report.summary(env.settings.tz))


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (this machine only by default).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@pass_env
def web(env: Env, host: str, port: int) -> None:
    """Serve the console and the JSON API (log, loops, clients) until stopped."""
    from outreach import accounts
    from outreach.web import create_app, serve

    engine = env.ready_engine()
    with store.read(engine) as conn:
        if not accounts.any_user(conn):
            raise OutreachError(
                "no one can log in yet: add a user first (outreach user add EMAIL --role admin)"
            )
    setup_logging(env.settings.log_level)
    app = create_app(env.settings, engine)
    click.echo(f"outreach console on http://{host}:{port}/ (Ctrl-C to stop)")
    serve(app, host, port)


def _new_password(email: str) -> str:
    """From standard input when it is not a terminal (scripts), else asked for twice."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt(f"Password for {email}", hide_input=True, confirmation_prompt=True))


@cli.group()
def user() -> None:
    """People who may log in to the console (outreach web)."""


@user.command("add")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["admin", "staff", "viewer"]),
    required=True,
    help="viewer: read only; staff: also record and retry; admin: also users, tokens, audit.",
)
@pass_env
def user_add(env: Env, email: str, role: str) -> None:
    """Add a console user; the password is read from standard input or asked for."""
    from outreach import accounts

    engine = env.ready_engine()
    accounts.add_user(engine, email, role, _new_password(email), utcnow())
    click.echo(f"{email}: added as {role}")


@user.command("list")
@pass_env
def user_list(env: Env) -> None:
    """Every console user, their role and whether they are disabled."""
    from outreach import accounts, tables

    with store.read(env.ready_engine()) as conn:
        rows = accounts.list_users(conn)
    cells = [
        [r["email"], r["role"], f"{r['created_at']:%Y-%m-%d}", "disabled" if r["disabled_at"] else ""]
        for r in rows
    ]
    click.echo(tables.format_table(["email", "role", "added", "state"], cells) if rows else "no users yet")


@user.command("disable")
@click.argument("email")
@pass_env
def user_disable(env: Env, email: str) -> None:
    """Stop EMAIL logging in; their open sessions end at once."""
    from outreach import accounts

    accounts.disable_user(env.ready_engine(), email, utcnow())
    click.echo(f"{email}: disabled; their sessions have ended")


@user.command("password")
@click.argument("email")
@pass_env
def user_password(env: Env, email: str) -> None:
    """Set a new password for EMAIL (their open sessions end)."""
    from outreach import accounts

    engine = env.ready_engine()
    accounts.set_password(engine, email, _new_password(email), utcnow())
    click.echo(f"{email}: password changed; their sessions have ended")


@cli.group()
def token() -> None:
    """Bearer tokens for the JSON API (a scheduling system or EHR)."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["staff", "viewer"]), default="staff", show_default=True)
@pass_env
def token_create(env: Env, name: str, role: str) -> None:
    """Make a token and print it once (only its hash is kept)."""
    from outreach import accounts

    value = accounts.create_token(env.ready_engine(), name, role, utcnow())
    click.echo(value)
    click.echo(f"token {name!r} ({role}): shown once, store it now", err=True)


@token.command("list")
@pass_env
def token_list(env: Env) -> None:
    """Every token by name: role, when made, last used, revoked."""
    from outreach import accounts, tables

    with store.read(env.ready_engine()) as conn:
        rows = accounts.list_tokens(conn)

    def when(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else ""

    cells = [
        [r["name"], r["role"], when(r["created_at"]), when(r["last_used_at"]), when(r["revoked_at"])]
        for r in rows
    ]
    headers = ["name", "role", "created", "last used", "revoked"]
    click.echo(tables.format_table(headers, cells) if rows else "no tokens yet")


@token.command("revoke")
@click.argument("name")
@pass_env
def token_revoke(env: Env, name: str) -> None:
    """Stop the token NAME working, at once."""
    from outreach import accounts

    accounts.revoke_token(env.ready_engine(), name, utcnow())
    click.echo(f"token {name!r}: revoked")


@cli.command("audit")
@click.option("--user", "who", metavar="WHO", help="Only what this user (or token:NAME) did.")
@click.option("--since", metavar="DATE", help="Only from this day on.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--limit", type=click.IntRange(min=0), default=200, show_default=True, help="0 for all.")
@pass_env
def audit_(env: Env, who: str | None, since: str | None, fmt: str, limit: int) -> None:
    """Who viewed or changed what, when and from where (newest first)."""
    from outreach import auditlog

    since_day = records.parse_date(since, "--since") if since else None
    tz = env.settings.tz
    with store.read(env.ready_engine()) as conn:
        rows = auditlog.entries(conn, who, since_start(since_day, tz) if since_day else None, limit or None)
    click.echo(auditlog.format_entries(rows, fmt, tz))


def main() -> None:
    """Console entry point: ``./.env`` first (never overriding the environment), then the CLI.

    Only the working directory's ``.env``, as the README says: one in a parent
    folder may belong to something else (another database, other SMTP credentials).
    """
    dotenv = Path.cwd() / ".env"
    try:
        load_dotenv(dotenv, override=False, encoding="utf-8")
    except UnicodeDecodeError:
        sys.exit(f"error: {dotenv}: not UTF-8 text")
    except OSError as exc:
        sys.exit(f"error: {dotenv}: cannot read: {exc.strerror}")
    cli(prog_name="outreach")


if __name__ == "__main__":
    main()
