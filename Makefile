# qmp-mig: the two commands of the README, and the pieces they are made of.
#   make run  [SUITE=default]   set-up, then the suite on the default lab
#   make test                   set-up, then the project's own tests
#   make bench                  figures: cold boot, ready guest, migrations, suite
SUITE ?= default
VENV  := .venv
BIN   := $(VENV)/bin

.PHONY: run test setup images lint unit lab-tests bench clean

setup:
	ci/setup-host.sh

images: setup
	$(BIN)/qmp-mig images build

run: setup
	$(BIN)/qmp-mig run --suite $(SUITE)

bench: setup
	$(BIN)/qmp-mig bench

lint: setup
	$(BIN)/ruff check qmp_mig avocado_tests tests
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q -m "not lab"

lab-tests: images
	$(BIN)/pytest -q -m lab -s --durations=0

test: lint unit lab-tests

clean:
	rm -rf $(VENV) results
