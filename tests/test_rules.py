"""Campaign rule files: strict validation, ``file: rule/key: message`` problems, ``outreach check``."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from outreach.errors import RuleError
from outreach.models import EVENT_KINDS, PRIORITIES
from outreach.rules import check_rules, load_rules
from tests.conftest import ROOT

CAMPAIGNS = ROOT / "outreach" / "campaigns"
TEMPLATES = ROOT / "outreach" / "templates" / "email"
KNOWN_KINDS = ", ".join(EVENT_KINDS)

GOOD_RULE = """
[rules.assessment_note]
when = { event = "initial_assessment" }
template = "note"
"""


def make_templates(
    folder: Path, subject: str = "Initial assessment: {{ client.initials }}", body: str = ""
) -> Path:
    """A templates directory with one complete template, ``note``."""
    note = folder / "note"
    note.mkdir(parents=True)
    (note / "subject.txt").write_text(subject + "\n")
    (note / "body.txt").write_text(f"Dear {{{{ physician.salutation }}}},\n{body}\n")
    (note / "body.html").write_text(f"<p>Dear {{{{ physician.salutation }}}},</p><p>{body}</p>\n")
    return folder


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    return make_templates(tmp_path / "templates")


@pytest.fixture
def campaigns(tmp_path: Path) -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    return folder


def write_rules(folder: Path, text: str, name: str = "rules.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_for(campaigns: Path, templates: Path, text: str) -> tuple[Path, list[str]]:
    path = write_rules(campaigns, text)
    _, problems = check_rules(campaigns, templates)
    return path, problems


# --- the shipped rules --------------------------------------------------------------------


def test_the_shipped_campaigns_load():
    rules, problems = check_rules(CAMPAIGNS, TEMPLATES)
    assert problems == []
    names = {r.name for r in rules}
    assert {"initial_assessment_report", "progress_report", "discharge_summary", "quarterly_summary"} <= names
    assert load_rules(CAMPAIGNS, TEMPLATES) == rules


def test_a_valid_rule_file_is_parsed(campaigns, templates):
    write_rules(
        campaigns,
        """
        [rules.monthly_update]
        description = "Every 30 days"
        when = { every = "30d", since = "initial_assessment" }
        template = "note"
        delay = "2h"
        priority = "urgent"

        [rules.practice_news]
        when = { every = "quarter", scope = "physician" }
        template = "note"

        [rules.switched_off]
        when = { event = "discharged" }
        template = "note"
        enabled = false
        """,
    )
    rules, problems = check_rules(campaigns, templates)
    assert problems == []
    by_name = {r.name: r for r in rules}
    assert set(by_name) == {"monthly_update", "practice_news"}  # disabled rules are left out
    monthly = by_name["monthly_update"]
    assert (monthly.every, monthly.since, monthly.delay) == (
        timedelta(days=30),
        "initial_assessment",
        timedelta(hours=2),
    )
    assert monthly.priority == PRIORITIES["urgent"] and monthly.scope == "client"
    news = by_name["practice_news"]
    assert (news.scope, news.period, news.kind) == ("physician", "quarter", "relationship")


# --- one problem at a time ----------------------------------------------------------------

BAD_RULES = {
    "unknown top-level key": (
        'title = "Clinical"\n' + GOOD_RULE,
        "title: unknown top-level key",
    ),
    "misspelt key": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment" }\ntempalte = "note"\n',
        "assessment_note/tempalte: unknown key",
    ),
    "unknown template": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment" }\ntemplate = "no_such_template"\n',
        "assessment_note/template: unknown template 'no_such_template'",
    ),
    "unknown event kind": (
        '[rules.assessment_note]\nwhen = { event = "lunch" }\ntemplate = "note"\n',
        "assessment_note/when.event: unknown event kind 'lunch'",
    ),
    "every is not a duration": (
        '[rules.monthly]\nwhen = { every = "thirty days" }\ntemplate = "note"\n',
        "monthly/when.every: 'thirty days' is not a duration",
    ),
    "delay is not a duration": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment" }\ntemplate = "note"\ndelay = "5x"\n',
        "assessment_note/delay: '5x' is not a duration",
    ),
    "both event and every": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment", every = "30d" }\ntemplate = "note"\n',
        "assessment_note/when: give exactly one of 'event' or 'every'",
    ),
    "bad priority": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment" }\ntemplate = "note"\npriority = "high"\n',
        "assessment_note/priority: 'high' is not one of normal, urgent",
    ),
    "physician rule every 30d": (
        '[rules.news]\nwhen = { every = "30d", scope = "physician" }\ntemplate = "note"\n',
        "news/when.every: physician-level rules recur every 'month' or 'quarter'",
    ),
    "unknown when key": (
        '[rules.assessment_note]\nwhen = { event = "initial_assessment", sinse = "x" }\ntemplate = "note"\n',
        "assessment_note/when.sinse: unknown key",
    ),
    "every under a day": (
        '[rules.hourly]\nwhen = { every = "12h" }\ntemplate = "note"\n',
        "hourly/when.every: must be at least 1d",
    ),
    "loop_within not in business days": (
        GOOD_RULE + 'loop = "assessment note"\nloop_within = "2 days"\n',
        "assessment_note/loop_within: '2 days' is not a deadline like '2 business days'",
    ),
    "loop_within of no days": (
        GOOD_RULE + 'loop = "assessment note"\nloop_within = "0 business days"\n',
        "assessment_note/loop_within: '0 business days': give from 1 to 30 business days",
    ),
    "loop_within a number": (
        GOOD_RULE + 'loop = "assessment note"\nloop_within = 2\n',
        "assessment_note/loop_within: 2 is not a deadline like '2 business days'",
    ),
    "loop without loop_within": (
        GOOD_RULE + 'loop = "assessment note"\n',
        "assessment_note/loop_within: missing: how soon after the event",
    ),
    "loop_within without loop": (
        GOOD_RULE + 'loop_within = "2 business days"\n',
        'assessment_note/loop_within: goes with loop = "NAME"',
    ),
    "loop not a name": (
        GOOD_RULE + 'loop = ""\nloop_within = "2 business days"\n',
        "assessment_note/loop: must be a name on one line",
    ),
    "loop on a physician rule": (
        '[rules.news]\nwhen = { every = "quarter", scope = "physician" }\ntemplate = "note"\nloop = "news"\n',
        "news/loop: only a rule about one client is followed by outreach loops",
    ),
    "loop_within on a recurring rule": (
        '[rules.monthly]\nwhen = { every = "30d" }\ntemplate = "note"\nloop = "monthly"\n'
        'loop_within = "2 business days"\n',
        "monthly/loop_within: a recurring rule is due every 'when.every'; no loop_within",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD_RULES.values(), ids=BAD_RULES.keys())
def test_each_problem_names_file_rule_and_key(campaigns, templates, text, expected):
    path, problems = problems_for(campaigns, templates, text)
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems
    with pytest.raises(RuleError) as caught:
        load_rules(campaigns, templates)
    assert caught.value.problems == problems


def test_a_misspelt_key_also_reports_the_missing_one(campaigns, templates):
    path, problems = problems_for(campaigns, templates, BAD_RULES["misspelt key"][0])
    assert sorted(problems) == sorted(
        [
            f"{path}: assessment_note/tempalte: unknown key (allowed: "
            "awaits_reply, consent_required, delay, description, enabled, kind, loop, loop_within, max_age, priority, "
            "template, to, when)",
            f"{path}: assessment_note/template: missing: name a folder in the templates directory",
        ]
    )


def test_invalid_toml(campaigns, templates):
    path, problems = problems_for(campaigns, templates, '[rules.assessment_note\ntemplate = "note"\n')
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: not valid TOML: ")


def test_an_expected_communication_is_read_from_loop_and_loop_within(campaigns, templates):
    write_rules(
        campaigns,
        GOOD_RULE
        + 'loop = "assessment note"\nloop_within = " 4  business days "\n'
        + '[rules.monthly]\nwhen = { every = "30d" }\ntemplate = "note"\nloop = "monthly report"\n'
        + '[rules.untracked]\nwhen = { event = "discharged" }\ntemplate = "note"\n',
    )
    rules, problems = check_rules(campaigns, templates)
    assert problems == []
    assert [(r.name, r.loop, r.loop_within) for r in rules] == [
        ("assessment_note", "assessment note", 4),
        ("monthly", "monthly report", None),
        ("untracked", None, None),
    ]


def test_a_loop_name_used_by_two_rules(campaigns, templates):
    first = write_rules(campaigns, GOOD_RULE + 'loop = "report"\nloop_within = "1 business day"\n', "a.toml")
    second = write_rules(
        campaigns,
        '[rules.other]\nwhen = { event = "discharged" }\ntemplate = "note"\n'
        'loop = "report"\nloop_within = "1 business day"\n',
        "b.toml",
    )
    rules, problems = check_rules(campaigns, templates)
    assert problems == [f"{second}: other/loop: 'report' already used by rule assessment_note"]
    assert [r.source for r in rules] == [str(first)]


def test_a_rule_name_used_in_two_files(campaigns, templates):
    first = write_rules(campaigns, GOOD_RULE, "a.toml")
    second = write_rules(campaigns, GOOD_RULE, "b.toml")
    rules, problems = check_rules(campaigns, templates)
    assert problems == [f"{second}: assessment_note: rule name already used in {first}"]
    assert [r.source for r in rules] == [str(first)]


def test_every_problem_in_a_file_is_reported(campaigns, templates):
    path, problems = problems_for(
        campaigns,
        templates,
        """
        [rules.one]
        when = { event = "lunch" }
        template = "note"

        [rules.two]
        when = { every = "thirty days" }
        template = "nope"
        priority = "high"

        [rules.three]
        when = { event = "discharged" }
        template = "note"
        delay = "5x"
        """,
    )
    prefixes = sorted(p.split(": ")[1] for p in problems)
    assert prefixes == ["one/when.event", "three/delay", "two/priority", "two/template", "two/when.every"]
    assert all(p.startswith(f"{path}: ") for p in problems)


def test_problems_in_several_files_are_all_reported(campaigns, templates):
    a = write_rules(campaigns, '[rules.one]\nwhen = { event = "lunch" }\ntemplate = "note"\n', "a.toml")
    b = write_rules(campaigns, "[rules.two\n", "b.toml")
    _, problems = check_rules(campaigns, templates)
    assert len(problems) == 2
    assert problems[0].startswith(f"{a}: one/when.event: ")
    assert problems[1].startswith(f"{b}: not valid TOML")


def test_an_empty_campaigns_folder_is_a_problem(campaigns, templates):
    _, problems = check_rules(campaigns, templates)
    assert problems == [f"{campaigns}: no rule files (*.toml) found"]


# --- outreach check ---------------------------------------------------------------------------


def check(run_cli, campaigns: Path, templates: Path):
    return run_cli(
        "check",
        extra_env={"OUTREACH_CAMPAIGNS_DIR": str(campaigns), "OUTREACH_TEMPLATES_DIR": str(templates)},
    )


def test_check_passes_with_the_shipped_rules_and_templates_and_no_loop_warning(run_cli):
    result = run_cli("check")  # one run for both checks: each run renders every shipped template
    assert result.exit_code == 0, result.stderr
    assert "settings, rules and templates are valid" in result.stdout
    assert "warning:" not in result.stderr  # the shipped rules declare their loops: no loop warning


def test_check_warns_when_no_rule_declares_a_loop_but_passes(run_cli, campaigns, templates):
    write_rules(campaigns, GOOD_RULE)  # valid, but `outreach loops` would list nothing
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "loop = " in result.stderr


def test_check_passes_with_a_clean_rule_set(run_cli, campaigns, templates):
    write_rules(campaigns, GOOD_RULE)
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "staging: off, email goes to physicians (OUTREACH_REDIRECT_ALL_TO is not set)",
        "retention: every body is kept (OUTREACH_RETENTION_DAYS is not set)",
        "settings, rules and templates are valid",
    ]


def test_check_prints_every_rule_problem(run_cli, campaigns, templates):
    path = write_rules(
        campaigns,
        """
        [rules.one]
        when = { event = "lunch" }
        template = "note"

        [rules.two]
        when = { event = "discharged" }
        tempalte = "note"
        """,
    )
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{path}: one/when.event: unknown event kind 'lunch'") for line in lines)
    assert any(line.startswith(f"{path}: two/tempalte: unknown key") for line in lines)
    assert any(line.startswith(f"{path}: two/template: missing") for line in lines)
    assert lines[-1] == "3 problem(s) found"
    assert "Traceback" not in result.output


def test_check_finds_a_client_name_in_a_subject(run_cli, campaigns, tmp_path):
    write_rules(campaigns, GOOD_RULE)
    templates = make_templates(tmp_path / "leaky", subject="Initial assessment: {{ client.last_name }}")
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 1
    assert "assessment_note/template: subject 'Initial assessment: " in result.stderr
    assert "contains the client's last name" in result.stderr


def test_check_finds_an_undefined_variable(run_cli, campaigns, tmp_path):
    write_rules(campaigns, GOOD_RULE)
    templates = make_templates(tmp_path / "typo", body="{{ no_such_variable }}")
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 1
    assert "assessment_note/template" in result.stderr
    assert "'no_such_variable' is undefined" in result.stderr


def test_check_finds_a_template_syntax_error(run_cli, campaigns, tmp_path):
    write_rules(campaigns, GOOD_RULE)
    templates = make_templates(tmp_path / "broken", body="{% if client.ref %}unclosed")
    result = check(run_cli, campaigns, templates)
    assert result.exit_code == 1
    assert "note/body.txt" in result.stderr and "template/note" in result.stderr


def test_check_finds_a_client_name_and_an_undefined_variable_in_the_shipped_templates(run_cli, tmp_path):
    """Two problems in a copy of the shipped templates, each found (one run: a check renders them all)."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    subject = copy / "initial_assessment_report" / "subject.txt"
    subject.write_text(subject.read_text().rstrip("\n") + " {{ client.last_name }}\n")
    body = copy / "discharge_summary" / "body.txt"
    text = body.read_text()
    assert "{% block content %}" in text  # the body extends the layout: only blocks are rendered
    body.write_text(text.replace("{% block content %}", "{% block content %}\n{{ no_such_variable }}", 1))
    result = run_cli("check", extra_env={"OUTREACH_TEMPLATES_DIR": str(copy)})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert any(
        "initial_assessment_report/template: subject" in line and "contains the client's last name" in line
        for line in lines
    ), result.stderr
    assert any("discharge_summary/template" in line and "no_such_variable" in line for line in lines), (
        result.stderr
    )


