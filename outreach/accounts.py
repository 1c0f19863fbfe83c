"""Who may use the console and the API: users, logins, API tokens, the lockout.

The console shows health information, so every way in is a person with a
password (hashed with argon2, memory-hard) or a named token (stored as a
SHA-256: a token is 256 random bits, so a fast hash is enough). A login is a
row in ``web_sessions`` that ends on logout or after a spell of idleness, so
a stolen cookie stops working when the session does. Every login, failure,
lock and change of an account is written to the ``audit`` table through
``records``, which also gives the lockout its count of failures.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, select, update

from outreach import store
from outreach.errors import NotFound, OutreachError
from outreach.models import USER_ROLES, api_tokens, secrets_table, users, web_sessions
from outreach.models import audit as audit_table
from outreach.records import audit, parse_email, write_audit

MIN_PASSWORD = 10  # characters
LOCK_AFTER = 5  # failed logins for one account ...
LOCK_WINDOW = timedelta(minutes=15)  # ... within this long lock it for as long again
FAILED, LOCKED = "login failed", "login locked"
TOKEN_PREFIX = "otk_"
SEEN_EVERY = timedelta(seconds=30)  # a session's last-seen time is written at most this often

_hasher = PasswordHasher()
# Checked when the email is unknown, so a wrong email takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone's")


class AccountError(OutreachError):
    """A user or token that cannot be made or changed as asked (one line, for the person)."""


class LoginRefused(OutreachError):
    """Wrong email or password, a disabled account (deliberately not said which)."""


class Locked(OutreachError):
    """Too many failed logins: the account is locked until ``until``."""

    def __init__(self, until: datetime):
        super().__init__(f"too many failed logins: this account is locked until {until:%H:%M} UTC")
        self.until = until


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user (by email) or an API token (by name), and their role."""

    name: str
    role: str
    user_id: int | None = None  # None for a token

    def may(self, role: str) -> bool:
        """True when this role includes ``role`` (admin includes staff, staff includes viewer)."""
        return USER_ROLES.index(self.role) >= USER_ROLES.index(role)


@dataclass(frozen=True)
class Login:
    """A session just started: the cookie's key (never stored) and who logged in.

    The session's CSRF token is not here: each request reads it with the session (``Session``).
    """

    key: str
    principal: Principal


@dataclass(frozen=True)
class Session:
    """A live session found from its cookie."""

    id: int
    csrf: str
    principal: Principal


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _role(role: str) -> str:
    if role not in USER_ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(USER_ROLES)}")
    return role


def _password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters, please")
    return _hasher.hash(password)


# --- users ---------------------------------------------------------------------------


def add_user(
    engine: Engine, email: str, role: str, password: str, now: datetime, actor: str | None = None
) -> int:
    """A new console user; ``AccountError`` if the email is taken or the password too short."""
    email, role, hashed = parse_email(email), _role(role), _password(password)
    with store.write(engine) as conn:
        if conn.execute(select(users.c.id).where(users.c.email == email)).first():
            raise AccountError(f"{email} is already a user (outreach user password {email} to change it)")
        user_id: int = conn.execute(
            users.insert()
            .values(email=email, role=role, password_hash=hashed, created_at=now)
            .returning(users.c.id)
        ).scalar_one()
        audit(conn, now, actor, "user add", f"user {email}", f"role {role}")
    return user_id


def _user_id(conn: Connection, email: str) -> int:
    found: int | None = conn.execute(
        select(users.c.id).where(users.c.email == email.strip().lower())
    ).scalar()
    if found is None:
        raise NotFound(f"no user with email {email!r} (outreach user list)")
    return found


def set_password(engine: Engine, email: str, password: str, now: datetime, actor: str | None = None) -> None:
    """A new password; the user's sessions end, so an old login cannot carry on."""
    hashed = _password(password)
    with store.write(engine) as conn:
        user_id = _user_id(conn, email)
        conn.execute(update(users).where(users.c.id == user_id).values(password_hash=hashed))
        _end_sessions(conn, user_id, now)
        audit(conn, now, actor, "user password", f"user {email.strip().lower()}")


def disable_user(engine: Engine, email: str, now: datetime, actor: str | None = None) -> None:
    """No more logins for this user, and their sessions end now."""
    with store.write(engine) as conn:
        user_id = _user_id(conn, email)
        conn.execute(update(users).where(users.c.id == user_id).values(disabled_at=now))
        _end_sessions(conn, user_id, now)
        audit(conn, now, actor, "user disable", f"user {email.strip().lower()}")


