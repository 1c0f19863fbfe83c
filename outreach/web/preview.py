"""Any rule for any client, rendered as it would go now (as ``outreach preview``), queuing nothing.

Both read through ``planner.preview_rule``, the rules and templates as the
service reads them. The HTML part is shown in a sandboxed frame from its
own route (``preview_html``), under the email policy: its styles apply,
nothing in it can run.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template, request

from outreach import planner
from outreach.errors import OutreachError
from outreach.renderer import Rendered
from outreach.rules import Rule, load_rules
from outreach.web.security import EMAIL_POLICY, audit, engine, now, settings

bp = Blueprint("preview", __name__)


@bp.route("/preview")
def preview() -> tuple[str, int]:
    """The form (a rule, a client's ref) and, once both are given, the email it would send."""
    rule_name = request.args.get("rule", "").strip()
    ref = request.args.get("client", "").strip()
    error = None
    rules: list[Rule] = []
    try:
        rules = load_rules(settings().campaigns_dir, settings().templates_dir)
    except OutreachError as exc:
        error = f"The rules could not be read: {exc}"
    rendered: Rendered | None = None
    if error is None and (rule_name or ref):
        if not rule_name:
            error = "Choose a rule to preview."
        elif not ref:
            error = "Name the client to render it for (their ref, such as C-1001)."
        else:
            try:
                rendered = planner.preview_rule(engine(), settings(), rule_name, ref, now())
            except OutreachError as exc:  # no such rule or client, no event to report, a template fault
                error = str(exc)
    if rendered is not None:
        audit("view preview", f"client {ref}", f"rule {rule_name}")
    page = render_template(
        "preview.html", rules=rules, rule_name=rule_name, ref=ref, rendered=rendered, error=error
    )
    return page, 422 if error else 200


@bp.route("/preview/html")
def preview_html() -> Response:
    """The HTML part alone, for the page's sandboxed frame (a frame's ``srcdoc`` would inherit the
    page's policy, which forbids the inline styles every email has)."""
    rule_name, ref = request.args.get("rule", "").strip(), request.args.get("client", "").strip()
    try:
        rendered = planner.preview_rule(engine(), settings(), rule_name, ref, now())
    except OutreachError as exc:
        abort(404, str(exc))
    response = Response(rendered.html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = EMAIL_POLICY
    return response
