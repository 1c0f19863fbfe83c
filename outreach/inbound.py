"""One email from the practice's mailbox read into plain facts: bytes in, an ``Inbound`` out.

``outreach.inbox`` fetches, matches and records; this module only reads. It
touches no database and no network, and ``parse`` never raises: what cannot
be read is left empty and named in ``Inbound.problem``.

What it tells apart:

* a **bounce**, any delivery status notification: RFC 3464
  (``multipart/report; report-type=delivery-status``; its
  ``message/delivery-status`` header blocks are parsed by the stdlib) or, for
  the formats before that standard (qmail, old Exim, ...), what ``flufl.bounce``
  recognises. A ``4.x.x`` status (a delay) is a bounce with ``permanent`` False.
  ``flufl.bounce`` is asked only about mail that looks like a bounce (a
  mailer-daemon sender, a bounce subject, ``X-Failed-Recipients``): some of
  its heuristics match an ordinary sentence with an address between commas,
  and a physician's reply must never mark an address undeliverable.
* an **automatic answer** (``auto``): ``Auto-Submitted`` other than ``no``,
  ``X-Autoreply``/``X-Autorespond``, ``Precedence: auto_reply/bulk/junk``, a
  read receipt, an out-of-office subject, or a short body that opens with
  "I am out of the office" and quotes nothing (a person's reply quotes the
  message it answers; an absence notice does not). A bounce is never ``auto``.
* everything else is read as a **reply**: the text/plain part (else the HTML,
  turned into text, quoted ``<blockquote>`` left out), its quoted original and
  "On ... wrote:" line cut by ``mail-parser-reply``.

Cutting a reply errs on keeping words: ``mail-parser-reply`` would also drop
a hyphen list ("- hold exercise"), any line starting "Thanks, ..." with all
after it, and a sentence starting "Warning:" that mentions mail. Here hyphen
lists are kept, disclaimers are not removed, and a signature is cut only when
it looks like one (a sign-off line such as "Kind regards," or "Thanks, Anna",
"-- ", "Sent from my iPhone"; at most 10 short lines; no "P.S.").

Bounded work, so a 5 MB email (or a hostile one) is read in well under a
second: the MIME structure is parsed by the stdlib with its compat32 policy
(the default policy parses every part's Content-Type with its header
registry: 16 times slower on many parts, and 571 s for one 100 kB
Content-Type), the default policy's registry decodes only short header text;
the parser gets at most 512 kB of headers, 100 multiparts, 1,000 boundaries
and 512 bytes of each Content-* header (see ``_bounded``); the reply cutter
sees the first 16,000 characters (its regular expressions are quadratic in a
line's length, so lines over 300 characters are set aside and put back), the
HTML reader 300,000 characters and ``flufl.bounce`` the first 256 kB.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import email
import email.policy
import email.utils
import html
import quopri
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from html.parser import HTMLParser
from typing import TypeVar

from flufl.bounce import all_failures
from mailparser_reply import EmailMessage as ReplyText

from outreach import verp

KINDS = ("reply", "auto_reply", "bounce", "unmatched")  # unmatched is decided by the matcher, not here

TEXT_LIMIT = 2_000  # characters: a bounce's text, and the fallback when no reply can be cut out
REPLY_SCAN = 16_000  # characters of a body the reply cutter looks at
LONG_LINE = 300  # characters: longer lines cannot be an "On ... wrote:" line, and are set aside
HTML_SCAN = 300_000  # characters of HTML turned into text
TEXT_BYTES = 4 * HTML_SCAN  # bytes of a text part decoded (no more is ever read)
FLUFL_SCAN = 256 * 1024  # bytes of a suspected bounce that flufl.bounce reads
MOST_BOUNDARIES = 1_000  # lines starting with "--" read (see _bounded)
MOST_MULTIPARTS = 100  # multipart containers read (see _bounded)
MOST_HEADER_BYTES = 512 * 1024  # of the header block read
LONGEST_CONTENT_HEADER = 512  # bytes of a Content-* header read (see _shortened)
HEADER_DECODED = 1_000  # characters of a header given to the stdlib's header registry
MOST_DSN_BLOCKS = 500  # per-recipient blocks of delivery reports read
MOST_REFERENCES = 100  # the newest Message-IDs kept from In-Reply-To and References
LONGEST_SUBJECT = 998  # characters (a header line's limit)
REPLY_LANGUAGES = ("en", "de", "fr", "es")

# The MIME structure is parsed with compat32 (see the module's docstring); the default
# policy's header registry decodes the short header text that is read.
_PARSING = email.policy.compat32
_DECODING = email.policy.default
_T = TypeVar("_T")


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[str, ...]  # the failed addresses, lower case
    status: str  # "5.1.1", "4.4.7", or "" when the format gives none
    permanent: bool  # True for 5.x.x (or a non-standard bounce flufl calls permanent)
    diagnostic: str  # one line, e.g. "550 5.1.1 <a@b>: Recipient address rejected: User unknown" ("" if none)
    original_message_id: str | None  # the bounced message's Message-ID from the quoted headers, or None
    # "Action: failed" with a 4.x.x status: the server kept trying, then gave up (its queue
    # lifetime ran out). The message never arrives, but the address is not known to be bad.
    gave_up: bool = False


@dataclass(frozen=True)
class Inbound:
    message_id: str | None  # this email's own Message-ID, "<...>" form, or None
    sender: str  # the From address, lower case ("" if none)
    sender_name: str
    subject: str  # one line, decoded ("" if none)
    date: datetime | None  # aware, in UTC (UTC if the header has no zone); None if missing or unparsable
    references: tuple[str, ...]  # In-Reply-To then References, newest first, no duplicates, "<...>" form
    recipients: tuple[str, ...]  # Delivered-To, X-Original-To, To, Cc addresses, lower case (for VERP)
    auto: bool  # an automatic answer (never True for a bounce)
    bounce: Bounce | None  # a delivery status notification of any format, or None
    text: str  # a reply's new text (quoted part and signature cut); a bounce's human-readable part
    problem: str | None  # why the message could not be read properly, None if fine


# --- VERP -----------------------------------------------------------------------------------


def verp_tokens(inbound: Inbound, bounce_address: str) -> tuple[str, ...]:
    """Every VERP token among the email's recipients (Delivered-To, X-Original-To, To, Cc), in order."""
    found = (verp.token_in(address, bounce_address) for address in inbound.recipients)
    return tuple(dict.fromkeys(token for token in found if token))


