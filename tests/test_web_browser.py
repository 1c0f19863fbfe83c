"""The console in a real browser: Debian's chromium, driven by Playwright, against ``outreach web``.

The Flask test client checks what each route returns; only a browser shows
what a person meets: the login redirect and its cookie, forms that post with
their CSRF token, the email inside its sandboxed frame, the confirmation
step before a retry, inline errors, and markup in the data that must stay
text (a client named ``<script>alert(1)</script>``: no dialog may ever open).

One journey through the demo practice, as a member of staff would take it.
Each page visited is saved, full length at 1280×900, to ``docs/screenshots/``
(the README shows them), from the SQLite run.

Playwright cannot download its own browser here; the test uses
``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it)
and is skipped without it, except under CI, where that is a failure.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)
from sqlalchemy import Engine, Table, func, select
from sqlalchemy.engine import make_url

from outreach import store
from outreach.models import clients, events, measurements, utcnow
from outreach.review import list_messages
from outreach.settings import Settings
from tests.conftest import ROOT
from tests.web_server import HOSTILE_FIRST, HOSTILE_LAST, HOSTILE_NOTE, Practice, console_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
PAINTED_BYTES = 20_000  # a blank email frame's screenshot is about 3 KB, a painted one 70 KB or more
WAIT_MS = 10_000  # longest any one step may take before the test fails (Playwright waits, never sleeps)

CLIENT = "C-1001"  # Jordan Davis, ACL reconstruction: active, measured with the LEFS
FILTER_CLIENT = "C-1003"  # Robert Kim: his goal and discharge updates went out
EVENT_NOTE = "Jogged 10 minutes on the treadmill, no effusion afterwards"
GOOD_SCORE = "63"
BAD_SCORE = "95"  # the LEFS runs from 0 to 80
EMAIL_TEXT = "I am writing to let you know promptly about an adverse event"
PREVIEW_RULE = "progress_report"


# --- the browser ---------------------------------------------------------------------------


def need_chromium() -> None:
    """Skip without Debian's chromium; under CI a missing browser is a failure, never a skip."""
    if os.access(CHROMIUM, os.X_OK):
        return
    reason = f"{CHROMIUM} is missing: apt-get install chromium (the browser test drives Debian's chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Browser]:
    need_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def practice(settings: Settings, engine: Engine, tmp_path: Path) -> Iterator[Practice]:
    with console_server(settings, engine, tmp_path) as running:
        yield running


class Watch:
    """What the page did besides rendering: dialogs (there must be none), script errors, console lines."""

    def __init__(self, page: Page):
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        # A script the Content-Security-Policy blocked is reported here; it never ran, so it is no failure.
        self.console.append(f"{message.type}: {message.text}")


class Journey:
    """One member of staff's visit: the page, the running console, and where screenshots go."""

    def __init__(self, page: Page, practice: Practice, shots: bool):
        self.page = page
        self.practice = practice
        self.shots = shots

    def url(self, path: str) -> str:
        return f"{self.practice.url}{path}"

    def at(self, path: str) -> re.Pattern[str]:
        """The URL of ``path`` on this console, with or without a query string."""
        return re.compile(re.escape(self.url(path)) + r"(\?.*)?$")

    def shoot(self, name: str) -> None:
        """Save the whole page as docs/screenshots/NAME.png (written aside, then moved: never half a file)."""
        if not self.shots:
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        part = SCREENSHOTS / f".{name}.png.part"
        # chromium paints a frame from another origin (the sandboxed email) only once it has been
        # on screen: bring it into view until it is painted, then let the viewport hold the whole
        # page for the picture, so the email stays painted in it.
        for frame in self.page.locator("iframe.email").all():
            painted(frame)
        height = int(self.page.evaluate("() => document.documentElement.scrollHeight"))
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": max(height, VIEWPORT["height"])})
        try:
            self.page.screenshot(path=str(part), type="png", full_page=True, animations="disabled")
        finally:
            self.page.set_viewport_size(VIEWPORT)
        os.replace(part, SCREENSHOTS / f"{name}.png")

    def nav(self, label: str) -> None:
        """Follow a link in the top bar, as a person would."""
        self.page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()

    def local_now(self) -> datetime:
        return utcnow().astimezone(self.practice.settings.tz)


