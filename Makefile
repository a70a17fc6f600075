# Two commands do all the set-up: `make dev` serves the API locally, `make test` runs the suite.
# Python 3.13, as Lambda's python3.13 runtime: a python3.13 on PATH that runs, else pyenv's
# newest 3.13 (PYENV_ROOT, default ~/.pyenv). PYTHON=... names another.
FIND_PYTHON := for candidate in python3.13 $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null | sort -rV); do \
	"$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null && { echo "$$candidate"; break; }; done
PYTHON ?= $(shell $(FIND_PYTHON))
VENV := .venv
PORT ?= 8000
AWS_PORT ?= 8001
LAMBDA_PORT ?= 8002
STAMP := $(VENV)/.installed

.PHONY: dev dev-reset aws api lint test test-fast browser bench venv constraints clean package smoke

# A venv of another Python (an older checkout's) is made again.
ifneq ($(shell $(VENV)/bin/python -c 'import sys; print(sys.version_info[:2] == (3, 13))' 2>/dev/null),True)
.PHONY: $(STAMP)
endif

$(STAMP): requirements.txt requirements-runner.txt requirements-dev.txt constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.13 is needed (Lambda's python3.13 runtime), and there is none:" \
	  "no python3.13 on PATH runs, and pyenv has no 3.13 under $${PYENV_ROOT:-$$HOME/.pyenv}/versions." \
	  "Install it (e.g. pyenv install 3.13) or name one: make PYTHON=/path/to/python3.13 ..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || { echo "$(PYTHON) is not Python 3.13" >&2; exit 1; }
	$(VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || rm -rf $(VENV)
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
# test-fast's: one more than this machine's 2 cores, since its runs leave them idle part of
# the time (a kernel's start waits on the kernel, cancels and timeouts wait on the clock).
FAST_WORKERS ?= 3
PYTEST := $(VENV)/bin/python -m pytest --dist loadfile
# The slow tiers (pyproject.toml's markers): the Lambda simulation, schemathesis, local stacks.
SLOW_TIERS := sim or fuzz or stack

# The whole suite, after the lint: what CI runs (.ci/run).
test: lint browser
	$(PYTEST) -n $(TEST_WORKERS)

# Everything but the slow tiers, while editing.
test-fast: $(STAMP) browser
	$(PYTEST) -n $(FAST_WORKERS) -m "not ($(SLOW_TIERS))"

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
	  $(VENV)/bin/pip freeze --exclude pip --exclude notebooks-client; } > constraints.txt

clean:
	rm -rf $(VENV)
