"""Search inside conversations: full text over every message a user has, every branch, in
PostgreSQL, written with the messages themselves (sql/027); snippets as plain text with offsets."""