def painted(frame: Locator) -> None:
    """Wait until the frame shows its page: a blank frame's picture is a few kilobytes, an email's many."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while len(frame.screenshot(type="png", animations="disabled")) < PAINTED_BYTES:
        if time.monotonic() > deadline:
            raise AssertionError(f"chromium never painted the email's frame in {WAIT_MS} ms")


def fill(form: Locator, name: str, value: str) -> None:
    """Set a form field whether the page made it a select or a text input."""
    field = form.locator(f"[name={name}]")
    if field.evaluate("element => element.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def form_with(page: Page, button: str) -> Locator:
    """The form that holds the button named ``button``."""
    return page.locator("form").filter(has=page.get_by_role("button", name=button, exact=True))


def log_rows(page: Page) -> Locator:
    return page.locator("main table tbody tr")


def message_link(page: Page, message_id: int) -> Locator:
    return page.locator(f'main a[href$="/messages/{message_id}"]')


def count(practice: Practice, table: Table, client_ref: str) -> int:
    """How many rows of ``events`` or ``measurements`` a client has (the browser's changes, checked at the source)."""
    with store.read(practice.engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(table.join(clients, clients.c.id == table.c.client_id))
                .where(clients.c.ref == client_ref)
            ).scalar_one()
        )


# --- the steps -----------------------------------------------------------------------------


