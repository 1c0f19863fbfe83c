"""Campaign rules: which email is due, for whom, and when (``campaigns/*.toml``).

A rule file is written by a trainer, so validation is strict and every
problem is reported as ``file: rule/key: message`` — unknown keys, unknown
templates, unknown event kinds and bad durations are all errors.

    [rules.progress_report]
    when = { every = "30d", since = "initial_assessment" }
    template = "progress_report"

Two kinds of rule fire when something does NOT happen (silence rules):
``{ no_reply = "RULE", within = "2d" }`` (no reply to that rule's email
within so many business days) and ``{ no_event = ["KIND", ...], for =
"14d" }`` (none of those events for so long while the client is active).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from outreach.errors import RuleError
from outreach.models import EVENT_KINDS, PRIORITIES

RULE_KEYS = {
    "description",
    "when",
    "template",
    "to",
    "delay",
    "max_age",
    "priority",
    "consent_required",
    "kind",
    "enabled",
    "loop",
    "loop_within",
    "awaits_reply",
}
WHEN_KEYS = {"event", "every", "since", "scope", "consecutive", "no_reply", "within", "no_event", "for"}
TRIGGERS = ("event", "every", "no_reply", "no_event")
CALENDAR_PERIODS = ("month", "quarter")
ANCHORS = (*EVENT_KINDS, "referral_date")
DURATION_RE = re.compile(r"^\s*(\d+)\s*(m|h|d|w)\s*$")
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
BUSINESS_DAYS_RE = re.compile(r"^\s*(\d+)\s+business\s+days?\s*$")
SHORT_BUSINESS_DAYS_RE = re.compile(r"^\s*(\d+)\s*d\s*$")  # no_reply's within = "2d"
MOST_BUSINESS_DAYS = 30
TEMPLATE_PARTS = ("subject.txt", "body.html", "body.txt")


@dataclass(frozen=True)
class Rule:
    name: str
    source: str
    template: str
    scope: str  # "client" or "physician"
    event: str | None = None  # event-triggered
    every: timedelta | None = None  # recurring by duration
    period: str | None = None  # recurring by calendar period (physician scope)
    since: str | None = None  # anchor of a client-level recurring rule
    consecutive: int | None = None  # with session_missed: the Nth miss in a row
    delay: timedelta = timedelta(0)
    max_age: timedelta = timedelta(days=30)
    priority: int = PRIORITIES["normal"]
    consent_required: bool = True
    kind: str = "clinical"  # or "relationship"
    description: str = ""
    # An expected communication ``outreach loops`` follows, by this name: an
    # event rule's email is due within ``loop_within`` business days of the
    # event; a recurring rule's, ``every`` after the last one sent.
    loop: str | None = None
    loop_within: int | None = None  # business days
    # With loop: the email asks the physician for a decision (an adverse event
    # alert), so the loop stays "awaiting direction" until a reply is read.
    awaits_reply: bool = False
    # Silence: no reply to rule ``no_reply``'s email within ``reply_within``
    # business days of its sending (``reply_event``: that rule's event kind,
    # filled in once every file is read) ...
    no_reply: str | None = None
    reply_within: int | None = None  # business days
    reply_event: str | None = None
    # ... or none of the ``no_event`` kinds for ``lapse`` while the client is active.
    no_event: tuple[str, ...] = ()
    lapse: timedelta | None = None

    @property
    def trigger(self) -> str:
        """``event``, ``every``, ``no_reply`` or ``no_event``: what makes the rule's email due."""
        if self.event:
            return "event"
        if self.no_reply:
            return "no_reply"
        if self.no_event:
            return "no_event"
        return "every"


def parse_duration(text: object) -> timedelta:
    """``"30d"``, ``"2w"``, ``"12h"``, ``"15m"`` as a timedelta; ValueError otherwise."""
    match = DURATION_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30d, 2w, 12h or 15m")
    try:
        return timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_business_days(text: object) -> int:
    """``"2 business days"`` as 2; ValueError otherwise."""
    match = BUSINESS_DAYS_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a deadline like '2 business days'")
    days = int(match[1])
    if not 1 <= days <= MOST_BUSINESS_DAYS:
        raise ValueError(f"{text!r}: give from 1 to {MOST_BUSINESS_DAYS} business days")
    return days


