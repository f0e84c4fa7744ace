# Two commands a newcomer needs: `make run` and `make test`. Both create .venv and install
# the project when it is missing (a few minutes) and skip that when it is up to date.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU machines: torch 2.13.0 is a local CPU wheel; without the pin pip picks a multi-GB CUDA
# build. On a GPU machine that brings its own torch, use `make install CONSTRAINTS=`.
CONSTRAINTS ?= constraints.txt
PROFILE ?= quick

.PHONY: install run team test browser postgres bench down clean help
help:
	@echo "make run    start the local stack and run the whole pipeline ($(PROFILE) profile; PROFILE=churn or diamonds: a table)"
	@echo "make test   run the test suite (starts and stops its own servers)"
	@echo "make team   start the team stack (PostgreSQL, MLflow and Prefect with auth, S3 roles)"
	@echo "make down   stop the local stack (its data stays in .stack/)"
	@echo "make bench  measure trainer speed (benchmarks/train_speed.py)"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	@touch $@

install: $(STAMP)

# The local stack (S3, MLflow, Prefect servers) keeps running afterwards so that the UIs it
# prints can be browsed; `make down` stops it.
run: $(STAMP)
	$(BIN)/dmops up
	$(BIN)/dmops run --profile $(PROFILE)

down: $(STAMP)
	$(BIN)/dmops down

# tests/test_mlflow_ui.py drives Debian's Chromium: installed here when missing and make runs
# as root (as CI does); otherwise that test fails naming the command to run
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }; } \
	  || echo "note: /usr/bin/chromium is missing; for tests/test_mlflow_ui.py run: sudo apt-get install -y chromium"

# The team stack's own PostgreSQL server (infra/postgres.py) runs the machine's server binaries
# (Debian's postgresql: also the unprivileged OS user `postgres` it runs as under root)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; }; }; } \
	  || echo "note: no PostgreSQL server binaries; for the team stack run: sudo apt-get install -y postgresql"

# The team stack (infra/README.md, "The team stack"): the install plus the PostgreSQL server
# binaries, then `dmops up --team`; `dmops env --team --role pipeline` prints its clients' settings
team: $(STAMP) postgres
	$(BIN)/dmops up --team

test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf runs .pytest_cache
