"""Messages: every message of a conversation, every branch of it. The active path a page at a
time with each message's siblings, a branch switch, and feedback on a reply. Edit and
regenerate are turns, so they live with the chat routes (backend/chat/routes.py)."""
