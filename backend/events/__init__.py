"""Live events: what changed in a user's sessions, streamed to every tab (GET /api/llm/events)."""
