# Set-up and everyday commands. Needs only Python 3.11+ (`python3`, or PYTHON=/path/to/python).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-compiled compiled pure lint typecheck unit mutation clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(VENV)/.mutation-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,mutation]'
	touch $@

## demo: the proxy in front of two bundled toy model servers, with synthetic users (Ctrl-C stops)
demo: $(VENV)/.installed
	$(BIN)/grayscale demo

## test: lint, type checks and the test suite but its slow simulations (`make test-slow`; CI runs
## both, and `make test-compiled`)
## Both run the pure Python modules, even after `make compiled` (GRAYSCALE_PURE=1).
test: lint typecheck
	GRAYSCALE_PURE=1 $(BIN)/pytest -m "not slow"

## test-slow: the long seeded simulations and the throughput guard (CI runs them after `make test`)
test-slow: $(VENV)/.installed
	GRAYSCALE_PURE=1 $(BIN)/pytest -m slow

## compiled: compile the hot modules with mypyc (setup.py), in place beside their sources; until
## `make pure` removes them, they run instead of the sources (unless GRAYSCALE_PURE=1)
compiled: $(VENV)/.installed
	GRAYSCALE_COMPILE=1 PIP_CONSTRAINT=$(CURDIR)/constraints.txt \
		$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/grayscale --version

## pure: remove the compiled modules (`make compiled`): the sources run again
pure:
	rm -rf build grayscale__mypyc.*.so  # (the shared library where it was built before)
	find proxy -name '*.so' -delete

## test-compiled: `make test`'s tests on the compiled modules (CI runs them last)
test-compiled: compiled
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy
	$(BIN)/mypy loadtests  # (apart: its scripts import each other as top-level modules)

## mutation: mutmut over the pure decision code, judged by tests/unit (minutes; not part of test).
## Starts from scratch each time; MUTATION_JOBS=N caps the worker processes (default: one a core).
mutation: $(VENV)/.mutation-installed
	rm -rf mutants
	nice -n 19 $(BIN)/mutmut run $(if $(MUTATION_JOBS),--max-children $(MUTATION_JOBS))
	@echo "Surviving mutants (the equivalent ones are listed in docs/development.md, under Mutation testing):"
	@$(BIN)/mutmut results
	@$(BIN)/mutmut results --all true | awk '{ n[$$NF]++; t++ } END { \
		for (s in n) printf "%s %d\n", s, n[s]; \
		printf "mutation score: %.1f %% (%d of %d killed)\n", 100 * n["killed"] / t, n["killed"], t }'

clean: pure
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis mutants
