"""What one app instance holds: the database and the services built on it."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from backend.auth.service import AuthService
from backend.config import Settings
from backend.db import Database
from backend.sessions.service import SessionService


@dataclass
class AppState:
    settings: Settings
    db: Database
    auth: AuthService
    sessions: SessionService


def app_state() -> AppState:
    return current_app.extensions["chat_backend"]
