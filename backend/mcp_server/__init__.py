"""An MCP (Model Context Protocol) server: the session tools for AI agents, as one user.

- `tools.py`: what each tool does, over the existing services (`SessionTools`).
- `server.py`: the SDK's low-level server with those tools and the `session://{session_id}` resource.
- `stdio.py`: `flask --app backend mcp --user-id U` (what a desktop client launches).
- `http.py`: streamable HTTP at `/mcp` on the app, authenticated by the API's bearer tokens.

Named `mcp_server`, not `mcp`, so that it never shadows the SDK's `mcp` package.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from backend.auth.service import AuthService
from backend.mcp_server.tools import SessionTools


@dataclass(frozen=True)
class McpServices:
    tools: SessionTools
    auth: AuthService  # bearer-token verification for the HTTP transport
    default_business_id: str
    session_write_rate_limit: str


def services_for(app: Flask) -> McpServices:
    """The one place this package reaches into the app's state."""
    from backend.services import services_of

    state = services_of(app)
    return McpServices(
        tools=SessionTools(sessions=state.sessions, usage=state.usage, search=state.search),
        auth=state.auth,
        default_business_id=state.settings.default_business_id,
        session_write_rate_limit=state.settings.session_write_rate_limit,
    )
