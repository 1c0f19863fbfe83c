"""Deployment settings, read from ``OUTREACH_*`` environment variables.

``.env`` is loaded by the CLI entry point only (see ``cli.main``), never here,
so the library and its tests see exactly the environment they are given.
Every key, its default and its meaning is listed in ``.env.example``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from outreach.errors import SettingsError
from outreach.windows import parse_window

T = TypeVar("T")

BACKENDS = ("smtp", "file", "console")
SECURITY_MODES = ("starttls", "ssl", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What an address may hold: no whitespace, control characters or characters
# that end an address in a header or an SMTP command, or start another.
_ADDRESS = re.compile(r'[^\s\x00-\x1f\x7f<>()\[\],;:"\\@]+@[^\s\x00-\x1f\x7f<>()\[\],;:"\\@]+')


def is_address(value: str) -> bool:
    """An address that can be written as it is, in a header or an SMTP envelope.

    The one address rule: ``compose`` writes only such addresses, and
    ``address_problem`` (what a person may enter) starts from it. Non-ASCII
    passes: the file backend can still show it, the SMTP backend refuses it.
    """
    return len(value) <= 254 and _ADDRESS.fullmatch(value) is not None


def is_loopback(host: str) -> bool:
    """This machine: the one place plain-text SMTP or IMAP may go without TLS."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def address_problem(value: str) -> str | None:
    """Why ``value`` cannot be used as an email address, or None.

    Non-ASCII addresses are refused here, where a person can fix them, not
    at sending time: SMTP as we speak it cannot carry them.
    """
    domain = value.rpartition("@")[2]
    if not is_address(value) or "." not in domain[1:-1]:
        return f"{value!r} is not an email address"
    if value[0] in "=+-":  # legal, but a spreadsheet would run it as a formula (see csvsafe)
        return f"{value!r} begins with {value[0]!r}, which a spreadsheet runs as a formula"
    if not value.isascii():
        return f"{value!r} is not a plain ASCII address; SMTP cannot deliver it as written"
    return None


def parse_mailbox(value: str) -> tuple[str, str]:
    """``address`` or ``Display Name <address>``, as mail clients write it: (name, address).

    Raises ValueError saying what is wrong. The address must pass
    ``address_problem``; a name with a comma must be quoted, or it reads as two addresses.
    """
    if "<" not in value:
        problem = address_problem(value)
        if problem:
            raise ValueError(problem)
        return "", value
    from email.errors import InvalidHeaderDefect
    from email.headerregistry import AddressHeader, HeaderRegistry

    parsed = HeaderRegistry()("From", value)
    header = cast(AddressHeader, parsed)  # a From header is an address header
    if len(header.addresses) > 1:
        raise ValueError(f"{value!r} is more than one address (put a name with a comma in double quotes)")
    not_one = f"{value!r} is not an address or one 'Name <address>'"
    if not header.addresses or header.groups[0].display_name is not None:
        raise ValueError(not_one)
    [mailbox] = header.addresses
    problem = address_problem(mailbox.addr_spec)
    if problem:
        raise ValueError(problem)
    if any(isinstance(defect, InvalidHeaderDefect) for defect in parsed.defects):
        raise ValueError(not_one)
    return mailbox.display_name, mailbox.addr_spec


# The checkout this package lives in (the benchmark and tests read it).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
# The rules and templates shipped inside the package (also in a built wheel);
# ``outreach init`` copies them into the working directory for the practice to edit.
SHIPPED = Path(str(files("outreach")))


