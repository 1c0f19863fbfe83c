"""The plain-text layout helpers in Python give what the Jinja macros they replaced gave, byte for byte.

``_macros.txt`` used to define ``wrap``, ``para``, ``fact`` and ``bullets``
as macros over a chain of filters; they are now Python (``renderer``), and
wrapping takes a shortcut for plain lines. The former macros are kept here,
verbatim, as the reference; hypothesis feeds both the same hostile text.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import jinja2
import pytest
from hypothesis import example, given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from outreach.errors import RenderError
from outreach.renderer import Renderer, _wrap_line, make_environment

# The macros as _macros.txt defined them before they became Python.
REFERENCE_MACROS = """\
{% macro wrap(text, indent="", width=78) -%}
{{ text|string|replace("\\u00a0", "\\x07")|replace(" %", "\\x07%")|wordwrap(width - indent|length, \
break_on_hyphens=False, wrapstring="\\n" ~ indent)|replace("\\x07", " ") }}
{%- endmacro %}

{% macro para() -%}
{{ wrap(caller().split()|join(" ")) }}

{% endmacro %}

{% macro fact(label, value) -%}
{{ (label ~ ":")|pad(19) }} {{ wrap(value, " " * 20) }}
{%- endmacro %}

{% macro bullets(items) -%}
{% for item in items %}
- {{ wrap(item, "  ") }}
{% endfor %}
{%- endmacro %}
"""
SHIPPED = Path(__file__).resolve().parent.parent / "outreach" / "templates" / "email"

# Words, spaces of every kind, hyphens, "%" (never starts a line), the bell
# the macros use internally, long words, accents and line breaks.
TEXT = st.lists(
    st.sampled_from(
        [
            *"ab cd-\t\n\r%\x07é\u00a0\u2003\x0c\x1f",
            "word ",
            "supercalifragilistic",
            " % ",
            "well-being",
            "  ",
            "\r\n",
        ]
    ),
    max_size=80,
).map("".join)


def both(template: str, **values: object) -> tuple[str, str]:
    """``template`` rendered with the reference macros and with the shipped ``_macros.txt``."""
    env = _environment(template)
    return env.get_template("old.txt").render(values), env.get_template("new.txt").render(values)


@functools.cache
def _environment(template: str) -> jinja2.Environment:
    sources = {
        "reference.txt": REFERENCE_MACROS,
        "_macros.txt": (SHIPPED / "_macros.txt").read_text(encoding="utf-8"),
        "old.txt": '{% import "reference.txt" as t %}' + template,
        "new.txt": '{% import "_macros.txt" as t %}' + template,
    }
    return make_environment(SHIPPED, sources)


@settings_(max_examples=100, deadline=None)
@given(text=TEXT, indent=st.sampled_from(["", "  ", " " * 20]), width=st.integers(min_value=21, max_value=90))
@example(text="Light-headed on standing; BP 150/95 % of the time " * 4, indent=" " * 20, width=78)
def test_wrap_is_the_macro_it_replaced(text, indent, width):
    old, new = both("{{ t.wrap(text, indent, width) }}|{{ t.wrap(text, indent=indent) }}", text=text,
                    indent=indent, width=width)  # fmt: skip
    assert new == old


@settings_(max_examples=60, deadline=None)
@given(label=TEXT, value=TEXT, items=st.lists(TEXT, max_size=4))
def test_fact_and_bullets_are_the_macros_they_replaced(label, value, items):
    old, new = both("{{ t.fact(label, value) }}|{{ t.bullets(items) }}|{{ t.fact('N', 3) }}", label=label,
                    value=value, items=items)  # fmt: skip
    assert new == old


@settings_(max_examples=60, deadline=None)
@given(body=TEXT, value=TEXT)
def test_the_para_filter_and_call_are_the_macro_they_replaced(body, value):
    block = "Some text {{ value }} " + body.replace("{", "(")
    old, _ = both("{% call t.para() %}" + block + "{% endcall %}", value=value)
    _, called = both("{% call t.para() %}" + block + "{% endcall %}", value=value)
    _, filtered = both("{% filter para %}" + block + "{% endfilter %}", value=value)
    assert called == old
    assert filtered == old


def test_a_missing_value_still_names_itself(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (tmp_path / "_macros.txt").write_text((SHIPPED / "_macros.txt").read_text(encoding="utf-8"))
    (folder / "subject.txt").write_text("Report")
    (folder / "body.html").write_text("<p>x</p>")
    (folder / "body.txt").write_text(
        '{% import "_macros.txt" as t %}{{ t.fact("Diagnosis", client.diagnosis) }}'
    )
    with pytest.raises(RenderError, match="'client' is undefined"):
        Renderer(tmp_path).render("t", {"section_only": False})


LINE = st.lists(
    st.sampled_from([*"ab -\t%\x07é\x1f\u2003", "  ", "xxxxxxxxxxxxxxxx", "a-b", "word "]), max_size=40
).map("".join)


@settings_(max_examples=300, deadline=None)
@given(
    line=LINE, width=st.integers(min_value=1, max_value=40), long_words=st.booleans(), hyphens=st.booleans()
)
@example(line="BOTTOM LINE: URGENT - NEEDS YOUR ATTENTION: adverse event for S.B. (ref B015628).",
         width=78, long_words=True, hyphens=False)  # fmt: skip
def test_a_line_wraps_as_textwrap_wraps_it(line, width, long_words, hyphens):
    """Plain lines (words and single spaces) skip textwrap; the result must be textwrap's."""
    line = "".join(line.splitlines())  # wrapping works line by line
    expected = textwrap.wrap(line, width=width, expand_tabs=False, replace_whitespace=False,
                             break_long_words=long_words, break_on_hyphens=hyphens)  # fmt: skip
    assert _wrap_line.__wrapped__(line, width, long_words, hyphens) == tuple(expected)


def test_a_dotted_name_on_a_dict_reads_as_jinja_reads_it():
    """Keys first unless a dict method has the name (as plain Jinja), and a missing key names itself."""
    plain = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=True)
    ours = make_environment(SHIPPED, {})
    source = "{{ d.ref }} {{ d.items is callable }} {{ d.get('ref') }} {{ e.items }}"
    values = {"d": {"ref": "C-1", "items": 3}, "e": {"items": [1]}}
    assert ours.from_string(source).render(values) == plain.from_string(source).render(values)
    with pytest.raises(jinja2.UndefinedError, match="has no attribute 'missing'"):
        ours.from_string("{{ d.missing }}").render(values)