# --- parse ----------------------------------------------------------------------------------


def parse(raw: bytes) -> Inbound:
    """The facts of one email; never raises (the worst input gives an ``Inbound`` with ``problem`` set)."""
    try:
        return _Reader(bytes(raw)).read()
    except Exception as exc:  # the last line of defence: each part of the reading has its own
        return Inbound(
            message_id=None,
            sender="",
            sender_name="",
            subject="",
            date=None,
            references=(),
            recipients=(),
            auto=False,
            bounce=None,
            text="",
            problem=f"unreadable: {type(exc).__name__}",
        )


class _Reader:
    """One email being read: each fact read on its own, so one failure costs only that fact."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.problems: list[str] = []
        bounded, self.problems = _bounded(raw)
        try:
            self.msg: Message = email.message_from_bytes(bounded, policy=_PARSING)
        except RecursionError:  # the stdlib's parser recurses once per nested multipart
            self.problems.append("MIME parts nested too deeply: only the headers read")
            self.msg = email.message_from_bytes(_header_block(bounded), policy=_PARSING)
        self.index: dict[str, list[str]] = {}
        for name, value in self.msg.raw_items():
            self.index.setdefault(name.lower(), []).append(value)
        self.address_cache: dict[str, list[tuple[str, str]]] = {}

    def read(self) -> Inbound:
        if not self.raw.strip():
            self.problems.append("empty message")
        message_id = self._attempt("Message-ID", self._message_id, None)
        if message_id is None:
            self.problems.append("no Message-ID")
        sender, sender_name = self._attempt("From", self._sender, ("", ""))
        subject = self._attempt("Subject", self._subject, "")
        date = self._attempt("Date", self._date, None, quiet=True)
        none: tuple[str, ...] = ()
        references = self._attempt("References", self._references, none)
        recipients = self._attempt("recipients", self._recipients, none)
        no_report: tuple[Bounce | None, bool] = (None, False)
        bounce, delivered = self._attempt("delivery report", self._dsn, no_report)
        absence = _OUT_OF_OFFICE_SUBJECT.search(subject) is not None
        suspect = bounce is None and not delivered and not absence
        if suspect and self._attempt("bounce", lambda: self._looks_like_bounce(subject), False):
            bounce = self._attempt("bounce", self._other_bounce, None)
        if bounce is not None:
            text = self._attempt("text", self._bounce_text, "")
            auto = False
        else:
            text, quoted = self._attempt("text", self._reply_text, ("", False))
            auto = delivered or absence or self._attempt("auto", lambda: self._auto(text, quoted), False)
        self._attempt("MIME structure", self._defects, None)
        problems = list(dict.fromkeys(self.problems))
        return Inbound(
            message_id=message_id,
            sender=sender,
            sender_name=sender_name,
            subject=subject,
            date=date,
            references=references,
            recipients=recipients,
            auto=auto,
            bounce=bounce,
            text=text,
            problem="; ".join(problems) if problems else None,
        )

    def _attempt(self, what: str, read: Callable[[], _T], default: _T, quiet: bool = False) -> _T:
        try:
            return read()
        except Exception as exc:
            if not quiet:
                self.problems.append(f"{what} unreadable ({type(exc).__name__})")
            return default

    # --- headers ---

    def _header(self, name: str, msg: Message | None = None) -> str:
        """The first such header, decoded, cleaned; "" if absent."""
        values = self._headers(name, msg)
        return values[0] if values else ""

    def _headers(self, name: str, msg: Message | None = None) -> list[str]:
        """Each such header's text: unfolded, RFC 2047 words decoded (in its first 1,000 characters)."""
        return [self._decode_header(value) for value in self._raw(name, msg)]

    def _decode_header(self, value: str) -> str:
        # The stdlib's header registry decodes encoded words; given a long header it can take
        # seconds (its address parser is quadratic on a run of quotes or backslashes), so it
        # only ever sees short unstructured text.
        self._check_encoded_words(value)
        text = _unfold(value)[:HEADER_DECODED]
        if "=?" in text:
            with contextlib.suppress(Exception):  # else the words as they are
                text = str(_DECODING.header_factory("x-text", text))
        return _clean(text)

    def _raw(self, name: str, msg: Message | None = None) -> list[str]:
        """The header's values as received (RFC 2047 words not decoded), folded; [] if absent."""
        if msg is None:
            return self.index.get(name.lower(), [])
        return [value for key, value in msg.raw_items() if key.lower() == name.lower()]

    def _check_encoded_words(self, value: str) -> None:
        for charset in _ENCODED_WORD.findall(value):
            if not _known_charset(charset):
                self.problems.append(f"unknown charset {_one_line(charset).lower()[:40]}")

    def _message_id(self) -> str | None:
        values = self._raw("Message-ID")
        value = _clean(_unfold(values[0])) if values else ""
        ids = _message_ids(value)
        if ids:
            return ids[0]
        bare = value.strip()
        if bare and " " not in bare and len(bare) <= 996:
            return f"<{bare.strip('<>')}>"
        return None

    def _sender(self) -> tuple[str, str]:
        for name, address in self._addresses("From"):
            return address, name
        return "", ""

    def _addresses(self, name: str) -> list[tuple[str, str]]:
        """(display name, address in lower case) of each address in these headers."""
        key = name.lower()
        if key not in self.address_cache:
            found: list[tuple[str, str]] = []
            for value in self._raw(name):
                try:
                    pairs = email.utils.getaddresses([_unfold(value)])
                except Exception:  # RecursionError on a run of "(": nothing to read there
                    continue
                for display, address in pairs:
                    address = _clean(address).strip().strip("<>").lower()
                    if "@" in address and " " not in address:
                        # A comment stands for a missing name: "MAILER-DAEMON@host (Mail Delivery System)".
                        found.append((_one_line(self._decode_header(display)), address))
            self.address_cache[key] = found
        return self.address_cache[key]

    def _subject(self) -> str:
        return _one_line(self._header("Subject"))[:LONGEST_SUBJECT]

    def _date(self) -> datetime | None:
        values = self._raw("Date")
        value = _clean(_unfold(values[0]))[:HEADER_DECODED] if values else ""
        if not value:
            return None
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC)

    def _references(self) -> tuple[str, ...]:
        newest_first = _message_ids(_clean(_unfold(" ".join(self._raw("In-Reply-To")))))
        newest_first += _message_ids(_clean(_unfold(" ".join(self._raw("References")))))[::-1]
        return tuple(dict.fromkeys(newest_first))[:MOST_REFERENCES]

    def _recipients(self) -> tuple[str, ...]:
        found: list[str] = []
        for name in ("Delivered-To", "X-Original-To", "To", "Cc"):
            found += [address for _, address in self._addresses(name)]
        return tuple(dict.fromkeys(found))

    # --- automatic answers ---

    def _auto(self, text: str, quoted: bool) -> bool:
        submitted = self._header("Auto-Submitted").lower().split(";")[0].split("(")[0].strip()
        if submitted and submitted != "no":
            return True
        if any(self._header(name).strip().lower() not in ("", "no") for name in _AUTO_HEADERS):
            return True
        if self._header("Precedence").strip().lower() in ("auto_reply", "bulk", "junk"):
            return True
        report = str(self.msg.get_param("report-type", "")).lower()
        if self.msg.get_content_type() == "multipart/report" and report == "disposition-notification":
            return True  # a read receipt
        opening = text[:TEXT_LIMIT]
        return (
            not quoted and len(text) <= TEXT_LIMIT and _OUT_OF_OFFICE_BODY.search(opening[:300]) is not None
        )

    # --- text ---

    def _decoded(self, part: Message) -> str:
        """A text part's content as text; an unknown charset is read as UTF-8 and named."""
        payload = part.get_payload(decode=True)
        data = payload[:TEXT_BYTES] if isinstance(payload, bytes) else b""
        charset = str(part.get_content_charset("") or "").strip().lower()
        if charset in ("", "us-ascii", "ascii", "utf8", "utf-8", "unicode-1-1-utf-8"):
            return _clean(data.decode("utf-8", "replace"))  # UTF-8 reads ASCII, and mislabelled 8-bit
        if _known_charset(charset):
            try:
                return _clean(data.decode(charset, "replace"))
            except Exception:
                pass  # a codec that is not a text encoding ("base64"), or that fails anyway
        self.problems.append(f"unknown charset {_one_line(charset)[:40]}")
        return _clean(data.decode("utf-8", "replace"))

    def _body_part(self, msg: Message) -> Message | None:
        """The text/plain part, else the text/html part, of this message (not of one it carries)."""
        for subtype in ("plain", "html"):
            for part in _parts(msg):
                if part.get_content_type() == f"text/{subtype}" and not _attached(part):
                    return part
        if not msg.is_multipart() and msg.get_content_maintype() in ("text", "multipart"):
            return msg  # a multipart whose parts could not be found: its text as it is
        return None

    def _text_of(self, msg: Message, limit: int | None = None) -> str:
        part = self._body_part(msg)
        if part is None:
            return ""
        text = self._decoded(part)
        if part.get_content_type() == "text/html":
            text = html_to_text(text[:HTML_SCAN], stop_after=limit)
        return text

    def _reply_text(self) -> tuple[str, bool]:
        text = self._text_of(self.msg, limit=REPLY_SCAN)
        try:
            return new_text(text)
        except Exception as exc:  # the reply cutter failed on it: the start of the text, uncut
            self.problems.append(f"reply text not cut ({type(exc).__name__})")
            return _tidy(text)[:TEXT_LIMIT].rstrip(), False

    def _bounce_text(self) -> str:
        source: Message = self.msg
        payload = self.msg.get_payload()
        report = self.msg.get_content_type() == "multipart/report"
        if report and isinstance(payload, list) and payload and isinstance(payload[0], Message):
            source = payload[0]
        text = _human_part(self._text_of(source, limit=4 * TEXT_LIMIT)[: 16 * TEXT_LIMIT])
        return _tidy(text)[:TEXT_LIMIT].rstrip()

    # --- bounces ---

    def _dsn(self) -> tuple[Bounce | None, bool]:
        """An RFC 3464 report: (its bounce, False); (None, True) for one that reports only deliveries."""
        reports = [part for part in _parts(self.msg) if part.get_content_type() in _DSN_TYPES]
        if not reports:
            return None, False
        failed: list[tuple[str, str, str]] = []  # (address, status, diagnostic)
        delayed: list[tuple[str, str, str]] = []
        delivered = False
        blocks = [block for report in reports for block in _dsn_blocks(report)][:MOST_DSN_BLOCKS]
        for block in blocks:
            action = _one_line(self._header("Action", block)).lower()
            address = _dsn_address(self._header("Original-Recipient", block)) or _dsn_address(
                self._header("Final-Recipient", block)
            )
            status = _status(self._header("Status", block))
            diagnostic = _diagnostic(self._header("Diagnostic-Code", block))
            if not address and not action:
                continue  # the per-message block
            status = status or _status(diagnostic)
            entry = (address, status, diagnostic)
            if action.startswith(("fail", "error")) or (not action and status.startswith("5")):
                failed.append(entry)
            elif action.startswith("delayed") or (not action and status.startswith("4")):
                delayed.append(entry)
            elif action.startswith(("delivered", "relayed", "expanded")):
                delivered = True
        if not failed and not delayed:
            return None, delivered  # a report of deliveries only, or one that could not be read
        # Permanent failures first: their status and diagnostic speak for the report.
        entries = sorted(failed, key=lambda e: not e[1].startswith("5")) if failed else delayed
        address, status, diagnostic = entries[0]
        permanent = status.startswith("5") if status else bool(failed)
        recipients = tuple(dict.fromkeys(e[0] for e in entries if e[0]))
        bounce = Bounce(
            recipients=recipients,
            status=status,
            permanent=permanent,
            diagnostic=diagnostic,
            original_message_id=self._attempt("quoted Message-ID", self._original_message_id, None),
            gave_up=bool(failed) and not permanent,
        )
        return bounce, False

    def _looks_like_bounce(self, subject: str) -> bool:
        """A mailer-daemon sender, X-Failed-Recipients, a bounce subject or an RFC 3464 report."""
        if self._from_mailer_daemon() or self._header("X-Failed-Recipients"):
            return True
        return _BOUNCE_SUBJECT.search(subject) is not None or self._is_delivery_report()

    def _is_delivery_report(self) -> bool:
        report = str(self.msg.get_param("report-type", "")).lower() == "delivery-status"
        return report and self.msg.get_content_type() == "multipart/report"

    def _from_mailer_daemon(self) -> bool:
        for name, address in self._addresses("From"):
            local = address.rpartition("@")[0]
            if _DAEMON_LOCAL.fullmatch(local) or _DAEMON_NAME.search(name):
                return True
        return False

    def _other_bounce(self) -> Bounce | None:
        """A bounce in a format before RFC 3464, as flufl.bounce reads it."""
        # Given as text: flufl.bounce calls str methods on headers, and a header with 8-bit bytes
        # would reach it as an email.header.Header.
        text = self.raw[:FLUFL_SCAN].decode("utf-8", "replace")
        try:
            temporary, permanent = all_failures(email.message_from_string(text))
        except Exception as exc:  # one of its detectors failed on odd input: no addresses from it
            self.problems.append(f"flufl.bounce failed ({type(exc).__name__})")
            temporary = permanent = frozenset()
        ours = set(self._recipients())  # the bounce came to these: they are not what failed
        failed = _addresses_of(permanent, ours)
        delayed = _addresses_of(temporary, ours)
        human = _human_part(self._text_of(self.msg, limit=8 * TEXT_LIMIT)[: 32 * TEXT_LIMIT])
        diagnostic = _first_diagnostic(human)
        status = _status(diagnostic) or _status(human)
        original = self._attempt("quoted Message-ID", self._original_message_id, None)
        if failed or delayed:
            return Bounce(
                recipients=failed or delayed,
                status=status,
                permanent=bool(failed),
                diagnostic=diagnostic,
                original_message_id=original,
            )
        # flufl.bounce found no address (its pattern for old Exim, for one, refuses a domain with
        # a hyphen), yet a mailer daemon says it could not deliver, or an RFC 3464 report could
        # not be read: a bounce with no recipients, for the VERP address or the quoted
        # Message-ID to place it.
        subject = _one_line(self._header("Subject"))
        daemon = self._from_mailer_daemon() or bool(self._header("X-Failed-Recipients"))
        if self._is_delivery_report():
            self.problems.append("a delivery report naming no failed or delayed recipient")
        elif not (daemon and _BOUNCE_SUBJECT.search(subject) and (status or diagnostic)):
            return None
        return Bounce(
            recipients=(),
            status=status,
            permanent=status.startswith("5") or (not status and diagnostic.startswith("5")),
            diagnostic=diagnostic,
            original_message_id=original,
        )

    def _original_message_id(self) -> str | None:
        """The Message-ID in the quoted original: its message/rfc822 or text/rfc822-headers part, or text."""
        for part in _parts(self.msg):
            kind = part.get_content_type()
            if kind in ("message/rfc822", "message/global") and part.is_multipart():
                inner = part.get_payload(0)
                if isinstance(inner, Message):
                    ids = _message_ids(self._header("Message-ID", inner))
                    if ids:
                        return ids[0]
            elif kind in ("text/rfc822-headers", "message/global-headers", "message/rfc822-headers"):
                text = part.get_payload(decode=True)
                data = text if isinstance(text, bytes) else b""
                text = data[:FLUFL_SCAN].decode("utf-8", "replace")
                headers = HeaderParser(policy=_PARSING).parsestr(text)
                ids = _message_ids(self._header("Message-ID", headers))
                if ids:
                    return ids[0]
        text = self._text_of(self.msg, limit=32 * TEXT_LIMIT)[:FLUFL_SCAN]
        quoted = _QUOTED_MESSAGE_ID.search(text)
        return _message_ids(quoted.group(1))[0] if quoted else None

    # --- what could not be read ---

    def _defects(self) -> None:
        found = [
            _DEFECTS.get(type(defect).__name__, type(defect).__name__)
            for part in _parts(self.msg, into_messages=True)
            for defect in part.defects
        ]
        if found:
            self.problems.append(f"broken MIME: {', '.join(dict.fromkeys(found))}")


