"""What the tests, the benchmarks and the scripts share: free ports and readiness,
scratch databases, tokens and thread ids, and the production server command.

Not part of the shipped app (pyproject packages only backend and llm); imported
from the repository root, as tests/ and bench/ are.
"""
