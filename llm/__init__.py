"""Flask-free model client setup and session naming."""
