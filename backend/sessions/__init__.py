"""Chat sessions: create, list, get, rename/archive, delete."""