class Secret:
    """A value that never shows itself in repr, str or logs."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///outreach.db"
    email_backend: str = "file"
    outbox_dir: Path = Path("outbox")
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: Secret = field(default_factory=lambda: Secret(""))
    smtp_security: str = "starttls"
    smtp_timeout: float = 30.0
    smtp_ca_file: Path | None = None
    smtp_allow_insecure: bool = False
    smtp_connections: int = 1  # connections a service sends on at once, each with its own claims
    smtp_max_per_minute: int | None = None  # the provider's rate limit, across all connections; None: none
    from_addr: str = "updates@practice.example"  # the bare address: SMTP envelope, Message-ID domain
    from_name: str = ""  # the name in OUTREACH_FROM="Name <address>"; else sender and practice
    reply_to: str = ""
    practice_name: str = "Demo Post-Rehab Practice"
    practice_address: str = "1 Example Street, Springfield"
    practice_phone: str = ""
    sender_name: str = "Alex Morgan"
    sender_credentials: str = "MS, CEP"
    timezone: str = "UTC"
    campaigns_dir: Path = Path("campaigns")
    templates_dir: Path = Path("templates/email")
    max_attempts: int = 8
    retry_base_seconds: int = 60
    retry_max_seconds: int = 6 * 3600
    lease_seconds: int = 300
    batch_size: int = 200  # a claim: four times fewer claims than 50 made sending 15-20 % faster
    tick_seconds: int = 60
    log_level: str = "INFO"
    send_window: str = "Mon-Fri 08:00-17:00"
    weekly_cap: int = 3
    db_busy_seconds: float = 30.0  # how long a SQLite writer waits for another before "database is locked"
    web_secure_cookies: bool = False  # true behind a TLS proxy: the session cookie goes over HTTPS only
    web_idle_minutes: int = 15  # a console session ends after this long without a request
    web_trusted_proxies: tuple[str, ...] = ()  # X-Forwarded-* is believed only from these addresses
    imap_host: str = ""  # the practice's mailbox, where replies and bounces arrive; "" = not read
    imap_port: int = 0  # 0: the usual port for imap_security (993 for ssl, 143 otherwise)
    imap_username: str = ""
    imap_password: Secret = field(default_factory=lambda: Secret(""))
    imap_security: str = "ssl"
    imap_folder: str = "INBOX"
    imap_done_folder: str = "outreach-done"  # handled mail is moved here, never deleted
    imap_ca_file: Path | None = None
    bounce_address: str = ""  # e.g. bounces@practice.example: per-message envelope senders (VERP)
    redirect_all_to: tuple[str, ...] = ()  # staging: every email goes here instead, none to a physician
    retention_days: int | None = None  # None: keep every body; else remove final messages' bodies after

    @property
    def staging(self) -> bool:
        return bool(self.redirect_all_to)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def imap_port_or_usual(self) -> int:
        return self.imap_port or (993 if self.imap_security == "ssl" else 143)

    @property
    def from_domain(self) -> str:
        return self.from_addr.rpartition("@")[2]

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``OUTREACH_*`` key; the first bad one raises."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            database_url=reader.url("DATABASE_URL", cls.database_url),
            email_backend=reader.choice("EMAIL_BACKEND", cls.email_backend, BACKENDS),
            outbox_dir=Path(reader.text("OUTBOX_DIR", str(cls.outbox_dir))),
            smtp_host=reader.text("SMTP_HOST", cls.smtp_host),
            smtp_port=reader.integer("SMTP_PORT", cls.smtp_port, 1, 65535),
            smtp_username=reader.text("SMTP_USERNAME", ""),
            smtp_password=Secret(env.get("OUTREACH_SMTP_PASSWORD", "")),
            smtp_security=reader.choice("SMTP_SECURITY", cls.smtp_security, SECURITY_MODES),
            smtp_timeout=reader.number("SMTP_TIMEOUT", cls.smtp_timeout),
            smtp_ca_file=reader.ca_file("SMTP_CA_FILE"),
            smtp_allow_insecure=reader.boolean("SMTP_ALLOW_INSECURE", False),
            smtp_connections=reader.integer("SMTP_CONNECTIONS", cls.smtp_connections, 1, 32),
            smtp_max_per_minute=reader.read("SMTP_MAX_PER_MINUTE", None, _per_minute),
            **reader.sender("FROM", cls.from_addr),
            reply_to=reader.email("REPLY_TO", ""),
            practice_name=reader.text("PRACTICE_NAME", cls.practice_name),
            practice_address=reader.text("PRACTICE_ADDRESS", cls.practice_address),
            practice_phone=reader.text("PRACTICE_PHONE", ""),
            sender_name=reader.text("SENDER_NAME", cls.sender_name),
            sender_credentials=reader.text("SENDER_CREDENTIALS", cls.sender_credentials),
            timezone=reader.timezone("TIMEZONE", cls.timezone),
            campaigns_dir=reader.directory("CAMPAIGNS_DIR", "campaigns"),
            templates_dir=reader.directory("TEMPLATES_DIR", "templates/email"),
            max_attempts=reader.integer("MAX_ATTEMPTS", cls.max_attempts, 1, 100),
            retry_base_seconds=reader.integer("RETRY_BASE_SECONDS", cls.retry_base_seconds, 1),
            retry_max_seconds=reader.integer("RETRY_MAX_SECONDS", cls.retry_max_seconds, 1),
            lease_seconds=reader.integer("LEASE_SECONDS", cls.lease_seconds, 1),
            batch_size=reader.integer("BATCH_SIZE", cls.batch_size, 1, 10_000),
            tick_seconds=reader.integer("TICK_SECONDS", cls.tick_seconds, 1, 86_400),
            log_level=reader.choice("LOG_LEVEL", cls.log_level, LOG_LEVELS, upper=True),
            send_window=reader.window("SEND_WINDOW", cls.send_window),
            weekly_cap=reader.integer("WEEKLY_CAP", cls.weekly_cap, 1, 100),
            db_busy_seconds=reader.number("DB_BUSY_SECONDS", cls.db_busy_seconds, most=3600),
            web_secure_cookies=reader.boolean("WEB_SECURE_COOKIES", False),
            web_idle_minutes=reader.integer("WEB_IDLE_MINUTES", cls.web_idle_minutes, 1, 24 * 60),
            web_trusted_proxies=reader.addresses("WEB_TRUSTED_PROXIES"),
            imap_host=reader.text("IMAP_HOST", ""),
            imap_port=reader.integer("IMAP_PORT", 0, 0, 65535),
            imap_username=reader.text("IMAP_USERNAME", ""),
            imap_password=Secret(env.get("OUTREACH_IMAP_PASSWORD", "")),
            imap_security=reader.choice("IMAP_SECURITY", cls.imap_security, SECURITY_MODES),
            imap_folder=reader.text("IMAP_FOLDER", cls.imap_folder),
            imap_done_folder=reader.text("IMAP_DONE_FOLDER", cls.imap_done_folder),
            imap_ca_file=reader.ca_file("IMAP_CA_FILE"),
            bounce_address=reader.email("BOUNCE_ADDRESS", ""),
            redirect_all_to=reader.read("REDIRECT_ALL_TO", (), _emails),
            retention_days=reader.read("RETENTION_DAYS", None, _retention_days),
        )
        return settings


def default_dir(relative: str) -> Path:
    """A folder relative to the working directory (the practice's own), else the shipped one."""
    here = Path(relative)
    if here.is_dir():
        return here
    return SHIPPED / relative


# --- what a setting's text may be: each reads it, or raises ValueError saying what is wrong ---


def _as(convert: Callable[[str], T], value: str, problem: str, *refused: type[Exception]) -> T:
    """``convert(value)``, or ``ValueError(problem)`` where it refuses (``ValueError`` or ``refused``)."""
    caught: tuple[type[Exception], ...] = (ValueError, *refused)
    try:
        return convert(value)
    except caught:
        raise ValueError(problem) from None


def _single_line(value: str) -> str:
    if any(ch in value for ch in "\r\n"):
        raise ValueError("must be a single line")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _true_or_false(value: str) -> bool:
    lowered = value.lower()
    if lowered not in _TRUE + _FALSE:
        raise ValueError(f"{value!r} is not true or false")
    return lowered in _TRUE


def _ip_addresses(value: str) -> tuple[str, ...]:
    items = (part.strip() for part in value.split(","))
    return tuple(
        str(_as(ipaddress.ip_address, item, f"{item!r} is not an IP address (e.g. 127.0.0.1)"))
        for item in items
    )


def _database_url(value: str) -> str:
    url = _as(make_url, value, "is not a database URL like sqlite:///outreach.db", ArgumentError)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"database {url.get_backend_name()!r} is not supported")
    return value


