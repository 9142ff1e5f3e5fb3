# One command to run the server, one to run the tests; both install what they need.
PYTHON ?= python3
VENV   ?= .venv
PORT   ?= 5000
BIN    := $(VENV)/bin

.PHONY: install run serve test migrate clean bench web web-deps web-types

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

# The whole suite, against the embedded PostgreSQL (or TEST_DATABASE_URL). The web app's checks
# (tsc, type drift, the browser tests in tests/test_web.py) run when npm is here to build it and
# Chromium to drive it; without them pytest reports those tests as skipped, and why.
test: install
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory web; \
	 else echo "npm not found: the web app is not built, so its tests will be skipped"; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The React reference app (web/): dependencies from package-lock.json, then a production build in web/dist.
WEB_SOURCES := $(shell find web/src web/index.html web/vite.config.ts web/tsconfig.json -type f 2>/dev/null)

web: web/dist/index.html

web-deps: web/node_modules/.package-lock.json

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	@touch $@

web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SOURCES)
	cd web && npm run --silent build

# Regenerate web/src/api/schema.d.ts from a running server (make run): API_URL=http://127.0.0.1:5000
web-types: web-deps
	cd web && API_URL=$${API_URL:-http://127.0.0.1:$(PORT)} npm run --silent gen:types

# Benchmarks against the SQL floor and a peer server (bench/README.md); QUICK=1 for small sizes.
bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .data .pytest_cache web/node_modules web/dist test-results