# --- helpers: text ------------------------------------------------------------------------------


def _header_block(raw: bytes) -> bytes:
    """The headers of an email, without its body."""
    end = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0), default=len(raw))
    return raw[:end] + b"\n\n"


def _bounded(raw: bytes) -> tuple[bytes, list[str]]:
    """What of an email the stdlib's parser is given, and what was left out.

    The parser's time grows with the square of a Content-* header's length
    (its parameter parser: 20 s for one of 100 kB), with the square of the
    nesting (it recurses once per level, and fails past about 300 levels) and
    with the number of parts and header lines. It is given each Content-*
    header's first 512 bytes, the first 512 kB of headers, 100 multiparts and
    1,000 lines starting with "--" (boundaries).
    """
    left_out: list[str] = []
    raw = _CONTENT_HEADER.sub(_shortened, raw)
    end = len(_header_block(raw)) - 2
    if end > MOST_HEADER_BYTES:
        cut = raw.rfind(b"\n", 0, MOST_HEADER_BYTES) + 1
        raw = raw[:cut] + raw[end:]
        left_out.append(f"headers over {MOST_HEADER_BYTES // 1024} kB: the rest left unread")
    for count, multipart in enumerate(_MULTIPART.finditer(raw)):
        if count == MOST_MULTIPARTS:
            raw = raw[: multipart.start()]
            left_out.append(f"over {MOST_MULTIPARTS} multiparts: the rest left unread")
            break
    position = -1
    for _ in range(MOST_BOUNDARIES):
        position = raw.find(b"\n--", position + 1)
        if position < 0:
            return raw, left_out
    left_out.append(f"over {MOST_BOUNDARIES} MIME boundaries: the rest left unread")
    return raw[: position + 1], left_out