def _email(value: str) -> str:
    problem = address_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _emails(value: str) -> tuple[str, ...]:
    """A comma-separated list of addresses, each checked, none twice."""
    found: list[str] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise ValueError("an empty address in the list (two commas, or one at the end)")
        problem = address_problem(item)
        if problem:
            raise ValueError(problem)
        if item.lower() not in (known.lower() for known in found):
            found.append(item)
    return tuple(found)


def _per_minute(value: str) -> int:
    count = _as(int, value, f"{value!r} is not a whole number of emails a minute")
    if not 1 <= count <= 1_000_000:
        raise ValueError(f"{count} is out of range (between 1 and 1000000; unset it for no limit)")
    return count


def _retention_days(value: str) -> int:
    days = _as(int, value, f"{value!r} is not a whole number of days")
    if not 1 <= days <= 36_500:
        raise ValueError(f"{days} is out of range (between 1 and 36500 days; unset it to keep everything)")
    return days


def _sender(value: str) -> dict[str, str]:
    name, address = parse_mailbox(_single_line(value))
    return {"from_addr": address, "from_name": name}


def _time_zone(value: str) -> str:
    _as(ZoneInfo, value, f"{value!r} is not an IANA time zone", ZoneInfoNotFoundError)
    return value


def _send_window(value: str) -> str:
    parse_window(value)
    return value


