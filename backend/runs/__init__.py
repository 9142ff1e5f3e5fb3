"""Runs: a reply that outlives its connection. List a session's runs, join one from any tab or
process (resuming from a cursor), stop one from anywhere."""
