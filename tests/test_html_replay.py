"""CSS inlining without parsing (``htmlreplay``) gives premailer's output exactly, or steps aside.

What lxml does to text on its way through is the table ``htmlreplay``
relies on: it is checked here against lxml itself, character by character
and entity by entity. The inliner as a whole is checked against premailer
with hostile text in every kind of place a template puts a value.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as settings_
from hypothesis import strategies as st
from lxml import etree
from premailer import Premailer

from outreach import htmlreplay
from outreach.renderer import PREMAILER_OPTIONS, ShapeCachedInliner, inline_css


def premailer(html: str) -> str:
    """premailer itself, configured as ``renderer`` configures it: the reference."""
    return Premailer(html, **PREMAILER_OPTIONS).transform()


def through_lxml(text: str) -> str | None:
    """``text`` as lxml writes it back from a paragraph (None: it did not stay in one)."""
    document = f"<!DOCTYPE html>\n<html><body><p>[{text}]</p></body></html>"
    tree = etree.fromstring(document, etree.HTMLParser()).getroottree()
    written = etree.tostring(tree, method="html", pretty_print=True, encoding="unicode")
    start, end = written.find("<p>["), written.rfind("]</p>")
    return written[start + 4 : end] if 0 <= start < end else None


CHARACTERS = [chr(c) for c in [*range(0x00, 0x800), *range(0x2000, 0x2070), 0xA0, 0x3000, 0xD7FF, 0xE000,
                               0xFEFF, 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF]]  # fmt: skip


def test_every_character_said_to_be_known_comes_back_as_normalise_says():
    for character in CHARACTERS:
        if character == htmlreplay.SENTINEL or htmlreplay.unknown(character):
            continue
        assert through_lxml(character) == htmlreplay.normalise(character), hex(ord(character))


def test_every_entity_said_to_be_known_comes_back_as_normalise_says():
    for reference in htmlreplay.ENTITIES:
        assert not htmlreplay.unknown(reference)
        assert through_lxml(reference) == htmlreplay.normalise(reference), reference


@pytest.mark.parametrize(
    "text",
    ["a\rb", "&lang;", "&amp", "&foo;", "&#128;", "&#13;", "&#x27;", "a & b", "x\x0cy", "\ufffe", "a<b"],
)
def test_text_lxml_reads_otherwise_is_unknown(text):
    assert htmlreplay.unknown(text)


STYLE = """<style>
body { margin: 0; color: #222222; }
.bottom-line { border-left: 5px solid #1f4e79; font-weight: bold; }
p { margin: 0 0 10px 0; }
table.facts th, table.facts td { padding: 2px 12px 2px 0; text-align: left; }
ul { margin: 0; }
.urgent { color: #b00020; }
</style>"""

# A document as the layout makes one: a value in every kind of place.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{0}</title>
{style}
</head>
<body>
<div class="bottom-line">
<span class="urgent">URGENT &ndash; {1}</span> {2}
</div>
<p>Dear {3},</p><p>{4}</p>
<table class="facts">
  <tr><th>When</th><td>{5}</td></tr>
  <tr><th>{6}</th><td>{7}</td></tr>
</table>
<ul>
  <li>{8}</li>
</ul>
<p><strong>{9}</strong>
{10}
</p>
</body>
</html>
"""
SLOTS = 11

KNOWN = ["Maria", " ", "  ", "\n", "\t", "&amp;", "&lt;", "&gt;", "&#34;", "&#39;", "&ndash;", "&nbsp;", ">",
         '"', "'", "é", "–", "\u00a0", "\u2003", "😀", "O&#39;Brien", "10 %", "x" * 40]  # fmt: skip
HOSTILE = ["\r", "\r\n", "&lang;", "&amp", "&foo;", "&#128;", "&", "\x07", "\x0c", "\x00", "\ufffe"]
# Values whose round trip is known, mostly (a page of them teaches its shape), or anything.
PLAIN_VALUE = st.lists(st.sampled_from(KNOWN), max_size=6).map("".join)
VALUE = st.lists(st.sampled_from(KNOWN + HOSTILE), max_size=6).map("".join)
PLAIN_PAGE = st.lists(PLAIN_VALUE, min_size=SLOTS, max_size=SLOTS)
ANY_PAGE = st.lists(VALUE, min_size=SLOTS, max_size=SLOTS)


def page(values: list[str]) -> str:
    return PAGE.format(*values, style=STYLE)


@settings_(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.one_of(PLAIN_PAGE, ANY_PAGE), later=ANY_PAGE, again=PLAIN_PAGE)
@example(first=["Summit"] + ["Maria"] * 10, later=["A &amp; B"] + ["  O&#39;Brien &lt;x&gt; –\u00a0"] * 10,
         again=["Summit"] + ["Ruth"] * 10)  # fmt: skip
@example(first=["Summit"] + ["Maria"] * 10, later=["Summit"] + [""] * 10, again=["Summit"] + [" "] * 10)
@example(first=["Summit"] + ["Maria"] * 10, later=["Summit", " "] + ["Maria\r\n"] * 9, again=["S"] * 11)
def test_a_page_replayed_without_parsing_is_what_premailer_gives(first, later, again):
    """The first page teaches its shape; later ones of the same shape must come out as premailer's."""
    inliner = ShapeCachedInliner()
    for values in (first, later, again):
        html = page(values)
        assert inliner(html) == premailer(html)


@settings_(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=PLAIN_PAGE, values=ANY_PAGE)
@example(first=["Summit"] + ["Maria"] * 10, values=["\r", "&lang;", "&amp", "&", "\x00", "\x0c", "\ufffe", "&#128;",
                                                   "&foo;", "\x07", "&#39;&gt;\t"])  # fmt: skip
def test_hostile_text_where_text_was_learned_is_what_premailer_gives(first, values):
    """Later pages keep the first's blank places blank and put anything in the others."""
    inliner = ShapeCachedInliner()
    inliner(page(first))
    later = [
        was if not was.strip(htmlreplay.BLANK) else "x" + value
        for was, value in zip(first, values, strict=True)
    ]
    html = page(later)
    assert inliner(html) == premailer(html)


@pytest.mark.slow
@settings_(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=PLAIN_PAGE, values=ANY_PAGE)
def test_much_hostile_text_where_text_was_learned_is_what_premailer_gives(first, values):
    test_hostile_text_where_text_was_learned_is_what_premailer_gives.hypothesis.inner_test(first, values)


@pytest.mark.slow
@settings_(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.one_of(PLAIN_PAGE, ANY_PAGE), later=ANY_PAGE, again=PLAIN_PAGE)
def test_many_pages_replayed_without_parsing_are_what_premailer_gives(first, later, again):
    test_a_page_replayed_without_parsing_is_what_premailer_gives.hypothesis.inner_test(first, later, again)


def test_a_learned_page_is_replayed_without_parsing(monkeypatch):
    """Plain values take the string path: lxml is not called for them at all."""
    inliner = ShapeCachedInliner()
    learned = page(["Summit"] + ["Maria Alvarez"] * 10)
    inliner(learned)
    assert isinstance(inliner._fast[tuple(htmlreplay.SPLIT.split(learned.strip())[1::2])], htmlreplay.Replay)

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(etree, "fromstring", no_parsing)
    other = page(["Summit"] + ["Ruth Osei, MD &amp; partners &#39;24"] * 10)
    written = inliner(other)
    monkeypatch.undo()
    assert written == premailer(other)


def test_a_shape_that_cannot_be_replayed_from_strings_is_not_learned():
    parts = htmlreplay.SPLIT.split("<p>a<p>b</p>")
    assert htmlreplay.learn(parts, "<p>a</p><p>b</p>", frozenset({"style"})) is None  # lxml closed a <p>
    parts = htmlreplay.SPLIT.split("<script>{0}</script>")
    assert htmlreplay.learn(parts, "<script>{0}</script>", frozenset({"style"})) is None  # read as it stands


MORE_CSS = """<style>
p { color: red !important; margin: 0; }
a:hover { color: blue; }
.note, td.num { font-size: 12px; }
@media (max-width: 600px) { .wrapper { padding: 0; } }
</style>
<style>p { color: green; } h2 { margin: 4px 0; }</style>"""


@pytest.mark.parametrize("style", [STYLE, MORE_CSS, "<style></style>", ""])
def test_our_premailer_working_out_each_stylesheet_once_is_premailer(style):
    """Important rules, pseudo-classes kept aside, @media left in a <style>, two sheets, none."""
    for values in (["Summit"] + ["Maria"] * 10, ["A &amp; B"] + ["<a href='#'>x</a>", "y"] * 5):
        html = PAGE.format(*values, style=style).replace("<p>", '<p class="note">', 1)
        for _ in range(2):  # the second time from what the first worked out
            assert inline_css(html) == premailer(html)