def _end_sessions(conn: Connection, user_id: int, now: datetime) -> None:
    conn.execute(
        update(web_sessions)
        .where(web_sessions.c.user_id == user_id, web_sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )


def list_users(conn: Connection) -> list[dict]:
    rows = conn.execute(
        select(users.c.email, users.c.role, users.c.created_at, users.c.disabled_at).order_by(users.c.email)
    )
    return [dict(row._mapping) for row in rows]


def any_user(conn: Connection) -> bool:
    """True once someone can log in (``outreach web`` will not start before)."""
    return conn.execute(select(users.c.id).where(users.c.disabled_at.is_(None)).limit(1)).first() is not None


# --- logging in and out ---------------------------------------------------------------


def locked_until(conn: Connection, email: str, now: datetime) -> datetime | None:
    """When the lock on this account ends, if five failures within 15 minutes put one on it."""
    times = list(
        conn.execute(
            select(audit_table.c.at)
            .where(
                audit_table.c.actor == email,
                audit_table.c.action == FAILED,
                audit_table.c.at > now - 2 * LOCK_WINDOW,
            )
            .order_by(audit_table.c.at)
        ).scalars()
    )
    until = None
    for i in range(LOCK_AFTER - 1, len(times)):
        if times[i] - times[i - LOCK_AFTER + 1] <= LOCK_WINDOW:
            until = times[i] + LOCK_WINDOW
    return until if until is not None and until > now else None


def log_in(engine: Engine, email: str, password: str, now: datetime) -> Login:
    """Check the password and start a session; ``Locked`` or ``LoginRefused`` otherwise (audited).

    The refusals are raised after the transaction commits, so their audit lines stay.
    """
    email = email.strip().lower()[:254]
    subject = f"user {email}"
    with store.write(engine) as conn:
        until = locked_until(conn, email, now)
        if until is not None:
            write_audit(conn, now, email, [(LOCKED, subject, "refused while locked")])
        else:
            user = conn.execute(select(users).where(users.c.email == email)).first()
            good = _password_matches(user.password_hash if user else None, password)
            if user is None or not good or user.disabled_at is not None:
                write_audit(conn, now, email, [(FAILED, subject, "")])
                if locked_until(conn, email, now) is not None:
                    write_audit(conn, now, email, [(LOCKED, subject, f"{LOCK_AFTER} failed logins")])
                user = None
            else:
                key, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
                conn.execute(
                    web_sessions.insert().values(
                        key_hash=digest(key), user_id=user.id, csrf=csrf, created_at=now, seen_at=now
                    )
                )
                write_audit(conn, now, email, [("login", subject, "")])
    if until is not None:
        raise Locked(until)
    if user is None:
        raise LoginRefused("wrong email or password")
    return Login(key, Principal(email, user.role, user.id))


def _password_matches(hashed: str | None, password: str) -> bool:
    try:
        return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


def session(engine: Engine, key: str, now: datetime, idle: timedelta) -> Session | None:
    """The live session for a cookie's key, its last-seen time moved on; None if ended or idle too long."""
    with store.read(engine) as conn:
        row = conn.execute(
            select(web_sessions, users.c.email, users.c.role, users.c.disabled_at)
            .join(users, users.c.id == web_sessions.c.user_id)
            .where(web_sessions.c.key_hash == digest(key))
        ).first()
    if row is None or row.ended_at is not None or row.disabled_at is not None:
        return None
    if now - row.seen_at > idle:
        with store.write(engine) as conn:
            conn.execute(update(web_sessions).where(web_sessions.c.id == row.id).values(ended_at=now))
            write_audit(conn, now, row.email, [("session expired", f"user {row.email}", "idle")])
        return None
    if now - row.seen_at > SEEN_EVERY:
        with store.write(engine) as conn:
            conn.execute(update(web_sessions).where(web_sessions.c.id == row.id).values(seen_at=now))
    return Session(row.id, row.csrf, Principal(row.email, row.role, row.user_id))


def log_out(engine: Engine, session_id: int, who: str, now: datetime) -> None:
    """End the session on the server: the cookie, if kept, no longer works."""
    with store.write(engine) as conn:
        conn.execute(update(web_sessions).where(web_sessions.c.id == session_id).values(ended_at=now))
        write_audit(conn, now, who, [("logout", f"user {who}", "")])


def csrf_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# --- API tokens --------------------------------------------------------------------------


def create_token(engine: Engine, name: str, role: str, now: datetime, actor: str | None = None) -> str:
    """A new token, returned once (only its hash is kept); API tokens are staff or viewer."""
    name = name.strip()
    if not name or len(name) > 100:
        raise AccountError("token name: 1 to 100 characters, please")
    if role not in ("staff", "viewer"):
        raise AccountError(f"role {role!r}: an API token is staff or viewer")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.write(engine) as conn:
        if conn.execute(select(api_tokens.c.id).where(api_tokens.c.name == name)).first():
            raise AccountError(f"a token named {name!r} exists (revoke it first, or pick another name)")
        conn.execute(
            api_tokens.insert().values(name=name, token_hash=digest(token), role=role, created_at=now)
        )
        audit(conn, now, actor, "token create", f"token {name}", f"role {role}")
    return token


def revoke_token(engine: Engine, name: str, now: datetime, actor: str | None = None) -> None:
    with store.write(engine) as conn:
        done = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if not done.rowcount:
            raise NotFound(f"no live token named {name!r} (outreach token list)")
        audit(conn, now, actor, "token revoke", f"token {name}")


def list_tokens(conn: Connection) -> list[dict]:
    rows = conn.execute(
        select(
            api_tokens.c.name,
            api_tokens.c.role,
            api_tokens.c.created_at,
            api_tokens.c.last_used_at,
            api_tokens.c.revoked_at,
        ).order_by(api_tokens.c.name)
    )
    return [dict(row._mapping) for row in rows]


def token_principal(engine: Engine, token: str, now: datetime) -> Principal | None:
    """Who a bearer token is, or None for an unknown or revoked one."""
    with store.read(engine) as conn:
        row = conn.execute(
            select(api_tokens).where(
                api_tokens.c.token_hash == digest(token), api_tokens.c.revoked_at.is_(None)
            )
        ).first()
    if row is None:
        return None
    if row.last_used_at is None or now - row.last_used_at > SEEN_EVERY:
        with store.write(engine) as conn:
            conn.execute(update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now))
    return Principal(f"token:{row.name}", row.role)


# --- the console's signing key ----------------------------------------------------------------


def stored_secret(engine: Engine, name: str, now: datetime) -> str:
    """A key made on first use and kept in the database (so every console process shares it)."""
    with store.write(engine) as conn:
        value: str | None = conn.execute(
            select(secrets_table.c.value).where(secrets_table.c.name == name)
        ).scalar()
        if value is None:
            value = secrets.token_urlsafe(48)
            conn.execute(secrets_table.insert().values(name=name, value=value, created_at=now))
    return value