_CONTENT_HEADER = re.compile(
    rb"^content-[a-z0-9-]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", re.IGNORECASE | re.MULTILINE
)


def _shortened(header: re.Match[bytes]) -> bytes:
    """A Content-* header cut to 512 bytes: the stdlib's parameter parser is quadratic in its length."""
    text = header.group(0)
    return text if len(text) <= LONGEST_CONTENT_HEADER else text[:LONGEST_CONTENT_HEADER].rstrip(b"\r\n")


_MULTIPART = re.compile(rb"^content-type:[ \t\r\n]*multipart/", re.IGNORECASE | re.MULTILINE)


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text safe to store: undecodable bytes (kept as surrogates) as U+FFFD, control characters dropped."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return _CONTROLS.sub("", data.decode("utf-8", "replace"))


def _one_line(text: str) -> str:
    return " ".join(_clean(text).split())


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def _tidy(text: str) -> str:
    """Line ends normalised, trailing spaces gone, no more than one empty line in a row."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _known_charset(charset: str) -> bool:
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError, TypeError):
        return False
    return True


_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?[bBqQ]\?")


def _message_ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def _attached(part: Message) -> bool:
    return str(part.get("Content-Disposition", "")).strip().lower().startswith("attachment")


def _parts(msg: Message, into_messages: bool = False) -> Iterator[Message]:
    """This message and its parts, depth first, without recursion.

    Not into a message it carries (message/rfc822) unless asked; never into
    the header blocks of a delivery-status part.
    """
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        if not part.is_multipart() or part.get_content_type() in _DSN_TYPES:
            continue
        if part.get_content_maintype() != "multipart" and not into_messages:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))


class _HTMLText(HTMLParser):
    """Text of an HTML body: a line per block, a line break per <br>; scripts, styles and quotes left out."""

    SKIP = frozenset({"script", "style", "title", "template", "noscript", "blockquote"})
    BLOCK = frozenset(
        {"p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "ul", "ol", "pre"}
        | {"section", "article", "header", "footer", "dt", "dd", "address", "center", "body"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.size = 0
        self.skipping = 0
        self.line_start = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "br":
            self._break(always=True)
        elif tag in self.BLOCK:
            self._break()
            if tag == "li":
                self._add("- ")
        elif tag == "td":
            self._add(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._break(always=True)
        elif tag in self.BLOCK:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        text = re.sub(r"[ \t\r\n\f]+", " ", data)
        if self.line_start:
            text = text.lstrip(" ")
        if text:
            self._add(text)

    def _break(self, always: bool = False) -> None:
        if always or not self.line_start:
            self.pieces.append("\n")
            self.size += 1
            self.line_start = True

    def _add(self, text: str) -> None:
        if not self.skipping:
            self.pieces.append(text)
            self.size += len(text)
            self.line_start = False


def html_to_text(markup: str, stop_after: int | None = None) -> str:
    """The text of an HTML body (up to about ``stop_after`` characters of text, if given)."""
    reader = _HTMLText()
    try:
        for start in range(0, len(markup), 65_536):
            reader.feed(markup[start : start + 65_536])
            if stop_after is not None and reader.size > stop_after:
                break
        reader.close()
        text = "".join(reader.pieces)
    except Exception:  # html.parser gave up on it: the tags dropped, the rest as it is
        text = html.unescape(re.sub(r"<[^>]*>", " ", markup))
    lines = (" ".join(line.replace("\xa0", " ").split()) for line in text.split("\n"))
    return _tidy("\n".join(lines))


# --- helpers: the new text of a reply --------------------------------------------------------------

_SHELF = re.compile("\ue000(\\d+)\ue001")


def new_text(text: str) -> tuple[str, bool]:
    """(the new words of a reply, whether it quoted anything): quoted original and signature cut.

    ``mail-parser-reply`` finds where the quoted original starts; a quoted
    block (">" lines) left at the start or end goes too. When nothing is left,
    the first 2,000 characters of the text.
    """
    text = _tidy(text[: 2 * REPLY_SCAN].replace("\ue000", "").replace("\ue001", ""))
    if not text:
        return "", False
    head, shelved = _shelve_long_lines(text[:REPLY_SCAN])
    replies = ReplyText(text=head, languages=list(REPLY_LANGUAGES), keep_hyphen_lists=True).read().replies
    quoted = len(replies) > 1 or bool(replies and replies[0].headers)
    words = ""
    if replies:
        first = replies[0]
        words = str(first.full_body)
        signature = str(first.signatures or "")
        if signature and _is_signature(signature) and signature in words:
            words = words[: words.rindex(signature)]
        words, cut = _without_quoted_blocks(words)
        quoted = quoted or cut
    words = _tidy(_SHELF.sub(lambda m: shelved[int(m.group(1))], words))
    if not words:
        return text[:TEXT_LIMIT].rstrip(), quoted
    return words, quoted


def _shelve_long_lines(text: str) -> tuple[str, list[str]]:
    shelved: list[str] = []

    def shelve(line: str) -> str:
        if len(line) <= LONG_LINE:
            return line
        shelved.append(line.strip())
        return f"\ue000{len(shelved) - 1}\ue001"

    return "\n".join(shelve(line) for line in text.split("\n")), shelved


def _without_quoted_blocks(text: str) -> tuple[str, bool]:
    """The text without a block of two or more ">" lines at its start or end (a lone "> 5 kg" stays)."""
    lines = text.split("\n")
    cut = False
    for edge in (0, -1):
        block = 0
        order = range(len(lines)) if edge == 0 else range(len(lines) - 1, -1, -1)
        for index in order:
            line = lines[index].strip()
            if line.startswith(">"):
                block += 1
            elif line:
                break
        if block >= 2:
            cut = True
            kept = list(lines)
            while kept and (kept[edge].strip().startswith(">") or not kept[edge].strip()):
                kept.pop(edge)
            lines = kept
    return "\n".join(lines), cut


_SENT_FROM = re.compile(
    r"^(?:sent from|get outlook|von meinem|gesendet von|envoy[ée] de|enviado desde)\b", re.IGNORECASE
)


def _is_signature(signature: str) -> bool:
    """Whether text the reply cutter calls a signature is one: a sign-off, then a few short lines."""
    lines = [line.strip().lstrip("> ").strip() for line in signature.split("\n") if line.strip()]
    if not lines or len(lines) > 10 or any(len(line) > 120 for line in lines):
        return False
    if any(re.match(r"p\.?\s?s\b", line, re.IGNORECASE) for line in lines):
        return False  # a postscript is the physician's words
    first = lines[0]
    if set(first) <= {"-", "_"} or _SENT_FROM.match(first):
        return True
    opening, _, rest = first.partition(",")
    named = rest.split()  # "Thanks, Anna" or "Best regards, Dr. Keller" but not "Thanks, hold the exercise"
    return len(opening.split()) <= 4 and len(named) <= 4 and all(word[:1].isupper() for word in named)


# --- helpers: automatic answers -----------------------------------------------------------------------

_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autogenerated")
_OUT_OF_OFFICE_SUBJECT = re.compile(
    r"^\W*(?:(?:re|aw|wg|fw|fwd|tr|rv|sv)\s*:\s*)*\W*(?:"
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[ -]?(?:reply|response|responder|answer)"
    r"|autoreply|away from (?:the )?office|on vacation|on leave|abwesenheitsnotiz|abwesenheit"
    r"|automatische antwort|automatische r[üu]ckantwort|nicht im b[üu]ro|r[ée]ponse automatique"
    r"|absent du bureau|absence du bureau|respuesta autom[áa]tica|fuera de la oficina"
    r"|risposta automatica|fuori ufficio|automatisch antwoord|afwezig)",
    re.IGNORECASE,
)
_OUT_OF_OFFICE_BODY = re.compile(
    r"^\W*(?:(?:hello|hi|dear \w+|thank you for your (?:e-?mail|message))[^\n]{0,40}\s+)?"
    r"(?:i am|i'm|i will be|i'll be)\s+(?:currently\s+|now\s+)?(?:out of (?:the )?office|away from "
    r"(?:the |my )?(?:office|desk)|on (?:annual |parental |sick |study )?leave|on vacation|on holiday)"
    r"|^\W*(?:vielen dank f[üu]r ihre (?:e-?mail|nachricht)[^\n]{0,20}\s+)?ich bin\b[^\n]{0,80}"
    r"\b(?:nicht im b[üu]ro|abwesend|im urlaub|nicht erreichbar)"
    r"|^\W*je suis\b[^\n]{0,60}\b(?:absente?|en cong[ée]s?|en vacances)"
    r"|^\W*(?:estoy|estar[ée])\b[^\n]{0,60}\b(?:fuera de la oficina|de vacaciones|ausente)",
    re.IGNORECASE,
)

# --- helpers: bounces -----------------------------------------------------------------------------------

_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_DAEMON_LOCAL = re.compile(r"mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|microsoftexchange[0-9a-f]*", re.I)
_DAEMON_NAME = re.compile(r"mail delivery (?:sub)?system|mailer[- ]daemon|mail administrator", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery (?:has )?fail|failure notice|returned mail"
    r"|mail delivery failed|returning message to sender|could not send message|non[- ]?delivery"
    r"|delivery (?:failure|problem|incomplete|report)|message not delivered|delayed mail"
    r"|nicht zustellbar|unzustellbar|non remis|non distribuable|[ée]chec de (?:la )?remise"
    r"|no se (?:pudo|puede) entregar|no entregado",
    re.IGNORECASE,
)
_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.]*\d)")
_SMTP_REPLY = re.compile(r"(?<![\d.\w])[45]\d\d(?=[ -](?:[245]\.\d{1,3}\.\d{1,3}\b|[^\d\s]))")
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_ORIGINAL_FOLLOWS = re.compile(
    r"^[ \t]*-*[ \t]*(?:below this line is a copy of the message|this is a copy of the message"
    r"|original message follows|start of returned message|returned mail follows|original message -"
    r"|undelivered message follows|the headers of the original message follow)",
    re.IGNORECASE | re.MULTILINE,
)
_DEFECTS = {
    "CloseBoundaryNotFoundDefect": "a multipart has no closing boundary",
    "StartBoundaryNotFoundDefect": "a multipart's boundary never appears",
    "NoBoundaryInMultipartDefect": "a multipart has no boundary",
    "MultipartInvariantViolationDefect": "a multipart without parts",
    "FirstHeaderLineIsContinuationDefect": "the first header line is a continuation",
    "MisplacedEnvelopeHeaderDefect": "a 'From ' envelope line among the headers",
    "MissingHeaderBodySeparatorDefect": "a line among the headers that is not a header",
    "InvalidMultipartContentTransferEncodingDefect": "a multipart with a transfer encoding",
    "InvalidBase64PaddingDefect": "base64 with bad padding",
    "InvalidBase64CharactersDefect": "characters outside base64",
    "InvalidBase64LengthDefect": "base64 of an impossible length",
    "UndecodableBytesDefect": "bytes that cannot be decoded",
}


def _status(text: str) -> str:
    found = _STATUS.search(text)
    return found.group(1) if found else ""


def _diagnostic(value: str) -> str:
    """A Diagnostic-Code as one line without its type: "smtp; 550 5.1.1 ..." is "550 5.1.1 ..."."""
    line = _one_line(value)
    kind, semicolon, rest = line.partition(";")
    if semicolon and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", kind.strip()):
        return rest.strip()
    return line


def _dsn_address(value: str) -> str:
    """The address of an Original-/Final-Recipient field ("rfc822; a@b"), lower case; "" if none."""
    _, _, address = value.rpartition(";")
    address = _one_line(address).strip("<>").lower()
    return address if "@" in address and " " not in address else ""


def _dsn_blocks(report: Message) -> list[Message]:
    """The header blocks of a delivery-status part, as the stdlib parsed them.

    The stdlib splits a plain ``message/delivery-status`` into header blocks
    itself; it does not for one sent base64 or quoted-printable, nor for the
    UTF-8 ``message/global-delivery-status``: their text is decoded here and
    each block read by the stdlib's header parser.
    """
    payload = report.get_payload()
    encoding = str(report.get("Content-Transfer-Encoding", "")).strip().lower()
    plain = report.get_content_type() == "message/delivery-status" and encoding in (
        "",
        "7bit",
        "8bit",
        "binary",
    )
    if plain and isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    data = report.as_bytes()
    body = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[-1]
    if encoding == "base64":
        try:
            body = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/]", b"", body) + b"==", validate=False)
        except (binascii.Error, ValueError):
            body = b""
    elif encoding == "quoted-printable":
        body = quopri.decodestring(body)
    text = body[:FLUFL_SCAN].decode("utf-8", "replace").replace("\r\n", "\n")
    parser = HeaderParser(policy=_PARSING)
    return [
        parser.parsestr(block.strip("\n") + "\n") for block in re.split(r"\n[ \t]*\n", text) if block.strip()
    ]


def _addresses_of(found: Iterable[bytes], ours: set[str]) -> tuple[str, ...]:
    addresses = (raw.decode("ascii", "replace").strip().strip("<>").lower() for raw in found)
    return tuple(sorted({a for a in addresses if "@" in a and a not in ours}))


def _human_part(text: str) -> str:
    """A bounce's own words: its text up to where the copy of the original message starts."""
    follows = _ORIGINAL_FOLLOWS.search(text)
    return text[: follows.start()] if follows else text


def _first_diagnostic(text: str) -> str:
    """The first line giving an SMTP reply ("550 5.1.1 ...") from its code on, else one with a status code."""
    lines = text.split("\n")
    for line in lines:
        reply = _SMTP_REPLY.search(line)
        if reply:
            return _one_line(line[reply.start() :])
    for line in lines:
        if _status(line):
            return _one_line(line)
    return ""
