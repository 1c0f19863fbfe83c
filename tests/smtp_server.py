"""A real SMTP server for tests (aiosmtpd in a thread), plain or STARTTLS with AUTH.

Replies can be scripted per message (``script``), so tests can make the
server answer 451 or 550, drop the connection, or stall. It counts the
connections open at once (``peak``) and, with ``max_connections``, greets
one more with 421 as providers do.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USERNAME, PASSWORD = "clinic-sender", "s3cret-Pa55word-XYZZY"


def free_port() -> int:
    """aiosmtpd's Controller cannot take port 0: ask the OS for a free one first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def message_id(self) -> str:
        """The Message-ID header, found without parsing the whole email (tests count thousands)."""
        headers = self.data.split(b"\r\n\r\n", 1)[0]
        found = re.search(rb"^Message-ID:[ \t]*(\S+)", headers, flags=re.M | re.I)
        return found[1].decode("ascii", "replace") if found else ""


@dataclass
class Handler:
    """Records what arrives; answers from ``script`` first, then 250.

    ``delay`` makes every DATA take that long (seconds), so a test can catch
    a sender in the middle of a batch.
    """

    received: list[Received] = field(default_factory=list)
    script: deque = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0
    refuse_rcpt: dict = field(default_factory=dict)  # address -> reply to RCPT TO, e.g. "550 5.1.1 ..."
    max_connections: int = 0  # more at once are greeted with 421 (0: no limit)
    open: int = 0  # connections open now
    peak: int = 0  # the most open at once
    refused_connections: int = 0
    peers: set = field(default_factory=set)  # (host, port) of each connection that delivered mail
    pipelining: bool = True  # offer PIPELINING (RFC 2920), as Postfix and the big providers do
    refuse_mail: str = ""  # a reply to MAIL FROM, e.g. "451 4.3.0 try later"
    data_waiting: list = field(default_factory=list)  # per RCPT: was DATA already sent with it?

    def count_by_message_id(self) -> dict[str, int]:
        """How many times each Message-ID arrived."""
        with self.lock:
            copies = list(self.received)
        counts: dict[str, int] = {}
        for item in copies:
            key = item.message_id
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refuse_mail:
            return self.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        # What the client sent and the server has not read yet: DATA there means it pipelined.
        self.data_waiting.append(b"DATA\r\n" in bytes(server._reader._buffer))
        refusal = self.refuse_rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        action = self.script.popleft() if self.script else None
        if action == "drop":
            server.transport.close()
            return "421 closing"  # never seen: the connection is gone
        if isinstance(action, tuple) and action[0] == "stall":
            await asyncio.sleep(action[1])
            return "451 too slow"
        if action is not None:
            return action
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
            self.peers.add(session.peer)
        return "250 2.0.0 OK: queued"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False on failure too, or aiosmtpd leaves the client waiting.
    return AuthResult(success=ok, handled=False)


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting connections and refusing those over the handler's limit with 421."""

    async def _handle_client(self) -> None:
        handler: Handler = self.event_handler
        with handler.lock:
            refused = bool(handler.max_connections) and handler.open >= handler.max_connections
            if refused:
                handler.refused_connections += 1
            else:
                handler.open += 1
                handler.peak = max(handler.peak, handler.open)
        if refused:
            await self.push("421 4.7.0 Too many connections from your address, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            with handler.lock:
                handler.open -= 1


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


class SMTPServer:
    def __init__(self, tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False):
        self.handler = Handler()
        self.port = free_port()
        kwargs = {}
        if tls_context is not None and implicit_tls:
            # TLS from the first byte (port 465 style); AUTH inside it.
            kwargs = {
                "ssl_context": tls_context,
                "authenticator": _authenticator,
                "auth_required": True,
                "auth_require_tls": False,
            }
        elif tls_context is not None:
            kwargs = {
                "tls_context": tls_context,
                "require_starttls": True,
                "authenticator": _authenticator,
                "auth_required": True,
            }
        self.controller = CountingController(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SMTPServer:
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if getattr(self, "running", False):
            self.controller.stop()
            self.running = False
