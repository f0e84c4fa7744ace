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

.PHONY: install run test bench clean help
help:
	@echo "make run    train the $(PROFILE) profile on digits and write a sample grid"
	@echo "make test   run the test suite"
	@echo "make bench  measure trainer speed (benchmarks/train_speed.py)"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dmops train --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf runs .pytest_cache