def test_run_refuses_to_start_with_an_invalid_rule_file(engine, run_cli, campaigns, templates):
    path = write_rules(campaigns, '[rules.one]\nwhen = { event = "lunch" }\ntemplate = "note"\n')
    result = run_cli(
        "run",
        "--once",
        "--now",
        "2026-11-25T10:00",
        extra_env={"OUTREACH_CAMPAIGNS_DIR": str(campaigns), "OUTREACH_TEMPLATES_DIR": str(templates)},
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {path}: one/when.event: unknown event kind 'lunch' (known: {KNOWN_KINDS})"]
    assert "planned" not in result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key", ["when.every", "delay"])
def test_an_absurd_duration_is_a_problem_not_a_crash(campaigns, templates, key):
    if key == "delay":
        text = '[rules.r]\nwhen = { event = "discharged" }\ntemplate = "note"\ndelay = "1000000000d"\n'
    else:
        text = '[rules.r]\nwhen = { every = "1000000000d" }\ntemplate = "note"\n'
    path, problems = problems_for(campaigns, templates, text)
    assert [p.split(": ")[:2] for p in problems] == [[str(path), f"r/{key}"]]


def test_an_unreadable_rule_file_is_a_problem_not_a_crash(campaigns, templates):
    write_rules(campaigns, GOOD_RULE)
    (campaigns / "old.toml").mkdir()
    _, problems = check_rules(campaigns, templates)
    assert len(problems) == 1 and problems[0].startswith(f"{campaigns / 'old.toml'}: ")
