"""Templates in, email parts out: Jinja2 (strict, autoescaped) and CSS inlining.

Each kind of email is a folder in the templates directory with three parts:
``subject.txt``, ``body.html`` and ``body.txt``; the bodies extend the shared
``_layout.html`` / ``_layout.txt`` (letterhead, sign-off, confidentiality
notice). A missing variable is an error that names it, never "Dear ,".
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import stat
import textwrap
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
from lxml import etree
from premailer import Premailer

from outreach import htmlreplay
from outreach.errors import RenderError
from outreach.instruments import format_change, format_score
from outreach.rules import TEMPLATE_PARTS

MAX_SUBJECT = 200


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Section:
    """One update as a section of a digest (not inlined: the digest is, as a whole)."""

    html: str
    text: str


def _date(value: date | datetime | None, with_time: bool = False) -> str:
    """Dates as ``26 Nov 2026``: unambiguous on both sides of the Atlantic."""
    if value is None:
        return "not recorded"
    if with_time and isinstance(value, datetime):
        return value.strftime("%d %b %Y %H:%M").lstrip("0")
    return value.strftime("%d %b %Y").lstrip("0")


def _pad(value: object, width: int) -> str:
    """Left-align in a column, for tables in the plain-text part."""
    return str(value).ljust(width)


@functools.lru_cache(maxsize=16384)
def _wrap_line(line: str, width: int, break_long_words: bool, break_on_hyphens: bool) -> tuple[str, ...]:
    """textwrap.wrap as Jinja's ``wordwrap`` calls it, remembered: most lines recur."""
    if _plain_words(line, break_on_hyphens) and width > 0:
        words = line.split(" ")
        lengths = list(map(len, words))
        if max(lengths) <= width:
            return _fill(words, lengths, width)
    return tuple(
        textwrap.wrap(
            line,
            width=width,
            expand_tabs=False,
            replace_whitespace=False,
            break_long_words=break_long_words,
            break_on_hyphens=break_on_hyphens,
        )
    )


# Every ASCII character but the white space Python's str.strip() knows other than
# the space (textwrap splits at some of it, and drops what strip() drops):
# bytes.translate(None, ...) leaves only that white space.
_WORDS_AND_SPACES = bytes(c for c in range(128) if c == 0x20 or not chr(c).isspace())


def _plain_words(line: str, break_on_hyphens: bool) -> bool:
    """Words and single spaces only, the common line: textwrap's result is a plain greedy fill.

    (The lines that recur are remembered; the ones that name a client, a
    bottom line or a greeting, are wrapped afresh for every email.)
    """
    return (
        bool(line)
        and line.isascii()
        and line[0] != " "
        and line[-1] != " "
        and "  " not in line
        and not (break_on_hyphens and "-" in line)
        and not line.encode("ascii").translate(None, _WORDS_AND_SPACES)
    )


def _fill(words: list[str], lengths: list[int], width: int) -> tuple[str, ...]:
    """Words, none longer than ``width``, as textwrap lays them out: as many on a line as fit."""
    lines = []
    first, used = 0, lengths[0]
    for index in range(1, len(words)):
        if used + 1 + lengths[index] <= width:
            used += 1 + lengths[index]
        else:
            lines.append(" ".join(words[first:index]))
            first, used = index, lengths[index]
    lines.append(" ".join(words[first:]))
    return tuple(lines)