def parse_reply_within(text: object) -> int:
    """``"2d"`` or ``"2 business days"`` as 2 (business days); ValueError otherwise."""
    match = SHORT_BUSINESS_DAYS_RE.match(text) if isinstance(text, str) else None
    if match is None:
        try:
            return parse_business_days(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a number of business days like '2d' or '2 business days'"
            ) from None
    days = int(match[1])
    if not 1 <= days <= MOST_BUSINESS_DAYS:
        raise ValueError(f"{text!r}: give from 1 to {MOST_BUSINESS_DAYS} business days")
    return days


def template_exists(templates_dir: Path, name: str) -> bool:
    folder = templates_dir / name
    return all((folder / part).is_file() for part in TEMPLATE_PARTS)


def load_rules(campaigns_dir: Path, templates_dir: Path) -> list[Rule]:
    """Every enabled rule in the folder; raises RuleError listing every problem."""
    rules, problems = check_rules(campaigns_dir, templates_dir)
    if problems:
        raise RuleError(problems)
    return rules


def check_rules(campaigns_dir: Path, templates_dir: Path) -> tuple[list[Rule], list[str]]:
    """Parse all rule files; returns the valid rules and a list of problems."""
    files = sorted(Path(campaigns_dir).glob("*.toml"))
    if not files:
        return [], [f"{campaigns_dir}: no rule files (*.toml) found"]
    rules: list[Rule] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    loops: dict[str, str] = {}
    for path in files:
        file_rules, file_problems = _parse_file(path, templates_dir)
        problems += file_problems
        for rule in file_rules:
            if rule.name in seen:
                problems.append(f"{path}: {rule.name}: rule name already used in {seen[rule.name]}")
                continue
            if rule.loop is not None and rule.loop in loops:
                problems.append(
                    f"{path}: {rule.name}/loop: {rule.loop!r} already used by rule {loops[rule.loop]}"
                )
                continue
            seen[rule.name] = str(path)
            if rule.loop is not None:
                loops[rule.loop] = rule.name
            rules.append(rule)
    return _resolve_no_reply(rules, problems)


def _resolve_no_reply(rules: list[Rule], problems: list[str]) -> tuple[list[Rule], list[str]]:
    """A ``no_reply`` rule names an enabled rule (in any file) that emails about one client's event."""
    by_name = {rule.name: rule for rule in rules}
    resolved = []
    for rule in rules:
        if rule.no_reply is None:
            resolved.append(rule)
            continue
        named = by_name.get(rule.no_reply)
        where = f"{rule.source}: {rule.name}/when.no_reply"
        if named is None:
            known = ", ".join(sorted(r.name for r in rules if r.event)) or "none"
            problems.append(f"{where}: no enabled rule named {rule.no_reply!r} (event rules: {known})")
        elif not named.event:
            problems.append(
                f"{where}: rule {named.name!r} is not about an event; name a rule with when = {{ event = ... }}"
            )
        else:
            resolved.append(dataclasses.replace(rule, reply_event=named.event))
    return resolved, problems


