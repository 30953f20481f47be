# VokaFlow: `make run` brings the platform up on this machine, `make test` runs every test.
# Both create the virtualenv, install the pinned requirements and find or start Redis.

PYTHON ?= python3
# A pyenv shim that is not activated (python3.12 with another global) is found by path.
PY := $(shell for p in $(PYTHON) $(HOME)/.pyenv/versions/$(patsubst python%,%,$(PYTHON))*/bin/$(PYTHON); do \
	"$$p" -c 'import sys' >/dev/null 2>&1 && { command -v "$$p"; exit 0; }; done)
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(PYTHON))
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test bench lint worker clean check-python

check-python:
	@test -n "$(PY)" || { echo "Python '$(PYTHON)' was not found; install Python 3.11+ or pass PYTHON=python3.12"; exit 1; }

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml | check-python
	@echo "[vokaflow] creating $(VENV) with $(PY) and installing requirements-dev.txt"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	@$(BIN)/python -m pip install -q -r requirements-dev.txt 2>&1 | { grep -v '^WARNING: Location' || true; }; \
		$(BIN)/python -c 'import django, celery, rest_framework, pytest' || { echo "[vokaflow] installing requirements failed"; exit 1; }
	@$(BIN)/python -m pip install -q --no-deps -e . 2>&1 | { grep -v '^WARNING: Location' || true; }
	@touch $@

.env:
	@echo "[vokaflow] writing .env with a new random SECRET_KEY (edit it to configure VokaFlow)"
	@printf 'SECRET_KEY=%s\nDEBUG=0\n' "$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" > .env

run: $(BIN)/.installed .env
	@$(BIN)/python scripts/services.py run -- $(BIN)/python manage.py launch --setup

test: $(BIN)/.installed
	@$(BIN)/python scripts/services.py test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/.installed
	@$(BIN)/python scripts/services.py run -- $(BIN)/python bench/throughput.py

# Style (ruff), types (mypy over vokaflow/, tasks/, workers/) and the import contracts (one-way layers).
lint: $(BIN)/.installed
	@$(BIN)/ruff check .
	@$(BIN)/mypy
	@$(BIN)/lint-imports --no-cache

clean:
	rm -rf .venv .venv-* .run staticfiles test-db.sqlite3
