# terminhub — `make run` serves the demo, `make test` runs every test. Both set everything up first;
# the set-up includes the benchmark's libraries, because the suite tests the benchmark's code too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATABASE ?= sqlite:///var/terminhub.db
PORT ?= 8080
export TERMINHUB_DATABASE_URL ?= $(DATABASE)
export TERMINHUB_BASE_URL ?= http://127.0.0.1:$(PORT)

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

run: install
	mkdir -p var
	$(BIN)/terminhub db upgrade
	$(BIN)/terminhub demo load --if-empty
	$(BIN)/terminhub demo clients
	$(BIN)/terminhub serve --port $(PORT)

test: install
	$(BIN)/ruff check terminhub tests bench
	$(BIN)/pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check terminhub tests bench

bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) var .pytest_cache
