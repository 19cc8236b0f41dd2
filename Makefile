# Two commands on a fresh machine (Python 3.10+):
#   make quickstart   install what is missing, then the quick start end to end (CPU, minutes)
#   make test         install the test extras too, then the test suite (what CI runs)
#   make test-fast    the suite without the tests marked slow (DeepSpeed runs, --compile):
#                     pytest -m "not slow", about 2 minutes on 2 cores
PYTHON ?= python3
export PYTHON

.PHONY: install install-test quickstart test test-fast

install:
	bash scripts/install.sh

install-test:
	bash scripts/install.sh --test

quickstart: install
	bash scripts/quickstart.sh

test: install-test
	$(PYTHON) -m pytest -q tests

test-fast: install-test
	$(PYTHON) -m pytest -q -m "not slow" tests
