# Two commands do all the set-up: `make dev` serves the API locally, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PORT ?= 8000
AWS_PORT ?= 8001
LAMBDA_PORT ?= 8002
STAMP := $(VENV)/.installed

.PHONY: dev dev-reset aws api lint test test-fast browser bench venv constraints clean package smoke

$(STAMP): requirements.txt requirements-runner.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

# The local stack: embedded AWS on $(AWS_PORT), local Lambda on $(LAMBDA_PORT), API on $(PORT)
# (0: any free port); state in $$NOTEBOOKS_LOCAL_STATE (default .local-state).
LOCALSTACK := PORT=$(PORT) NOTEBOOKS_AWS_PORT=$(AWS_PORT) NOTEBOOKS_LAMBDA_PORT=$(LAMBDA_PORT) \
	$(VENV)/bin/python -m devstack.stack

dev: $(STAMP)
	$(LOCALSTACK)

dev-reset: $(STAMP)
	$(LOCALSTACK) --reset

# The embedded AWS and the local Lambda only, for `make api`.
aws: $(STAMP)
	$(LOCALSTACK) --no-api

# `chalice local --stage local` with the local stack attached (starting one if `make aws` is not running).
api: $(STAMP)
	$(VENV)/bin/python -m devstack.chalice_local local --stage local --port $(PORT)

# Ruff (lint and format), mypy on what ships, and the import contracts (pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy chalicelib
	$(VENV)/bin/lint-imports

# The suite on $(TEST_WORKERS) processes (pytest-xdist), each test file on one of them, so a
# file's module-scoped fixtures (a local stack, a built package) start once.
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile
# The slow tiers (pyproject.toml's markers): the Lambda simulation, schemathesis, local stacks.
SLOW_TIERS := sim or fuzz or stack

# The whole suite, after the lint: what CI runs (.ci/run).
test: lint browser
	$(PYTEST)

# Everything but the slow tiers, while editing.
test-fast: $(STAMP) browser
	$(PYTEST) -m "not ($(SLOW_TIERS))"

# Headless Chromium for the dashboard's browser test (tests/test_dashboard.py): Debian's, as
# Playwright's own builds cannot be downloaded everywhere. Installed when missing and we are root.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  else \
	    echo "warning: /usr/bin/chromium is missing: the dashboard's test fails without it (apt-get install chromium)"; \
	  fi; \
	fi

bench: $(STAMP)
	$(VENV)/bin/python bench/bench.py

# The stack's template and its Lambda package under build/ (no AWS account needed).
package: $(STAMP)
	$(VENV)/bin/python -m deploy.package

# A deployed API through the seed's samples and one run: make smoke URL=https://... [SMOKE_USER=admin]
smoke: $(STAMP)
	@test -n "$(URL)" || { echo "usage: make smoke URL=<the stack's EndpointURL> [SMOKE_USER=admin]"; exit 2; }
	$(VENV)/bin/python -m deploy.smoke "$(URL)"

constraints: $(STAMP)
	{ echo "# Exact versions of everything installed, transitive dependencies included (pip freeze)."; \
	  echo "# Regenerate after changing a requirements file: make constraints"; \
	  $(VENV)/bin/pip freeze --exclude pip; } > constraints.txt

clean:
	rm -rf $(VENV)
