"""Sends through an SMTP server: TLS verified, one connection per batch, timeouts.

Replies are classified the way the dispatcher needs them: 4xx, timeouts and
dropped connections are transient; 5xx is permanent for that message;
failures to connect, to negotiate TLS or to log in abort the whole batch
(every message would fail the same way), leaving the messages queued.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
from collections.abc import Iterator

from outreach.backends.base import Backend
from outreach.compose import Email
from outreach.errors import (
    BatchAbort,
    PermanentError,
    RecipientUnknown,
    SettingsError,
    TooManyConnections,
    TransientError,
)
from outreach.settings import Settings, is_address, is_loopback

LEADING_DOT = re.compile(rb"(?m)^\.")  # a line starting with a dot (RFC 5321 4.5.2)


def insecure_refusal(settings: Settings) -> str | None:
    """Why plain-text SMTP is refused for these settings, or None if allowed."""
    if settings.smtp_security != "none" or settings.smtp_allow_insecure:
        return None
    if is_loopback(settings.smtp_host):
        return None
    return (
        f"OUTREACH_SMTP_SECURITY: refusing unencrypted SMTP to {settings.smtp_host}: "
        "health information must travel over TLS (use starttls or ssl, "
        "or set OUTREACH_SMTP_ALLOW_INSECURE=true for a trusted relay)"
    )


def classify(code: int, reply: bytes | str, stage: str) -> TransientError | PermanentError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    summary = f"{code} {text}".strip()
    if 400 <= code < 500:
        return TransientError(f"{stage}: server replied {summary}", reply=summary)
    if 500 <= code < 600:
        unknown = stage.startswith("RCPT") and text.lstrip().startswith("5.1.")
        kind = RecipientUnknown if unknown else PermanentError
        return kind(f"{stage}: server replied {summary}", reply=summary)
    return TransientError(f"{stage}: unexpected reply {summary}", reply=summary)


class SMTPBackend(Backend):
    name = "smtp"

    def __init__(self, settings: Settings):
        refusal = insecure_refusal(settings)
        if refusal:
            raise SettingsError(refusal)
        self.settings = settings
        self._conn: smtplib.SMTP | None = None
        self._awaiting_content = False  # after a pipelined DATA's 354, until the content is sent
        self._replies_due: tuple[str, ...] | None = None  # the envelope went, its replies are not read yet

    @property
    def where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()  # verifies the certificate and the host name
        if self.settings.smtp_ca_file:
            context.load_verify_locations(cafile=str(self.settings.smtp_ca_file))
        return context

    def open(self) -> None:
        if self._conn is None:
            self._conn = self._connect()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        conn: smtplib.SMTP | None = None
        try:
            if s.smtp_security == "ssl":
                conn = smtplib.SMTP_SSL(
                    s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=self.tls_context()
                )
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            conn.ehlo()
            if s.smtp_security == "starttls":
                if not conn.has_extn("starttls"):
                    raise BatchAbort(
                        f"SMTP server {self.where} does not offer STARTTLS; not sending unencrypted"
                    )
                conn.starttls(context=self.tls_context())
                conn.ehlo()
            if s.smtp_username:
                conn.login(s.smtp_username, s.smtp_password.reveal())
            return conn
        except BatchAbort:
            _quietly_close(conn)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _quietly_close(conn)
            raise BatchAbort(
                f"SMTP login as {s.smtp_username!r} at {self.where} refused: {exc.smtp_code}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            _quietly_close(conn)
            raise BatchAbort(f"SMTP server {self.where}: {exc}") from None
        except smtplib.SMTPConnectError as exc:  # a greeting other than 220
            _quietly_close(conn)
            text = exc.smtp_error
            said = f"{exc.smtp_code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"
            kind = TooManyConnections if exc.smtp_code == 421 else BatchAbort
            raise kind(f"SMTP server {self.where} refused the connection: {said}", reply=said) from None
        except ssl.SSLError as exc:
            _quietly_close(conn)
            raise BatchAbort(f"TLS with SMTP server {self.where} failed: {exc.reason or exc}") from None
        except (OSError, smtplib.SMTPException) as exc:
            _quietly_close(conn)
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            )
            raise BatchAbort(f"cannot reach SMTP server {self.where}: {reason}") from None

    def close_copy(self) -> None:
        self._conn = None  # the original's connection stays the original's

    def close(self) -> None:
        if self._awaiting_content or self._replies_due is not None:  # QUIT now could be read as content
            self._drop()
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                _quietly_close(conn)

    def _envelope(self, msg: Email, sender: str, recipients: tuple[str, ...]) -> None:
        """The envelope's first write; its replies are read in ``_data``, after the caller's hook.

        So the hook (the previous outcome's recording) runs while the server
        reads the envelope, not after it has answered.
        """
        _check_ascii(msg, sender, recipients)
        if self._conn is None:  # the previous message lost the connection
            self._conn = self._connect()
        conn = self._conn
        with self._talking():
            # The addresses are checked already (``_check_ascii``): no need for smtplib
            # to parse them again for every message.
            if conn.has_extn("pipelining"):
                commands = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{to}>" for to in recipients), "DATA"]
                conn.send("".join(f"{command}\r\n" for command in commands))
            else:
                conn.putcmd("mail", f"FROM:<{sender}>")
        self._replies_due = recipients

    def _data(self, msg: Email) -> str:
        conn = self._conn
        recipients, self._replies_due = self._replies_due, None
        if conn is None or recipients is None:  # only a hook that closed the backend gets here
            raise TransientError(f"connection to {self.where} closed before the email was handed over")
        with self._talking():
            if conn.has_extn("pipelining"):
                self._pipelined_replies(conn, recipients)
            else:
                self._one_by_one(conn, recipients)
            self._awaiting_content = False
            conn.send(_content(msg.data))
            self._while_waiting()
            code, reply = conn.getreply()
            if code != 250:
                raise self._refused(code, reply, "DATA")
        return f"{code} {reply.decode('utf-8', 'replace')}"

    def _pipelined_replies(self, conn: smtplib.SMTP, recipients: tuple[str, ...]) -> None:
        """The replies to MAIL, each RCPT and DATA, sent in one write (RFC 2920), read in turn.

        One round trip instead of two or more, where the server offers
        PIPELINING (Postfix, Exim and the big providers do). Nothing is handed
        over yet: the server's 354 only invites the content.
        """
        stages = ["MAIL FROM", *(f"RCPT TO <{recipient}>" for recipient in recipients), "DATA"]
        replies: list[tuple[int, bytes]] = []
        for _ in stages:
            replies.append(conn.getreply())
            if replies[-1][0] == 421:  # the server is closing: no more replies will come
                break
        self._awaiting_content = replies[-1][0] == 354
        accepted = [(250,), *((250, 251) for _ in recipients), (354,)]
        for stage, ok, (code, reply) in zip(stages, accepted, replies, strict=False):
            if code not in ok:
                raise self._refused(code, reply, stage)

    def _one_by_one(self, conn: smtplib.SMTP, recipients: tuple[str, ...]) -> None:
        """MAIL's reply (the command went in ``_envelope``), then each RCPT and DATA, each with its reply."""
        code, reply = conn.getreply()
        if code != 250:
            raise self._refused(code, reply, "MAIL FROM")
        for recipient in recipients:
            code, reply = conn.docmd("rcpt", f"TO:<{recipient}>")
            if code not in (250, 251):
                raise self._refused(code, reply, f"RCPT TO <{recipient}>")
        code, reply = conn.docmd("data")
        if code != 354:
            raise self._refused(code, reply, "DATA")

    def _abandon(self) -> None:
        if self._replies_due is not None:  # the server's replies are on their way: only closing ends that
            self._drop()
        else:
            self._reset()

    @contextlib.contextmanager
    def _talking(self) -> Iterator[None]:
        """smtplib's failures as delivery errors; a connection in doubt is dropped, made again next time."""
        try:
            yield
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop()
            raise TransientError(f"connection to {self.where} lost: {exc or type(exc).__name__}") from None
        except smtplib.SMTPException as exc:  # a reply smtplib could not read (e.g. a line too long)
            self._drop()
            raise TransientError(f"SMTP server {self.where}: {exc or type(exc).__name__}") from None

    def _refused(self, code: int, reply: bytes | str, stage: str) -> TransientError | PermanentError:
        error = classify(code, reply, stage)
        if code == 421:  # the server is closing the connection
            self._drop()
        else:
            self._reset()
        return error

    def _reset(self) -> None:
        """The transaction begun is given up, so the next email starts clean on this connection.

        RSET, or, when the server is waiting for content (a pipelined DATA said
        354), closing: nothing else ends a DATA without sending. A connection
        that cannot even reset is dropped, made again next time.
        """
        if self._awaiting_content:
            self._drop()
        elif self._conn is not None:
            try:
                self._conn.rset()
            except (OSError, smtplib.SMTPException):
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._awaiting_content = False
        self._replies_due = None
        _quietly_close(conn)


def _check_ascii(msg: Email, sender: str, recipients: tuple[str, ...]) -> None:
    """An address SMTP cannot carry is this message's permanent failure.

    Checked before anything is said to the server, so the connection stays
    usable for the rest of the batch.
    """
    for role, address in (("sender", sender), *(("recipient", to) for to in recipients)):
        if not address.isascii():
            raise PermanentError(
                f"{role} address {address!r} is not ASCII; SMTP cannot deliver it as written"
            )
        if not is_address(address):
            raise PermanentError(f"{role} address {address!r} cannot be written in an SMTP envelope")
    if not msg.data.isascii():  # a non-ASCII address in a header (Reply-To)
        raise PermanentError("the email cannot be encoded: a header holds a non-ASCII address")


def _content(data: bytes) -> bytes:
    """The email as sent after DATA: leading dots doubled, then the final dot (as ``smtplib.data``)."""
    quoted = LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
    return quoted + (b"" if quoted.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def _quietly_close(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
