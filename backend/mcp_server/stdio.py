"""The stdio transport: JSON-RPC on stdin/stdout, acting as one user for the whole connection.

`flask --app backend mcp --user-id U [--business-id B]` runs this; a desktop MCP
client launches it as a subprocess. Logs go to stderr (backend/log_config.py):
stdout carries the protocol only.
"""

from __future__ import annotations

import anyio
from flask import Flask
from mcp.server.stdio import stdio_server

from backend.auth.service import AuthUser
from backend.auth.tokens import is_identity_part
from backend.mcp_server import services_for
from backend.mcp_server.server import acting_user, build_server


class InvalidIdentity(ValueError):
    """--user-id or --business-id is not a valid identity."""


def stdio_user(user_id: str, business_id: str | None, default_business_id: str) -> AuthUser:
    """The user a stdio server acts as; the same identity rules as a token's (InvalidIdentity otherwise)."""
    business_id = business_id or default_business_id
    if not is_identity_part(user_id):
        raise InvalidIdentity("--user-id must be 1-128 of A-Z a-z 0-9 . : @ | + -")
    if not is_identity_part(business_id):
        raise InvalidIdentity("--business-id must be 1-128 of A-Z a-z 0-9 . : @ | + -")
    return AuthUser(id=user_id, business_id=business_id, email=None, via="token")


def serve_stdio(app: Flask, *, user_id: str, business_id: str | None) -> None:
    services = services_for(app)
    user = stdio_user(user_id, business_id, services.default_business_id)
    server = build_server(services.tools)

    async def main() -> None:
        acting_user.set(user)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)
