"""``outreach check``: settings, rule files and templates, validated before they matter.

Templates are read as the service reads them (strictly as UTF-8), compiled
and rendered, for every rule, against the demo practice (in a throwaway
database), so a stray byte, a missing variable or a subject line that names
a client or a diagnosis is found before a physician sees it. A SQLite file
that group or others may read is a problem too: it holds health data.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import jinja2
from sqlalchemy import Engine, select

from outreach import store
from outreach.backends.smtp import insecure_refusal
from outreach.demo import load_demo
from outreach.errors import OutreachError, RenderError
from outreach.models import clients, events, utcnow
from outreach.planner import preview
from outreach.renderer import TEMPLATE_SUFFIXES, Renderer, compile_problems, read_sources
from outreach.rules import TEMPLATE_PARTS, Rule, check_rules
from outreach.settings import Settings


def check_all(settings: Settings) -> tuple[list[str], list[str]]:
    """Every problem found, as ``file: rule/key: message`` lines; and the warnings.

    A problem fails the check; a warning is what is allowed but probably not
    meant, said without failing it.
    """
    problems = []
    refusal = insecure_refusal(settings)
    if refusal:
        problems.append(f"settings: {refusal}")
    loose = store.loose_mode(settings.database_url)
    if loose:  # a problem, not a warning: check passes only a deployment fit to hold health data
        problems.append(loose)
    rules, rule_problems = check_rules(settings.campaigns_dir, settings.templates_dir)
    problems += rule_problems
    template_problems, renderer = check_templates(settings.templates_dir)
    problems += template_problems
    if rules and not template_problems:
        problems += check_rendering(settings, rules, renderer)
    return problems, loop_warnings(settings, rules) if not rule_problems else []


def safety_settings(settings: Settings) -> list[str]:
    """The staging and retention settings as found: what a practice checks before it trusts a run."""
    from outreach.status import staging_line

    staging = (
        f"staging: ON, {staging_line(settings.redirect_all_to)}"
        if settings.staging
        else "staging: off, email goes to physicians (OUTREACH_REDIRECT_ALL_TO is not set)"
    )
    retention = (
        f"retention: the bodies of messages final for more than {settings.retention_days} days are removed "
        "once a day (OUTREACH_RETENTION_DAYS); their log entries and a SHA-256 stay"
        if settings.retention_days
        else "retention: every body is kept (OUTREACH_RETENTION_DAYS is not set)"
    )
    return [staging, retention]


def loop_warnings(settings: Settings, rules: list[Rule]) -> list[str]:
    """Rule files from before loops were declared in them: ``outreach loops`` would list nothing."""
    if rules and not any(rule.loop for rule in rules):
        return [
            f"{settings.campaigns_dir}: no rule says `loop = ...`, so `outreach loops` lists nothing "
            "(rule files copied before loops were declared in them: see the README's Rules section)"
        ]
    return []


def check_templates(templates_dir: Path) -> tuple[list[str], Renderer]:
    """Every template file is UTF-8 text and compiles; every template folder is complete.

    The files are read as the service reads them (``renderer.read_sources``):
    what passes here is what ``outreach run`` loads. Returns the problems and
    the renderer over those files, each template compiled once.
    """
    root = Path(templates_dir)
    sources, problems = read_sources(root)
    renderer = Renderer(root, sources)
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in folders:
        for part in TEMPLATE_PARTS:
            name = f"{folder.name}/{part}"
            if not (folder / part).is_file():
                problems.append(f"{folder / part}: template/{folder.name}: missing part {part}")
            elif name in sources:  # else not UTF-8: reported already
                try:
                    renderer.env.get_template(name)
                except jinja2.TemplateSyntaxError as exc:
                    problems.append(f"{folder / part}:{exc.lineno}: template/{folder.name}: {exc.message}")
    shared = [name for name in sources if "/" not in name and name.endswith(TEMPLATE_SUFFIXES)]
    return problems + compile_problems(renderer, shared), renderer  # shared: layouts and macros


def check_rendering(settings: Settings, rules: list[Rule], renderer: Renderer) -> list[str]:
    """Render each rule for the demo practice; report errors and private subjects."""
    now = utcnow()
    problems = []
    with tempfile.TemporaryDirectory(prefix="outreach-check-") as tmp:
        engine = store.connect(f"sqlite:///{Path(tmp) / 'check.db'}")
        try:
            store.migrate(engine)
            load_demo(engine, settings, Path(tmp) / "csv", now)
            for rule in rules:
                for ref, names in _sample_clients(engine, rule):
                    try:
                        rendered = preview(engine, settings, rule, renderer, ref, now)
                    except RenderError as exc:
                        problems.append(f"{rule.source}: {rule.name}/template: {exc}")
                        break
                    except OutreachError:
                        continue
                    leak = _private_words(rendered.subject, names)
                    if leak:
                        problems.append(
                            f"{rule.source}: {rule.name}/template: subject {rendered.subject!r} "
                            f"contains the client's {leak}"
                        )
        finally:
            engine.dispose()
    return problems


def _sample_clients(engine: Engine, rule: Rule) -> list[tuple[str, dict]]:
    """Demo clients the rule applies to (with an event of its kind, if it has one).

    A reminder (``no_reply``) is about the event its rule's email reported:
    the clients with such an event. An attendance lapse (``no_event``) is
    rendered for every client assessed (preview refuses the others).
    """
    kind = rule.event or rule.reply_event
    with store.read(engine) as conn:
        query = select(clients)
        if kind:
            query = query.where(clients.c.id.in_(select(events.c.client_id).where(events.c.kind == kind)))
        rows = conn.execute(query.order_by(clients.c.id)).all()
    return [
        (r.ref, {"first name": r.first_name, "last name": r.last_name, "diagnosis": r.diagnosis})
        for r in rows
    ]


def _private_words(subject: str, names: dict) -> str | None:
    lowered = subject.lower()
    for what, value in names.items():
        value = (value or "").strip().lower()
        if len(value) >= 2 and re.search(rf"(?<!\w){re.escape(value)}(?!\w)", lowered):
            return what
    return None
