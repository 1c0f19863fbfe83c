"""A real IMAP server for tests: the throwaway Dovecot that ``.ci/dovecot.sh`` starts.

``OUTREACH_TEST_IMAP`` (set by ``.ci/run``, or by the ``imap_server`` fixture
when it starts its own) is the line ``.ci/dovecot.sh start`` prints::

    HOST PLAIN_PORT TLS_PORT CA_FILE DIR

``PLAIN_PORT`` speaks IMAP with STARTTLS offered (not required), ``TLS_PORT``
implicit TLS; both present a certificate for ``localhost`` and ``127.0.0.1``
signed by the CA in ``CA_FILE``. Users are files in ``DIR/users`` (one per
user, read by Dovecot at the first login: a new user can log in at once);
each has a maildir of its own under ``DIR/mail``.

The helpers here (``append``, ``folder_messages``, ``folders``, ``flags``) go
through a real IMAP connection (stdlib ``imaplib``, IMAPS, certificate
verified), never around Dovecot into the maildir.
"""

from __future__ import annotations

import imaplib
import os
import re
import ssl
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "dovecot.sh"
DOVECOT = Path("/usr/sbin/dovecot")


class ImapError(Exception):
    """The server answered NO or BAD to a helper's command."""


@dataclass(frozen=True)
class ImapUser:
    name: str  # the IMAP login name
    password: str
    maildir: Path  # DIR/mail/NAME/Maildir (created by Dovecot at the first login)


@dataclass(frozen=True)
class ImapServer:
    host: str
    plain_port: int
    tls_port: int
    ca_file: Path
    dir: Path

    @classmethod
    def parse(cls, line: str) -> ImapServer:
        """From ``HOST PLAIN_PORT TLS_PORT CA_FILE DIR`` (``OUTREACH_TEST_IMAP``)."""
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(
                f"OUTREACH_TEST_IMAP: expected 'HOST PLAIN_PORT TLS_PORT CA_FILE DIR', got {line!r}"
            )
        host, plain, tls, ca_file, folder = parts
        return cls(host, int(plain), int(tls), Path(ca_file), Path(folder))

    @property
    def line(self) -> str:
        return f"{self.host} {self.plain_port} {self.tls_port} {self.ca_file} {self.dir}"

    # --- starting and stopping one (the fixture does this when .ci/run did not) ---

    @classmethod
    def start(cls) -> ImapServer:
        """``.ci/dovecot.sh start``; raises ``RuntimeError`` with its message when it fails."""
        try:
            result = subprocess.run(
                ["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(".ci/dovecot.sh start: no answer in 120 s") from exc
        if result.returncode != 0:
            raise RuntimeError(f".ci/dovecot.sh start failed ({result.returncode}): {result.stderr.strip()}")
        return cls.parse(result.stdout.strip())

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.dir)], timeout=60, check=False)

    # --- users ---

    def add_user(self) -> ImapUser:
        """A new user with an empty mailbox, a unique name and a random password; it can log in at once."""
        name = f"u{uuid.uuid4().hex[:12]}"
        password = uuid.uuid4().hex
        home = self.dir / "mail" / name
        owner = (self.dir / "mail").stat()  # the mail user: root's Dovecot refuses uid 0
        line = f"{name}:{{PLAIN}}{password}:{owner.st_uid}:{owner.st_gid}::{home}::\n"
        users = self.dir / "users"
        tmp = users / f".{name}.tmp"
        tmp.write_text(line)
        tmp.chmod(0o644)  # read by Dovecot's auth process (user dovecot)
        tmp.rename(users / name)  # whole or absent, never half-written when Dovecot reads it
        return ImapUser(name, password, home / "Maildir")

    # --- connections ---

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate against the test CA (hostname ``localhost`` or ``127.0.0.1``)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @contextmanager
    def connect(self, user: ImapUser) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in IMAPS connection (certificate verified), logged out at the end."""
        conn = imaplib.IMAP4_SSL(self.host, self.tls_port, ssl_context=self.ssl_context(), timeout=10)
        try:
            _ok(conn.login(user.name, user.password))
            yield conn
        finally:
            with suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    # --- what the tests set up and check ---

    def append(self, user: ImapUser, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """Put one message (RFC 5322 bytes) in ``folder``, created if missing; returns its UID."""
        with self.connect(user) as conn:
            if folder.upper() != "INBOX" and folder not in _list_folders(conn):
                _ok(conn.create(_quote(folder)))
            flag_list = "(" + " ".join(flags) + ")"
            typ, data = conn.append(_quote(folder), flag_list, None, raw)
            _ok((typ, data))
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if not match:
                raise ImapError(f"APPEND to {folder}: no APPENDUID in {data!r}")
            return int(match.group(1))

    def folder_messages(self, user: ImapUser, folder: str = "INBOX") -> list[bytes]:
        """The messages in ``folder`` now (raw bytes, by UID); read-only: no flag changes."""
        return [raw for _, raw, _ in self._fetch(user, folder)]

    def flags(self, user: ImapUser, folder: str = "INBOX") -> list[frozenset[str]]:
        """Each message's flags, in the same order as ``folder_messages`` (``\\Recent`` left out)."""
        return [flags for _, _, flags in self._fetch(user, folder)]

    def folders(self, user: ImapUser) -> list[str]:
        """Every folder's name (``/`` separates levels), sorted."""
        with self.connect(user) as conn:
            return sorted(_list_folders(conn))

    def _fetch(self, user: ImapUser, folder: str) -> list[tuple[int, bytes, frozenset[str]]]:
        with self.connect(user) as conn:
            _ok(conn.select(_quote(folder), readonly=True))  # EXAMINE
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            _ok((typ, data))
            messages = []
            for item in data:
                if not isinstance(item, tuple):
                    continue  # the closing ")" of each response
                head, raw = item
                uid = re.search(rb"UID (\d+)", head)
                flags = re.search(rb"FLAGS \(([^)]*)\)", head)
                if uid is None or flags is None:
                    raise ImapError(f"FETCH in {folder}: unexpected response {head!r}")
                names = frozenset(flags.group(1).decode().split()) - {"\\Recent"}
                messages.append((int(uid.group(1)), raw, names))
            return sorted(messages, key=lambda message: message[0])


def _ok(response: tuple[str, list]) -> None:
    typ, data = response
    if typ != "OK":
        raise ImapError(f"{typ}: {data!r}")


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.*)$')


def _list_folders(conn: imaplib.IMAP4) -> list[str]:
    typ, data = conn.list()
    _ok((typ, data))
    names = []
    for item in data:
        head, literal = item if isinstance(item, tuple) else (item, None)
        match = _LIST_LINE.match(head or b"")
        if match is None:
            raise ImapError(f"LIST: unexpected response {item!r}")
        name = literal if literal is not None else match.group("name")
        if literal is None and name.startswith(b'"'):
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        names.append(name.decode())
    return names


def from_environment(value: str | None = None) -> ImapServer | None:
    """The server named by ``OUTREACH_TEST_IMAP`` (or ``value``), or None when unset."""
    line = os.environ.get("OUTREACH_TEST_IMAP", "") if value is None else value
    return ImapServer.parse(line) if line.strip() else None


def dovecot_installed() -> bool:
    return DOVECOT.is_file() and os.access(DOVECOT, os.X_OK)