def _parse_file(path: Path, templates_dir: Path) -> tuple[list[Rule], list[str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [], [f"{path}: not valid TOML: {exc}"]
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc.strerror or exc}"]
    problems = [f"{path}: {key}: unknown top-level key (rules go under [rules.NAME])"
                for key in data if key != "rules"]  # fmt: skip
    table = data.get("rules", {})
    if not isinstance(table, dict):
        return [], [*problems, f"{path}: rules: must be a table of [rules.NAME] sections"]
    rules = []
    for name, body in table.items():
        builder = _RuleBuilder(path, name, templates_dir)
        rule = builder.build(body)
        problems += builder.problems
        if rule is not None and not builder.problems:
            rules.append(rule)
    return rules, problems


class _RuleBuilder:
    """Validates one ``[rules.NAME]`` table, collecting every problem."""

    def __init__(self, path: Path, name: str, templates_dir: Path):
        self.path, self.name, self.templates_dir = path, name, templates_dir
        self.problems: list[str] = []
        self.silence: str | None = None  # "no_reply" or "no_event": the rule fires on a silence

    def problem(self, key: str, message: str) -> None:
        # A quoted TOML name may hold a line break or a tab: shown escaped, a
        # problem stays on one line.
        name = self.name if self.name.isprintable() else repr(self.name)
        self.problems.append(f"{self.path}: {name}/{key}: {message}")

    def build(self, body: object) -> Rule | None:
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            self.problem("name", "rule names use lower-case letters, digits and _ only")
        if not isinstance(body, dict):
            self.problem("rule", "must be a table")
            return None
        for key in sorted(set(body) - RULE_KEYS):
            self.problem(key, f"unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
        if body.get("enabled", True) is False:
            return None
        fields = self._when(body.get("when"))
        fields["template"] = self._template(body.get("template"))
        fields["delay"] = self._duration(body, "delay", timedelta(0))
        fields["max_age"] = self._duration(body, "max_age", timedelta(days=30))
        fields["priority"] = self._choice(body, "priority", "normal", tuple(PRIORITIES))
        fields["priority"] = PRIORITIES.get(fields["priority"], 0)
        if body.get("to", "physician") != "physician":
            self.problem("to", "only 'physician' (the referring physician) is supported")
        scope = fields.get("scope", "client")
        default_kind = "clinical" if scope == "client" else "relationship"
        fields["kind"] = self._choice(body, "kind", default_kind, ("clinical", "relationship"))
        fields["consent_required"] = self._bool(body, "consent_required", scope == "client")
        fields["description"] = str(body.get("description", ""))
        fields.update(self._loop(body, fields))
        if self.silence:
            # No event to wait after, nothing `outreach loops` follows; a lapse is reported however old.
            ignored = ("delay", "loop", "max_age") if self.silence == "no_event" else ("delay", "loop")
            for key in ignored:
                if key in body:
                    self.problem(key, f"does not apply to a {self.silence} rule")
        for key in ("enabled",):
            if key in body and not isinstance(body[key], bool):
                self.problem(key, "must be true or false")
        if self.problems:
            return None
        return Rule(name=self.name, source=str(self.path), **fields)

    def _when(self, when: object) -> dict:
        if not isinstance(when, dict):
            self.problem("when", 'missing or not a table, e.g. when = { event = "discharged" }')
            return {}
        for key in sorted(set(when) - WHEN_KEYS):
            self.problem(f"when.{key}", f"unknown key (allowed: {', '.join(sorted(WHEN_KEYS))})")
        scope = when.get("scope", "client")
        if scope not in ("client", "physician"):
            self.problem("when.scope", f"{scope!r} is not 'client' or 'physician'")
            scope = "client"
        given = [key for key in TRIGGERS if key in when]
        if len(given) != 1:
            self.problem("when", "give exactly one of 'event' or 'every' (or 'no_reply' or 'no_event')")
            return {"scope": scope}
        if given[0] in ("no_reply", "no_event"):
            self.silence = given[0]
            return self._when_silence(when, scope, given[0])
        for key in ("within", "for"):
            if key in when:
                self.problem(f"when.{key}", "goes with 'no_reply' (within) or 'no_event' (for)")
        if "event" in when:
            return self._when_event(when, scope)
        return self._when_every(when, scope)

    def _when_silence(self, when: dict, scope: str, trigger: str) -> dict:
        """``{ no_reply = "RULE", within = "2d" }`` or ``{ no_event = ["KIND", ...], for = "14d" }``."""
        if scope != "client" or "since" in when or "consecutive" in when:
            self.problem(
                "when", f"a {trigger} rule is about one client: no 'scope', 'since' or 'consecutive'"
            )
        other = "for" if trigger == "no_reply" else "within"
        if other in when:
            self.problem(f"when.{other}", f"does not go with '{trigger}'")
        if trigger == "no_reply":
            return self._when_no_reply(when)
        return self._when_no_event(when)

    def _when_no_reply(self, when: dict) -> dict:
        name = when["no_reply"]
        fields: dict = {"scope": "client"}
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name):
            self.problem(
                "when.no_reply", f'{name!r} is not a rule name, e.g. no_reply = "adverse_event_alert"'
            )
        elif name == self.name:
            self.problem("when.no_reply", "names this rule itself")
        else:
            fields["no_reply"] = name
        if "within" not in when:
            self.problem(
                "when.within", 'missing: how long to wait for the reply, e.g. within = "2d" (business days)'
            )
            return fields
        try:
            fields["reply_within"] = parse_reply_within(when["within"])
        except ValueError as exc:
            self.problem("when.within", str(exc))
        return fields

    def _when_no_event(self, when: dict) -> dict:
        kinds = when["no_event"]
        fields: dict = {"scope": "client"}
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds:
            self.problem("when.no_event", 'must list event kinds, e.g. ["session_attended", "reassessment"]')
        else:
            unknown = [kind for kind in kinds if kind not in EVENT_KINDS]
            for kind in unknown:
                self.problem(
                    "when.no_event", f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})"
                )
            if not unknown:
                fields["no_event"] = tuple(dict.fromkeys(kinds))
        if "for" not in when:
            self.problem("when.for", 'missing: how long without those events, e.g. for = "14d"')
            return fields
        try:
            lapse = parse_duration(when["for"])
        except ValueError as exc:
            self.problem("when.for", str(exc))
            return fields
        if lapse < timedelta(days=1):
            self.problem("when.for", "must be at least 1d")
        else:
            fields["lapse"] = lapse
        return fields

    def _when_event(self, when: dict, scope: str) -> dict:
        kind = when["event"]
        if kind not in EVENT_KINDS:
            self.problem("when.event", f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
        if scope != "client" or "since" in when:
            self.problem("when", "an event rule is about one client: no 'scope' or 'since'")
        fields = {"scope": "client", "event": kind}
        if "consecutive" in when:
            count = when["consecutive"]
            if kind != "session_missed":
                self.problem("when.consecutive", 'only goes with event = "session_missed"')
            elif not isinstance(count, int) or isinstance(count, bool) or not 2 <= count <= 20:
                self.problem("when.consecutive", f"{count!r} is not a whole number from 2 to 20")
            else:
                fields["consecutive"] = count
        return fields

    def _when_every(self, when: dict, scope: str) -> dict:
        every = when["every"]
        if "consecutive" in when:
            self.problem("when.consecutive", 'only goes with event = "session_missed"')
        if scope == "physician":
            if "since" in when:
                self.problem("when.since", "a physician-level rule has no 'since'")
            if every in CALENDAR_PERIODS:
                return {"scope": scope, "period": every}
            self.problem(
                "when.every", f"physician-level rules recur every 'month' or 'quarter', not {every!r}"
            )
            return {"scope": scope}
        since = when.get("since", "initial_assessment")
        if since not in ANCHORS:
            self.problem("when.since", f"unknown anchor {since!r} (an event kind or referral_date)")
        try:
            interval = parse_duration(every)
        except ValueError as exc:
            self.problem("when.every", str(exc))
            return {"scope": scope}
        if interval < timedelta(days=1):
            self.problem("when.every", "must be at least 1d")
        return {"scope": scope, "every": interval, "since": since}

    def _loop(self, body: dict, fields: dict) -> dict:
        """``loop``, ``loop_within`` and ``awaits_reply``: an expected communication, its deadline, its answer."""
        found = self._loop_deadline(body, fields)
        if "awaits_reply" in body:
            if not isinstance(body["awaits_reply"], bool):
                self.problem("awaits_reply", "must be true or false")
            elif "loop" not in found:
                self.problem("awaits_reply", 'goes with loop = "NAME": a loop that waits for the answer')
            else:
                found["awaits_reply"] = body["awaits_reply"]
        return found

    def _loop_deadline(self, body: dict, fields: dict) -> dict:
        if "loop" not in body:
            if "loop_within" in body:
                self.problem("loop_within", 'goes with loop = "NAME" (the name outreach loops shows)')
            return {}
        name = body["loop"]
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            self.problem("loop", 'must be a name on one line, e.g. loop = "discharge summary"')
            return {}
        if fields.get("scope", "client") != "client":
            self.problem("loop", "only a rule about one client is followed by outreach loops")
            return {}
        if "event" not in fields:  # recurring: due ``every`` after the last one sent
            if "loop_within" in body:
                self.problem("loop_within", "a recurring rule is due every 'when.every'; no loop_within")
            return {"loop": name}
        if "loop_within" not in body:
            self.problem("loop_within", 'missing: how soon after the event, e.g. "2 business days"')
            return {}
        try:
            within = parse_business_days(body["loop_within"])
        except ValueError as exc:
            self.problem("loop_within", str(exc))
            return {}
        return {"loop": name, "loop_within": within}

    def _template(self, name: object) -> str:
        if not isinstance(name, str) or not name:
            self.problem("template", "missing: name a folder in the templates directory")
            return ""
        if not template_exists(self.templates_dir, name):
            parts = ", ".join(TEMPLATE_PARTS)
            self.problem(
                "template", f"unknown template {name!r} (needs {parts} in {self.templates_dir / name})"
            )
        return name

    def _duration(self, body: dict, key: str, default: timedelta) -> timedelta:
        if key not in body:
            return default
        try:
            return parse_duration(body[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def _choice(self, body: dict, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = body.get(key, default)
        if value not in allowed:
            self.problem(key, f"{value!r} is not one of {', '.join(allowed)}")
            return default
        return value

    def _bool(self, body: dict, key: str, default: bool) -> bool:
        value = body.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value
