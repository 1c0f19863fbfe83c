"""premailer's output for a document of a known shape, without parsing it: string work only.

``renderer.ShapeCachedInliner`` learns, for each document shape (its tags
as written), what premailer does to it, and replays that on the parsed tree
of later documents of the shape. Parsing and serialising with lxml was still
most of the cost of inlining. For a shape seen before, the output differs
from the input in ways this module learns from one (input, output) pair:

- the tags: each is written out as the output has it (a start tag with its
  ``style``, the ``<style>`` element gone, the doctype as lxml writes it);
- the whitespace the serialiser adds or drops between tags;
- the text between tags: lxml reads entity references and writes text back
  escaping ``&``, ``<`` and ``>`` only.

Learned per stretch of text between two tags: a stretch that is blank must
come back exactly as it was (where whitespace stays, is dropped or gets a
newline depends on the tree around it); any other stretch is text, written
out normalised, with the newlines lxml put around it. A later document is
replayed only if its blank stretches are exactly the learned ones, its text
stretches are not blank, and its text holds nothing whose treatment by lxml
is not known here (a carriage return, a control character, an entity
reference other than HTML 4's named ones or ``&#34;`` and ``&#39;``); else
the caller parses it as before. Same tree, same serialisation: the output
is what parsing would have given, byte for byte.
"""

from __future__ import annotations

import html.entities
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter, methodcaller

SPLIT = re.compile(r"(<[^>]*>)")  # texts at even indexes, tags (as written) at odd ones
BLANK = " \t\n\r"  # what the HTML parser counts as white space
SENTINEL = "\x00"  # joins texts for one pass over all of them; never kept by the parser in text

# What an entity reference in text becomes in lxml's output (checked against
# lxml character by character in the tests). HTML 4's names, but for lang and
# rang, which libxml2 reads as other characters than the standard's.
_WRITTEN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
ENTITIES = {
    f"&{name};": _WRITTEN.get(chr(point), chr(point))
    for name, point in html.entities.name2codepoint.items()
    if name not in ("lang", "rang")
}
ENTITIES.update({"&#34;": '"', "&#39;": "'"})  # markupsafe's escapes of quotes
# Text whose round trip is not known: a carriage return (read as a newline),
# other control characters, a lone surrogate, "<" (a tag never closed). The
# sentinel is let through: a text holding it splits into too many.
_UNKNOWN_CHARACTER = re.compile("[^\x00\t\n\x20-\x3b\x3d-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ASCII_KNOWN = bytes([0, 9, 10, *range(0x20, 0x3C), *range(0x3D, 0x7F)])
_NOT_BLANK = methodcaller("strip", BLANK)


def unknown(text: str) -> bool:
    """Whether ``text`` holds something whose round trip through lxml is not known here.

    That is a character above, or a "&" that does not start a reference in ``ENTITIES``.
    """
    if text.isascii():  # most text: bytes.translate leaves what is not allowed, at C speed
        if text.encode("ascii").translate(None, _ASCII_KNOWN):
            return True
    elif _UNKNOWN_CHARACTER.search(text):
        return True
    if "&" not in text:
        return False
    for piece in text.split("&")[1:]:
        end = piece.find(";")
        if end < 0 or f"&{piece[: end + 1]}" not in ENTITIES:
            return True
    return False


def normalise(text: str) -> str:
    """Text as lxml writes it back after reading it (only for text that is not ``unknown``)."""
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "&" not in text:
        return text
    head, *rest = text.split("&")
    written = [head]
    for piece in rest:
        end = piece.find(";") + 1
        written.append(ENTITIES[f"&{piece[:end]}"] + piece[end:])
    return "".join(written)


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[str]], tuple[str, ...]]:
    """A function picking these items from a list, as a tuple (C speed)."""
    if not indexes:
        return lambda items: ()
    if len(indexes) == 1:
        index = indexes[0]
        return lambda items: (items[index],)
    return itemgetter(*indexes)


