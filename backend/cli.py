"""`flask` commands for operators: apply migrations, create users."""

from __future__ import annotations

import click
from flask import Flask

from backend.app_state import app_state
from backend.errors import ApiError


def register_cli(app: Flask) -> None:
    @app.cli.command("db-migrate")
    def db_migrate() -> None:
        """Create LangGraph's tables and apply pending sql/ migrations."""
        applied = app_state().db.prepare_schema()
        click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")

    @app.cli.command("sweep-orphans")
    @click.option("--min-age-seconds", type=float, default=None,
                  help="Only threads quiet this long (default: ORPHAN_MIN_AGE_SECONDS)")
    def sweep_orphans(min_age_seconds: float | None) -> None:
        """Delete LangGraph threads whose session no longer exists; report what went."""
        report = app_state().maintenance.sweep_orphans(min_age_seconds)
        rows = ", ".join(f"{table}: {n}" for table, n in report["rows"].items())
        click.echo(f"removed {report['threads']} orphaned thread(s) ({rows})")

    @app.cli.command("purge-recovery-points")
    def purge_recovery_points() -> None:
        """Delete recovery points (undo of deletes) whose retention has run out."""
        purged = app_state().sessions.purge_expired_recovery_points()
        click.echo(f"purged {purged} expired recovery point(s)")

    @app.cli.command("create-user")
    @click.option("--email", required=True)
    @click.option("--business-id", required=True)
    @click.password_option()
    def create_user(email: str, business_id: str, password: str) -> None:
        """Create a user who signs in with email and password."""
        try:
            user = app_state().auth.create_user(email, password, business_id)
        except ApiError as exc:
            raise click.ClickException(f"{exc.message}: {exc.fields or ''}".rstrip(": ")) from None
        click.echo(f"created user {user.id} ({user.email}) in business {user.business_id}")
