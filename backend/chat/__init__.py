"""Chat turns: the streaming endpoint, replies in progress, naming, and upkeep."""
