"""The console under test: a Flask test client that logs in and carries the CSRF token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from outreach import accounts

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    """The console's clock, moved on by a test (idle expiry, lockout)."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Browser:
    """A logged-in (or not) user: ``get`` as is, ``post`` with the page's CSRF token added."""

    client: FlaskClient
    csrf: str = ""

    def get(self, url: str, **kwargs):
        response = self.client.get(url, **kwargs)
        found = CSRF.search(response.get_data(as_text=True)) if response.mimetype == "text/html" else None
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, url: str, data: dict | None = None, **kwargs):
        form = {"csrf": self.csrf, **(data or {})}
        return self.client.post(url, data=form, **kwargs)


@dataclass
class Console:
    app: Flask
    engine: Engine
    clock: Clock

    def user(self, role: str, email: str | None = None) -> str:
        email = email or f"{role}@practice.example"
        accounts.add_user(self.engine, email, role, PASSWORD, self.clock(), actor="test")
        return email

    def anonymous(self) -> Browser:
        return Browser(self.app.test_client())

    def login(self, role: str = "staff", email: str | None = None) -> Browser:
        """A new user of ``role``, logged in through the login form."""
        email = self.user(role, email)
        browser = self.anonymous()
        browser.get("/login")
        response = browser.post("/login", {"email": email, "password": PASSWORD})
        assert response.status_code == 302, response.get_data(as_text=True)
        browser.get("/status")
        return browser

    def token(self, role: str = "staff", name: str | None = None) -> dict[str, str]:
        """Headers carrying a new API token of ``role``."""
        value = accounts.create_token(self.engine, name or f"{role}-system", role, self.clock(), actor="test")
        return {"Authorization": f"Bearer {value}"}