@dataclass(frozen=True)
class Replay:
    """How to write a document of one shape as premailer would, from its texts."""

    fixed: tuple[int, ...]  # indexes of the texts that must be as learned
    fixed_texts: tuple[str, ...]
    variable: tuple[int, ...]  # indexes of the texts written out (normalised)
    constants: tuple[str, ...]  # the output around them: len(variable) + 1 pieces

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fixed", _picker(self.fixed))
        object.__setattr__(self, "_variable", _picker(self.variable))

    def __call__(self, texts: Sequence[str]) -> str | None:
        """The output for a document of this shape (``texts``: its even split items), or None."""
        if self._fixed(texts) != self.fixed_texts:  # type: ignore[attr-defined]
            return None
        values = self._variable(texts)  # type: ignore[attr-defined]
        if not all(map(_NOT_BLANK, values)):
            return None
        joined = SENTINEL.join(values)
        if unknown(joined):
            return None
        written = normalise(joined).split(SENTINEL)
        if len(written) != len(values):  # a text held the sentinel itself
            return None
        pieces = [""] * (2 * len(written) + 1)
        pieces[0::2] = self.constants
        pieces[1::2] = written
        return "".join(pieces)


def learn(parts: list[str], output: str, dropped: frozenset[str]) -> Replay | None:
    """How ``output`` is made from the document split into ``parts`` (None: not by this module).

    ``dropped`` names the elements the output leaves out with their content
    (``style``). Tags are matched in order by name; a tag of the document
    whose name differs from the output's next one must be one of those.
    """
    out = SPLIT.split(output)
    tags, out_tags = parts[1::2], out[1::2]
    # which output tag each document tag became (None: dropped)
    matched: list[int | None] = []
    k = 0
    for tag in tags:
        if k < len(out_tags) and _name(tag) == _name(out_tags[k]):
            matched.append(k)
            k += 1
        elif _name(tag).lstrip("/") in dropped:
            matched.append(None)
        else:
            return None
    if k != len(out_tags):
        return None
    return _pieces(parts[0::2], tags, matched, out)


# Elements whose content the parser reads as it stands (no entity references).
_RAW_TEXT = frozenset(
    {"script", "style", "textarea", "xmp", "plaintext", "iframe", "noembed", "noframes", "noscript"}
)


def _pieces(texts: list[str], tags: list[str], matched: list[int | None], out: list[str]) -> Replay | None:
    """Constants and variable texts, stretch by stretch of the output's text."""
    fixed: list[int] = []
    variable: list[int] = []
    constants: list[str] = [""]
    start = 0  # the document text that begins the current output stretch
    boundaries = [i + 1 for i, k in enumerate(matched) if k is not None] + [len(texts)]
    for stretch, end in enumerate(boundaries):  # texts[start:end] make out[2 * stretch]
        written = out[2 * stretch]
        run = range(start, end)
        if len(run) == 1 and texts[start].strip(BLANK):
            if start and _name(tags[start - 1]) in _RAW_TEXT:
                return None  # read as it stands, not as text: never varies here
            found = _around(texts[start], written)
            if found is None:
                return None
            before, after = found
            constants[-1] += before
            variable.append(start)
            constants.append(after)
        else:  # blank, or holding a dropped element: as learned, every time
            fixed.extend(run)
            constants[-1] += written
        if stretch < len(boundaries) - 1:
            constants[-1] += out[2 * stretch + 1]
        start = end
    return Replay(
        fixed=tuple(fixed),
        fixed_texts=tuple(texts[i] for i in fixed),
        variable=tuple(variable),
        constants=tuple(constants),
    )


def _around(text: str, written: str) -> tuple[str, str] | None:
    """The newlines lxml wrote before and after ``text`` to give ``written`` (None: not that)."""
    if unknown(text) or SENTINEL in text:
        return None
    core = normalise(text)
    for before in ("", "\n"):
        for after in ("", "\n"):
            if written == before + core + after:
                return before, after
    return None


_NAME = re.compile(r"<\s*(/?[^\s/>]*)")


def _name(tag: str) -> str:
    """``p`` for ``<p class="x">``, ``/p`` for ``</p>``, ``!doctype`` for the doctype."""
    found = _NAME.match(tag)
    return found.group(1).lower() if found else tag
