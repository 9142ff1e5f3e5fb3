# One command to run the server, one to run the tests; both install what they need.
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 5000
BIN    := $(VENV)/bin

.PHONY: install run serve test migrate clean bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Development server on the embedded PostgreSQL (or DATABASE_URL from .env).
run: install
	$(BIN)/flask --app backend run --port $(PORT)

# Production-style: gunicorn, several worker processes over one database.
serve: install
	$(BIN)/gunicorn --config gunicorn.conf.py 'backend:create_app()'

migrate: install
	$(BIN)/flask --app backend db-migrate

# The whole suite, against the embedded PostgreSQL (or TEST_DATABASE_URL).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks against the SQL floor and a peer server (bench/README.md); QUICK=1 for small sizes.
bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .data .pytest_cache