@jinja2.pass_environment
def _wordwrap(
    environment: jinja2.Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's ``wordwrap`` filter, line for line, with each line's wrapping cached.

    Plain-text emails wrap a dozen paragraphs each, and textwrap is slow;
    the same sentences recur in every email of a kind.
    """
    if wrapstring is None:
        wrapstring = environment.newline_sequence
    return wrapstring.join(
        wrapstring.join(_wrap_line(line, width, break_long_words, break_on_hyphens))
        for line in str(s).splitlines()
    )


# The plain-text layout helpers of ``_macros.txt`` (``wrap``, ``para``, ``fact``,
# ``bullets``), in Python: a dozen calls per email, each a Jinja macro call
# and a chain of five filters, were a third of rendering. ``_macros.txt``
# binds its names to these; the output is what its macros gave, byte for byte.

TEXT_WIDTH = 78


def text_wrap(text: object, indent: str = "", width: int = TEXT_WIDTH) -> str:
    """Wrap to ``width`` columns, continuation lines starting with ``indent``.

    Never at a hyphen or before a "%" sign; a no-break space is kept
    together while wrapping and printed as a plain space.
    """
    return _wrap_text(str(text), indent, width)


@functools.lru_cache(maxsize=16384)
def _wrap_text(text: str, indent: str, width: int) -> str:
    protected = text.replace("\u00a0", "\x07").replace(" %", "\x07%")
    wrapstring = "\n" + indent
    lines = (
        wrapstring.join(_wrap_line(line, width - len(indent), True, False)) for line in protected.splitlines()
    )
    return wrapstring.join(lines).replace("\x07", " ")


def paragraph(text: object) -> str:
    """``{% filter para %}…{% endfilter %}``: line breaks and runs of spaces collapse, then it wraps.

    Ends with a blank line. A filter block, not a call block: a call block
    makes and calls a macro for its body, four times the cost.
    """
    return text_wrap(" ".join(str(text).split())) + "\n\n"


def text_para(caller: Any) -> str:
    """``{% call t.para() %}…{% endcall %}``, as the templates wrote it before ``paragraph``."""
    return paragraph(caller())


def text_fact(label: object, value: object) -> str:
    """``Label:              value``, the value wrapped under itself."""
    return (str(label) + ":").ljust(19) + " " + text_wrap(value, " " * 20)


def text_bullets(items: Any) -> str:
    """``- item`` lines, continuation lines indented under the text."""
    return "".join(f"- {text_wrap(item, '  ')}\n" for item in items)


TEXT_HELPERS = {
    "text_wrap": text_wrap,
    "text_para": text_para,
    "text_fact": text_fact,
    "text_bullets": text_bullets,
}


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept for the life of the process and between runs, checked by source.

    Loading the templates compiles every one of them (validation): the
    service does it at start and at each reload, ``check``, ``preview`` and
    ``run --once`` once each. A template whose text did not change is not
    compiled again, in this process or the next (a third of a second of
    every command's start-up); Jinja compares the source's checksum, so an
    edited one always is. The files between runs are in a private folder
    (``_private_folder``), or nowhere if none can be had.
    """

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._disk: jinja2.FileSystemBytecodeCache | None = None
        self._looked = False  # for the folder, once

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with self._lock:
            code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)
            return
        disk = self._on_disk()
        if disk is not None:
            with contextlib.suppress(OSError):
                disk.load_bytecode(bucket)  # Jinja resets a bucket whose checksum or version differs

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = bucket.bytecode_to_string()
        with self._lock:
            self._code[bucket.key] = code
        disk = self._on_disk()
        if disk is not None:
            with contextlib.suppress(OSError):
                disk.dump_bytecode(bucket)

    def _on_disk(self) -> jinja2.FileSystemBytecodeCache | None:
        with self._lock:
            if not self._looked:
                self._looked = True
                folder = _private_folder()
                self._disk = jinja2.FileSystemBytecodeCache(str(folder), "%s.jinja") if folder else None
            return self._disk