def log_in(j: Journey) -> None:
    """A page asked for before logging in leads to the login form, and back to that page after it."""
    page = j.page
    page.goto(j.url("/status"))
    expect(page).to_have_url(j.at("/login"))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    j.shoot("login")
    page.get_by_label("Email").fill(j.practice.email)
    page.get_by_label("Password").fill(j.practice.password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(j.at("/status"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Status")
    expect(page.get_by_text(f"{j.practice.email} (staff)")).to_be_visible()


def status_page(j: Journey) -> None:
    page = j.page
    j.nav("Status")
    expect(page).to_have_url(j.at("/status"))
    expect(page.get_by_role("heading", name="Queue")).to_be_visible()
    expect(page.locator("main table").get_by_role("link", name="sent", exact=True)).to_be_visible()
    j.shoot("status")


def filter_the_log(j: Journey) -> None:
    """The log's filters narrow the rows: by status, then by client."""
    page, practice = j.page, j.practice
    with store.read(practice.engine) as conn:
        everything = list_messages(conn, limit=None)
        sent = list_messages(conn, status="sent", limit=None)
        sent_for_client = list_messages(conn, status="sent", client=FILTER_CLIENT, limit=None)
    assert len(everything) > len(sent) > len(sent_for_client) > 0  # each filter must change what is shown

    j.nav("Log")
    expect(page).to_have_url(j.at("/"))
    expect(log_rows(page)).to_have_count(len(everything))
    expect(message_link(page, practice.failed_id).first).to_be_visible()
    expect(page.get_by_role("link", name="Download CSV")).to_be_visible()
    j.shoot("log")

    filters = form_with(page, "Filter")
    fill(filters, "status", "sent")
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]status=sent(&|$)"))
    expect(log_rows(page)).to_have_count(len(sent))
    expect(message_link(page, practice.failed_id)).to_have_count(0)

    filters = form_with(page, "Filter")
    fill(filters, "status", "sent")
    fill(filters, "client", FILTER_CLIENT)
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(rf"[?&]client={FILTER_CLIENT}(&|$)"))
    expect(log_rows(page)).to_have_count(len(sent_for_client))
    for row in log_rows(page).all():
        expect(row).to_contain_text(FILTER_CLIENT)


def read_a_message(j: Journey) -> None:
    """The failed alert, opened from the log: its HTML part in a sandboxed frame that runs nothing."""
    page, practice = j.page, j.practice
    filters = form_with(page, "Filter")
    fill(filters, "status", "failed")
    fill(filters, "client", "")
    filters.get_by_role("button", name="Filter").click()
    expect(log_rows(page)).to_have_count(1)
    message_link(page, practice.failed_id).first.click()
    expect(page).to_have_url(j.at(f"/messages/{practice.failed_id}"))

    frame = page.locator("iframe.email")
    expect(frame).to_have_count(1)
    sandbox = frame.get_attribute("sandbox")
    assert sandbox is not None, "the email's frame must be sandboxed"
    assert "allow-scripts" not in sandbox.split(), sandbox
    expect(page.frame_locator("iframe.email").get_by_text(EMAIL_TEXT)).to_be_visible()
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_visible()
    j.shoot("message")


def retry_it(j: Journey) -> None:
    """Retry asks first; confirmed, the message is queued again (pending) and says so."""
    page, practice = j.page, j.practice
    page.get_by_role("button", name="Retry", exact=True).click()
    confirm = page.get_by_role("button", name="Confirm retry")
    expect(confirm).to_be_visible()
    with store.read(practice.engine) as conn:
        still = list_messages(conn, status="failed", limit=None)
    assert [row["id"] for row in still] == [practice.failed_id], "asking to confirm must change nothing"
    confirm.click()
    expect(page).to_have_url(j.at(f"/messages/{practice.failed_id}"))
    expect(page.locator("p.notice")).to_contain_text("queued again")
    expect(page.get_by_text("pending", exact=True).first).to_be_visible()
    expect(page.get_by_role("button", name="Retry", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel message")).to_be_visible()
    with store.read(practice.engine) as conn:
        pending = [row["id"] for row in list_messages(conn, status="pending", limit=None)]
    assert practice.failed_id in pending


def record_on_a_client(j: Journey) -> None:
    """On a client's page: an event and a measure recorded and shown; a bad score refused inline."""
    page, practice = j.page, j.practice
    j.nav("Clients")
    expect(page).to_have_url(j.at("/clients"))
    expect(page.locator(f'main a[href$="/clients/{CLIENT}"]').first).to_be_visible()
    j.shoot("clients")
    page.locator(f'main a[href$="/clients/{CLIENT}"]').first.click()
    expect(page).to_have_url(j.at(f"/clients/{CLIENT}"))

    events_before = count(practice, events, CLIENT)
    when = (j.local_now() - timedelta(hours=1)).replace(second=0, microsecond=0)
    form = form_with(page, "Record event")
    fill(form, "kind", "session_attended")
    form.locator("[name=occurred_at]").fill(when.strftime("%Y-%m-%dT%H:%M"))
    form.locator("[name=note]").fill(EVENT_NOTE)
    form.get_by_role("button", name="Record event").click()
    expect(page).to_have_url(j.at(f"/clients/{CLIENT}"))
    expect(page.locator("p.notice")).to_be_visible()
    expect(page.get_by_text(EVENT_NOTE).first).to_be_visible()
    assert count(practice, events, CLIENT) == events_before + 1

    measures_before = count(practice, measurements, CLIENT)
    today = j.local_now().date().isoformat()
    form = form_with(page, "Record measure")
    fill(form, "instrument", "LEFS")
    form.locator("[name=score]").fill(GOOD_SCORE)
    form.locator("[name=measured_at]").fill(today)
    form.get_by_role("button", name="Record measure").click()
    expect(page).to_have_url(j.at(f"/clients/{CLIENT}"))
    expect(page.locator("p.notice")).to_be_visible()
    expect(page.locator("main").get_by_text(GOOD_SCORE, exact=True).first).to_be_visible()
    assert count(practice, measurements, CLIENT) == measures_before + 1
    j.shoot("client")

    form = form_with(page, "Record measure")
    fill(form, "instrument", "LEFS")
    form.locator("[name=score]").fill(BAD_SCORE)
    form.locator("[name=measured_at]").fill(today)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        form.get_by_role("button", name="Record measure").click()
    assert answer.value.status == 422
    error = page.locator("p.error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("LEFS")
    expect(form_with(page, "Record measure").locator("[name=score]")).to_have_value(BAD_SCORE)
    assert count(practice, measurements, CLIENT) == measures_before + 1, "a refused score must not be saved"


def loops_physicians_preview(j: Journey) -> None:
    """The pages that look across the practice: open loops, referring physicians, one physician, a preview."""
    page, practice = j.page, j.practice
    j.nav("Loops")
    expect(page).to_have_url(j.at("/loops"))
    expect(page.get_by_role("heading", name="Loops", level=1)).to_be_visible()
    expect(page.locator("main table tbody tr").first).to_be_visible()
    j.shoot("loops")

    j.nav("Physicians")
    expect(page).to_have_url(j.at("/physicians"))
    doctor = page.locator("main").get_by_role("link", name=practice.physician_name, exact=True)
    expect(doctor).to_be_visible()
    j.shoot("physicians")
    doctor.click()
    expect(page).to_have_url(re.compile(re.escape(j.url("/physicians/")) + r"[^/?]+@"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(practice.physician_name)
    expect(page.locator(f'main a[href$="/clients/{CLIENT}"]').first).to_be_visible()
    j.shoot("physician")

    j.nav("Preview")
    expect(page).to_have_url(j.at("/preview"))
    form = form_with(page, "Preview")
    fill(form, "rule", PREVIEW_RULE)
    fill(form, "client", CLIENT)
    form.get_by_role("button", name="Preview").click()
    expect(page).to_have_url(re.compile(rf"[?&]client={CLIENT}(&|$)"))
    frame, error = page.locator("iframe.email"), page.locator("p.error")
    expect(frame.or_(error).first).to_be_visible()
    assert error.count() == 0, f"the preview was refused: {error.all_inner_texts()}"
    expect(frame).to_have_count(1)
    sandbox = frame.get_attribute("sandbox")
    assert sandbox is not None and "allow-scripts" not in sandbox.split(), sandbox
    expect(page.frame_locator("iframe.email").locator("body")).to_contain_text(CLIENT)
    j.shoot("preview")


def hostile_client(j: Journey) -> None:
    """Markup in a name and a template expression in a note show as typed, on every page that names them.

    The client is imported while the console runs (after the README's pictures): the pages read the
    database on every request.
    """
    page = j.page
    ref = j.practice.add_hostile_client()
    j.nav("Clients")
    expect(page.get_by_text(HOSTILE_FIRST).first).to_be_visible()
    expect_inert(page)
    j.nav("Loops")
    expect(page.get_by_text(HOSTILE_FIRST).first).to_be_visible()
    expect_inert(page)
    j.nav("Physicians")
    page.locator("main").get_by_role("link", name=j.practice.physician_name, exact=True).click()
    expect(page.get_by_text(HOSTILE_FIRST).first).to_be_visible()
    expect_inert(page)
    page.goto(j.url(f"/clients/{ref}"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(HOSTILE_FIRST)
    expect(page.get_by_text(HOSTILE_LAST).first).to_be_visible()
    expect(page.get_by_text(HOSTILE_NOTE).first).to_be_visible()
    expect(page.get_by_text("49", exact=True)).to_have_count(0)
    expect_inert(page)


def expect_inert(page: Page) -> None:
    """Nothing from the data became an element: no script, no image with an onerror."""
    expect(page.locator("script")).to_have_count(0)
    expect(page.locator("img[src=x]")).to_have_count(0)


def log_out(j: Journey) -> None:
    """After logging out, every page leads to the login form again."""
    page = j.page
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(j.at("/login"))
    page.goto(j.url(f"/clients/{CLIENT}"))
    expect(page).to_have_url(j.at("/login"))
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.get_by_text(EVENT_NOTE)).to_have_count(0)


# --- the test ------------------------------------------------------------------------------


def test_a_member_of_staff_works_through_the_console(
    browser: Browser, practice: Practice, settings: Settings
) -> None:
    shots = make_url(settings.database_url).get_backend_name() == "sqlite"
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    watch = Watch(page)
    journey = Journey(page, practice, shots)
    try:
        log_in(journey)
        status_page(journey)
        filter_the_log(journey)
        read_a_message(journey)
        retry_it(journey)
        record_on_a_client(journey)
        loops_physicians_preview(journey)
        hostile_client(journey)
        log_out(journey)
    finally:
        context.close()
    assert watch.dialogs == [], f"a dialog opened: markup in the data ran ({watch.dialogs}; {watch.console})"
    assert watch.errors == [], f"a script failed on a page that should have none: {watch.errors}"
