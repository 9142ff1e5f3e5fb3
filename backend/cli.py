"""`flask` commands for operators: apply migrations, create users, export feedback."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click
from flask import Flask

from backend.services import Services
from backend.errors import ApiError


def register_cli(app: Flask, services: Services) -> None:
    @app.cli.command("db-migrate")
    def db_migrate() -> None:
        """Create LangGraph's tables, apply pending sql/ migrations, and set SEARCH_LANGUAGE for search."""
        applied = services.db.prepare_schema()
        services.search.configure()
        click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")

    @app.cli.command("sweep-orphans")
    @click.option("--min-age-seconds", type=float, default=None,
                  help="Only threads quiet this long (default: ORPHAN_MIN_AGE_SECONDS)")
    def sweep_orphans(min_age_seconds: float | None) -> None:
        """Delete LangGraph threads whose session no longer exists; report what went."""
        report = services.maintenance.sweep_orphans(min_age_seconds)
        rows = ", ".join(f"{table}: {n}" for table, n in report["rows"].items())
        click.echo(f"removed {report['threads']} orphaned thread(s) ({rows})")

    @app.cli.command("purge-recovery-points")
    def purge_recovery_points() -> None:
        """Delete recovery points (undo of deletes) whose retention has run out."""
        purged = services.sessions.purge_expired_recovery_points()
        click.echo(f"purged {purged} expired recovery point(s)")

    @app.cli.command("purge-sessions")
    @click.option("--inactive-days", type=click.IntRange(min=1), required=True,
                  help="Delete sessions with no activity for this many days")
    @click.option("--archived-only", is_flag=True, help="Only archived sessions")
    @click.option("--user-id", default=None, help="Only this user's sessions")
    @click.option("--dry-run", is_flag=True, help="Count and list, change nothing")
    @click.option("--backup", is_flag=True, help="Keep a recovery point for each (BACKUP_RETENTION_SECONDS)")
    def purge_sessions(inactive_days: int, archived_only: bool, user_id: str | None, dry_run: bool, backup: bool) -> None:
        """Retention: delete inactive sessions, each exactly as DELETE does, in batches."""
        cleanup = services.cleanup
        interactive = sys.stdout.isatty()
        if interactive:
            total = cleanup.purge_inactive(
                inactive_days=inactive_days, archived_only=archived_only, user_id=user_id, dry_run=True,
            ).sessions
            with click.progressbar(length=total, label="sessions", show_pos=True) as bar:
                report = cleanup.purge_inactive(
                    inactive_days=inactive_days, archived_only=archived_only, user_id=user_id, dry_run=dry_run,
                    backup=backup, on_progress=bar.update,
                )
        else:
            def progress(n: int) -> None:
                click.echo(f"... {n} more looked at")

            report = cleanup.purge_inactive(
                inactive_days=inactive_days, archived_only=archived_only, user_id=user_id, dry_run=dry_run,
                backup=backup, on_progress=progress,
            )
        if dry_run:
            for item in report.listed:
                click.echo(f"would delete {item['user_id']} {item['session_id']} (last activity "
                           f"{item['last_activity_at'].isoformat()})")
            click.echo(f"dry run: {report.sessions} session(s) would be deleted; nothing changed")
            return
        rows = ", ".join(f"{table}: {n}" for table, n in report.rows.items())
        click.echo(f"deleted {report.sessions} session(s) ({rows}); skipped {report.busy} busy; "
                   f"{report.seconds:.1f} s")

    @app.cli.command("mcp")
    @click.option("--user-id", required=True, help="The user whose sessions the tools act on")
    @click.option("--business-id", default=None, help="That user's business (default: DEFAULT_BUSINESS_ID)")
    def mcp_stdio(user_id: str, business_id: str | None) -> None:
        """Serve the session tools over MCP on stdin/stdout, as one user (for desktop MCP clients)."""
        from flask import current_app

        from backend.mcp_server.stdio import InvalidIdentity, serve_stdio

        try:
            serve_stdio(current_app, user_id=user_id, business_id=business_id)
        except InvalidIdentity as exc:
            raise click.UsageError(str(exc)) from None

    @app.cli.command("create-user")
    @click.option("--email", required=True)
    @click.option("--business-id", required=True)
    @click.password_option(help="Asked for (twice, hidden) when not given")
    def create_user(email: str, business_id: str, password: str) -> None:
        """Create a user who signs in with email and password; prints the user id (`mcp --user-id`)."""
        try:
            user = services.auth.create_user(email, password, business_id)
        except ApiError as exc:
            raise click.ClickException(f"{exc.message}: {exc.fields or ''}".rstrip(": ")) from None
        click.echo(f"created user {user.id} ({user.email}) in business {user.business_id}")

    @app.cli.command("set-quota")
    @click.option("--user-id", default=None, help="The user the quota is for")
    @click.option("--business-id", default=None, help="Or the business (every user of it together)")
    @click.option("--period", type=click.Choice(["day", "month"]), required=True, help="UTC day or calendar month")
    @click.option("--max-tokens", type=click.IntRange(min=0), default=None, help="Input + output tokens")
    @click.option("--max-cost", type=click.FloatRange(min=0), default=None,
                  help="In the prices file's currency (MODEL_PRICES_FILE)")
    def set_quota(user_id: str | None, business_id: str | None, period: str, max_tokens: int | None,
                  max_cost: float | None) -> None:
        """Set a usage quota; with neither limit, remove it (DEFAULT_USER_QUOTA_* apply again to a user)."""
        try:
            row = services.usage.set_quota(user_id=user_id, business_id=business_id, period=period,
                                           max_tokens=max_tokens, max_cost=max_cost)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        who = f"user {user_id}" if user_id is not None else f"business {business_id}"
        if row is None:
            click.echo(f"removed the {period} quota of {who}")
        else:
            click.echo(f"{who}: per {period}, at most {row['max_tokens'] if row['max_tokens'] is not None else 'any'} "
                       f"tokens and {row['max_cost_micros'] / 1e6 if row['max_cost_micros'] is not None else 'any'} cost")

    @app.cli.command("export-feedback")
    @click.option("--since", type=click.DateTime(_TIME_FORMATS), required=True,
                  help="Ratings given at or after this UTC date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)")
    @click.option("--until", type=click.DateTime(_TIME_FORMATS), default=None,
                  help="Only ratings given before this UTC date or time (exclusive)")
    @click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
                  help="Write to this file (default: stdout)")
    def export_feedback(since: datetime, until: datetime | None, out: str | None) -> None:
        """Ratings of replies as JSON lines, oldest first, each with the conversation up to the rated
        reply (the path it was given on), for evaluation."""
        ratings = services.messages.ratings_since(_utc(since), _utc(until) if until else None)
        lines = "".join(json.dumps(rating, ensure_ascii=False) + "\n" for rating in ratings)
        if out is None:
            click.echo(lines, nl=False)
            return
        with open(out, "w", encoding="utf-8") as f:
            f.write(lines)
        click.echo(f"wrote {len(ratings)} rating(s) to {out}", err=True)

    @app.cli.command("reindex-search")
    @click.option("--all", "everything", is_flag=True,
                  help="Every message again (after SEARCH_LANGUAGE changed), not only those without an index")
    @click.option("--after", type=click.IntRange(min=0), default=0,
                  help="Resume after this session row id (the last one a run printed)")
    def reindex_search(everything: bool, after: int) -> None:
        """Index for search the messages of sessions from before it (their rows, their words): a
        session at a time, each its own short transaction, so writes go on; resumable with --after."""
        def progress(upto: int, total: int) -> None:
            click.echo(f"indexed sessions up to row {upto} (of {total} after row {after})", err=True)

        done = services.search.reindex(index_thread=services.messages.index_thread, everything=everything,
                                       after=after, progress=progress)
        click.echo(f"indexed {done} session(s)")

    @app.cli.command("list-users")
    def list_users() -> None:
        """The users who sign in with a password: id (what `mcp --user-id` takes), business, email."""
        with services.db.pool.connection() as conn:
            rows = conn.execute(LIST_USERS_SQL).fetchall()
        for row in rows:
            click.echo(f"{row['id']}  {row['business_id']}  {row['email']}")
        if not rows:
            click.echo("no users yet: flask --app backend create-user --email ... --business-id ...")


_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def _utc(value: datetime) -> datetime:
    """A time given on the command line, read as UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


LIST_USERS_SQL = "select id, business_id, email from public.app_users order by created_at, email"

# Options of the `flask` command itself, and whether each takes a value.
_FLASK_OPTIONS = {"--app": True, "-A": True, "--env-file": True, "-e": True, "--debug": False, "--no-debug": False}


def asking_only_for_help() -> bool:
    """Whether this process is `flask ... --help` (or `flask` alone): the command list and each
    command's help need the app's commands, not its database, so nothing should start one."""
    from flask.cli import FlaskGroup

    context = click.get_current_context(silent=True)
    if context is None or not isinstance(context.find_root().command, FlaskGroup):
        return False
    args = sys.argv[1:]
    if "--help" in args or "-h" in args:
        return True
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name not in _FLASK_OPTIONS:
            return False  # a command: it runs, with its database
        i += 2 if _FLASK_OPTIONS[name] and "=" not in args[i] else 1
    return True


def help_only_app(app: Flask) -> Flask:
    """`app` with the operator commands registered for their help alone (no services: none runs)."""
    register_cli(app, None)  # type: ignore[arg-type]
    return app