def _private_folder() -> Path | None:
    """``$XDG_CACHE_HOME/outreach/templates-<id>``, ours alone (0700), or None.

    Compiled code is loaded from there and run, so a folder anyone else can
    write to is never used. The id changes with Jinja's version and with this
    module, which configures the environment the code was compiled for.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ours = hashlib.sha256(Path(__file__).read_bytes() + jinja2.__version__.encode()).hexdigest()[:16]
    folder = base / "outreach" / f"templates-{ours}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = folder.lstat()
    except OSError:
        return None
    private = stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077
    return folder if private else None


_COMPILED = _CompiledTemplates()  # every environment below is configured the same way
_DICT_NAMES = frozenset(dir(dict))  # what ``getattr`` finds on a plain dict: its methods


class _Environment(jinja2.Environment):
    """Jinja's environment, with ``client.ref`` on a plain dict looked up without an exception.

    Jinja tries ``getattr(client, "ref")`` first and falls back to
    ``client["ref"]`` when that raises; a context is dicts, so every dotted
    name in a template raised and caught an AttributeError. A plain dict
    has no attributes but its class's, so the result is the same.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_NAMES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one plain dict, not Jinja's ChainMap over ours.

        Every render copies them, and every import compares them, three
        walks of a ChainMap per part of every email. Ours are set before
        the first template is loaded and never change.
        """
        return {**self.globals, **(d or {})}


def make_environment(templates_dir: Path, sources: dict[str, str] | None = None) -> jinja2.Environment:
    """Jinja as every email needs it; over ``sources`` (a snapshot of the files) when given."""
    loader = (
        jinja2.DictLoader(sources) if sources is not None else jinja2.FileSystemLoader(str(templates_dir))
    )
    env = _Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates change through a validated reload, not behind our back
        bytecode_cache=_COMPILED,
    )
    env.filters.update(
        score=format_score, change=format_change, date=_date, pad=_pad, wordwrap=_wordwrap, para=paragraph
    )
    env.globals.update(TEXT_HELPERS)
    return env


# How premailer is asked to inline: the tests hold stock premailer, so configured, as the reference.
# Without cssutils' validation, which only logs (at a level we silence) and took a third of a
# second to compile its patterns before the first email of every process; the output is the
# same (tested).
PREMAILER_OPTIONS: dict[str, Any] = {
    "allow_network": False,
    "strip_important": False,
    "remove_classes": False,
    "cssutils_logging_level": logging.CRITICAL,
    "disable_validation": True,
}


def _premailer(html: object) -> Premailer:
    return _StylesheetOnce(html, **PREMAILER_OPTIONS)


class _StylesheetOnce(Premailer):
    """premailer, each stylesheet's rules worked out once, not again for every document.

    premailer keeps the parsed stylesheet, but wrote every property of every
    rule out again through cssutils for each document: four fifths of its
    time on ours. Every instance here is configured alike (``_premailer``),
    and the rules are a function of the stylesheet's text and its index.
    """

    def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list, list]:
        rules, leftover = _style_rules(css_body, ruleset_index)
        return list(rules), list(leftover)  # premailer's own lists, copied: it extends them


@functools.lru_cache(maxsize=64)
def _style_rules(css_body: str, ruleset_index: int) -> tuple[tuple, tuple]:
    rules, leftover = Premailer._parse_style_rules(_premailer(None), css_body, ruleset_index)
    return tuple(rules), tuple(leftover)


def inline_css(html: str) -> str:
    """Move ``<style>`` rules into ``style=`` attributes, as email clients need."""
    return _premailer(html).transform()


class ShapeCachedInliner:
    """premailer's result, worked out once per document shape and replayed after that.

    Our CSS selects on tags and classes only, so what premailer does to a
    document depends on its elements and their attributes, never on its text.
    Reports from one template differ mostly in text (and in a few rows), so
    each distinct shape is inlined by premailer once; later documents of the
    same shape get the same attributes set and are serialised the same way.
    The shape is the document's tags as written (elements and attributes),
    with the element count of its parse as a check. The first result of
    each shape is checked against premailer's own output, and a shape that
    does not replay exactly is always left to premailer.

    Parsing and writing out each document was still most of the cost, so a
    shape also learns a replay on strings (``htmlreplay``): the output's
    tags and the whitespace around them as learned, the text between them
    as lxml would write it. A document that replay does not vouch for
    (unusual characters, a blank place where text was) is parsed as before.
    """

    MAX_SHAPES = 512
    ATTEMPTS = 3  # documents of a shape to learn its string replay from before giving up

    def __init__(self) -> None:
        self._plans: dict[tuple, tuple[int, tuple | None]] = {}
        # The same, without parsing (``htmlreplay``); an int: attempts left to learn it.
        self._fast: dict[tuple, htmlreplay.Replay | int] = {}

    def __call__(self, html: str) -> str:
        stripped = html.strip()
        parts = htmlreplay.SPLIT.split(stripped)
        shape = tuple(parts[1::2])  # every tag as written, in order
        fast = self._fast.get(shape)
        if isinstance(fast, htmlreplay.Replay):
            written = fast(parts[0::2])
            if written is not None:
                return written
        learned = self._plans.get(shape)
        if learned is not None:
            count, plan = learned
            tree = etree.fromstring(stripped, etree.HTMLParser()).getroottree()
            elements = list(tree.getroot().iter())
            if plan is not None and len(elements) == count:
                replayed = _replay(tree, stripped, elements, plan)
                if replayed is not None:
                    self._learn_fast(shape, parts, replayed)
                    return replayed
            return inline_css(html)
        reference = inline_css(html)
        if len(self._plans) >= self.MAX_SHAPES:
            forgotten = next(iter(self._plans))
            self._plans.pop(forgotten)
            self._fast.pop(forgotten, None)
        self._plans[shape] = _learn(stripped, reference)
        if self._plans[shape][1] is not None:
            self._learn_fast(shape, parts, reference)
        return reference

    def _learn_fast(self, shape: tuple, parts: list[str], output: str) -> None:
        """Learn the shape's string replay from a document and premailer's output for it."""
        left = self._fast.get(shape, self.ATTEMPTS)
        if not isinstance(left, int) or left <= 0:
            return
        replay = htmlreplay.learn(parts, output, _DROPPED)
        self._fast[shape] = replay if replay is not None else left - 1


_DROPPED = frozenset({"style"})  # elements premailer removes, with their content


def _learn(stripped: str, reference: str) -> tuple[int, tuple | None]:
    """How many elements the shape has, and how to turn it into premailer's output (None: can't).

    Premailer removes the ``<style>`` element and adds ``style`` (and a few
    other) attributes; the text is untouched. So the plan is: the elements to
    remove, then, in the serialised document, the start tags to swap for
    premailer's. Kept only if everything between the start tags is the same.
    """
    tree = etree.fromstring(stripped, etree.HTMLParser()).getroottree()
    elements = list(tree.getroot().iter())
    _premailer(tree.getroot()).transform()
    root = tree.getroot()
    removed = [i for i, el in enumerate(elements) if el is not root and el.getparent() is None]
    if sum(1 for _ in root.iter()) != len(elements) - len(removed):
        return len(elements), None  # premailer added elements (e.g. a <head>): not replayable
    if any(str(el.tag) == "style" for el in root.iter()):
        return len(elements), None  # leftover CSS kept in a <style>: not replayable
    fresh = etree.fromstring(stripped, etree.HTMLParser()).getroottree()
    plain = _START_TAG.split(_serialise(fresh, stripped, list(fresh.getroot().iter()), removed))
    inlined = _START_TAG.split(reference)
    if len(plain) != len(inlined) or plain[::2] != inlined[::2]:
        return len(elements), None  # not only start tags differ
    # Same text, start tags swapped where premailer changed them: that is its output exactly.
    swaps = [(k, inlined[k]) for k in range(1, len(plain), 2) if plain[k] != inlined[k]]
    return len(elements), (removed, len(plain), swaps)


_START_TAG = re.compile(r"(<[A-Za-z][^>]*>)")  # an element's start tag, as lxml writes it


def _serialise(tree: Any, stripped: str, elements: list, removed: list[int]) -> str:
    for index in removed:
        element = elements[index]
        element.getparent().remove(element)
    root = tree if stripped.startswith(tree.docinfo.doctype) else tree.getroot()
    return etree.tostring(root, method="html", pretty_print=True, encoding="unicode")


def _replay(tree: Any, stripped: str, elements: list, plan: tuple) -> str | None:
    """premailer's output for this document, or None if it does not fit the plan after all."""
    removed, length, swaps = plan
    parts = _START_TAG.split(_serialise(tree, stripped, elements, removed))
    if len(parts) != length:
        return None
    for index, tag in swaps:
        parts[index] = tag
    return "".join(parts)


