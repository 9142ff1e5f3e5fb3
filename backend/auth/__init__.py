"""Authentication: cookie sessions (flask-login) and Supabase bearer tokens."""