def _existing(what: str) -> Callable[[str], Path]:
    """A path to an existing ``what``: a "folder" or a "file"."""

    def existing(value: str) -> Path:
        path = Path(value)
        if not (path.is_dir() if what == "folder" else path.is_file()):
            raise ValueError(f"{what} {value!r} does not exist")
        return path

    return existing


class _Reader:
    """Turns raw strings into typed values; each error names its key."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def raw(self, key: str) -> str | None:
        value = self.env.get(f"OUTREACH_{key}")
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def fail(self, key: str, problem: str) -> SettingsError:
        return SettingsError(f"OUTREACH_{key}: {problem}")

    def read(self, key: str, default: T, convert: Callable[[str], T]) -> T:
        """The setting as ``convert`` reads it, or ``default`` when it is not set (or blank).

        ``convert`` raises ``ValueError`` saying what is wrong with the text;
        the ``SettingsError`` raised instead names the key.
        """
        value = self.raw(key)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def text(self, key: str, default: str) -> str:
        return self.read(key, default, _single_line)

    def choice(self, key: str, default: str, allowed: tuple[str, ...], upper: bool = False) -> str:
        def chosen(value: str) -> str:
            value = value.upper() if upper else value.lower()
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
            return value

        return self.read(key, default, chosen)

    def integer(self, key: str, default: int, low: int = 0, high: int | None = None) -> int:
        def whole(value: str) -> int:
            number = _as(int, value, f"{value!r} is not a whole number")
            if number < low or (high is not None and number > high):
                upper = f" and {high}" if high is not None else ""
                raise ValueError(f"{number} is out of range (between {low}{upper})")
            return number

        return self.read(key, default, whole)

    def number(self, key: str, default: float, most: float = 600) -> float:
        def seconds(value: str) -> float:
            number = _as(float, value, f"{value!r} is not a number of seconds")
            if not 0 < number <= most:
                raise ValueError(f"{value} is out of range (0 to {most:g} seconds)")
            return number

        return self.read(key, default, seconds)

    def boolean(self, key: str, default: bool) -> bool:
        return self.read(key, default, _true_or_false)

    def addresses(self, key: str) -> tuple[str, ...]:
        """A comma-separated list of IP addresses (the proxies trusted to say who the client is)."""
        return self.read(key, (), _ip_addresses)

    def url(self, key: str, default: str) -> str:
        return self.read(key, default, _database_url)

    def email(self, key: str, default: str) -> str:
        return self.read(key, default, _email)

    def sender(self, key: str, default: str) -> dict[str, str]:
        """``from_addr`` (the bare address) and ``from_name`` from ``address`` or ``Name <address>``."""
        return self.read(key, {"from_addr": default, "from_name": ""}, _sender)

    def timezone(self, key: str, default: str) -> str:
        return self.read(key, default, _time_zone)

    def window(self, key: str, default: str) -> str:
        return self.read(key, default, _send_window)

    def directory(self, key: str, default: str) -> Path:
        return self.read(key, default_dir(default), _existing("folder"))

    def optional_file(self, key: str) -> Path | None:
        return self.read(key, None, _existing("file"))

    def ca_file(self, key: str) -> Path | None:
        """A file of PEM certificates, loaded now as sending will load it: junk fails here, not at send."""
        path = self.optional_file(key)
        if path is None:
            return None
        import ssl  # here: only a deployment that names a CA file pays for it

        try:
            ssl.create_default_context(cafile=str(path))
        except ssl.SSLError:
            raise self.fail(key, f"{str(path)!r} holds no PEM certificate") from None
        except OSError as exc:
            raise self.fail(key, f"cannot read {str(path)!r}: {exc.strerror}") from None
        return path
