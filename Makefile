# Airlock: `make demo` runs it, `make test` checks it. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.airlock-installed

.PHONY: setup test lint format demo bench clean

setup: $(STAMP)

# Reinstalls only when the pins change; a no-op otherwise.
$(STAMP): requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	@test -x /usr/sbin/sshd || { echo "[airlock] installing openssh-server"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; }
	PYTHONPATH=plugins:tools $(BIN)/python -m airlock_dev.demo

bench: $(STAMP)
	@for script in bench/*.py; do [ -e "$$script" ] || continue; echo "== $$script"; \
		PYTHONPATH=plugins:tools $(BIN)/python $$script || exit 1; done

# Drops the demo's three PostgreSQL databases (refused while the demo runs), then removes local state.
clean:
	@if [ -x $(BIN)/python ] && [ -d .demo ]; then PYTHONPATH=plugins:tools $(BIN)/python -m airlock_dev.demo clean; fi
	rm -rf .demo .cache .pytest_cache .ruff_cache
	@echo "[airlock] removed .demo/ (demo hosts, backups, logs, Airflow home), .cache/ (the tests' metadata template), .pytest_cache/ and .ruff_cache/"