class Renderer:
    """Renders one template folder against a context."""

    def __init__(self, templates_dir: Path, sources: dict[str, str] | None = None):
        self.templates_dir = Path(templates_dir)
        self.env = make_environment(self.templates_dir, sources)
        self.inline = ShapeCachedInliner()

    def render(self, template: str, context: dict) -> Rendered:
        subject = self._render(template, "subject.txt", context)
        subject = re.sub(r"\s+", " ", subject).strip()
        if not subject:
            raise RenderError(f"template {template}: subject is empty")
        if len(subject) > MAX_SUBJECT:
            raise RenderError(f"template {template}: subject is longer than {MAX_SUBJECT} characters")
        full = {**context, "section_only": False}
        return Rendered(
            subject=subject,
            html=self.inline(self._render(template, "body.html", full)),
            text=_tidy_text(self._render(template, "body.txt", full)),
        )

    def render_section(self, template: str, context: dict, title: str) -> Section:
        """The same update as one section of a digest, titled with its subject.

        Rendered only when a digest is made: most updates travel alone.
        """
        section = {**context, "section_only": True, "section_title": title}
        return Section(
            html=self._render(template, "body.html", section),
            text=_tidy_text(self._render(template, "body.txt", section)),
        )

    def _render(self, template: str, part: str, context: dict) -> str:
        name = f"{template}/{part}"
        try:
            return self.env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template {template}: {exc.name} not found") from None
        except UnicodeDecodeError as exc:  # read from disk (not a snapshot): say which file, where
            raise RenderError(not_utf8(self.templates_dir / name, exc)) from None
        except jinja2.UndefinedError as exc:
            raise RenderError(f"template {name}: {exc.message}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"template {exc.name or name}:{exc.lineno}: {exc.message}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise RenderError(f"template {name}: {exc}") from None

    def template_names(self) -> list[str]:
        """Every folder that holds a complete email template."""
        return sorted(
            p.name
            for p in self.templates_dir.iterdir()
            if p.is_dir() and all((p / part).is_file() for part in TEMPLATE_PARTS)
        )


TEMPLATE_SUFFIXES = (".html", ".txt")  # what Jinja loads as a template here: must be UTF-8 text


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """One line naming the file and the first byte that is not UTF-8."""
    byte = exc.object[exc.start : exc.start + 1].hex()
    return f"{path}: not valid UTF-8 text (byte 0x{byte} at offset {exc.start})"


def read_sources(root: Path) -> tuple[dict[str, str], list[str]]:
    """Every template file under ``root``, read strictly as UTF-8; and one line per file that is not.

    A template with a stray byte must be refused where a person sees it
    (``outreach check``, the service's start or reload), not skipped and
    found missing when an urgent alert is rendered. Hidden files are
    ignored; a file of another kind is loaded when it is text (something
    may include it) and left out otherwise (an image, say).
    """
    root = Path(root)
    sources: dict[str, str] = {}
    problems: list[str] = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in name.split("/")):
            continue
        try:
            sources[name] = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            if path.suffix in TEMPLATE_SUFFIXES:
                problems.append(not_utf8(path, exc))
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
    return sources, problems


def compile_problems(renderer: Renderer, names: list[str]) -> list[str]:
    """``file:line: message`` for each named template that does not compile."""
    problems = []
    for name in names:
        try:
            renderer.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{renderer.templates_dir / (exc.name or name)}:{exc.lineno}: {exc.message}")
    return problems


def load_renderer(templates_dir: Path) -> Renderer:
    """A renderer over a snapshot of the template files, every one of them read and compiled.

    Jinja would otherwise re-read a file changed on disk at the next render,
    valid or not; the snapshot changes only through a validated reload.
    Raises ``RenderError`` with one line per file that is not UTF-8 or does
    not compile.
    """
    root = Path(templates_dir)
    sources, problems = read_sources(root)
    renderer = Renderer(root, sources)  # reads the snapshot, never the disk
    problems += compile_problems(renderer, [name for name in sources if name.endswith(TEMPLATE_SUFFIXES)])
    if problems:
        raise RenderError("\n".join(problems))
    return renderer


def _tidy_text(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip("\n") + "\n"
