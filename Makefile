# Every target works on a fresh machine: it makes .venv and installs from the lock file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit run demo bench bench-smoke audit lock clean system-deps

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

system-deps:
	bash .ci/system-deps

lint: $(STAMP)
	$(PY) -m ruff check shadowproxy tests bench
	$(PY) -m ruff format --check shadowproxy tests bench

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider --cov=shadowproxy --cov-report=term

test: lint typecheck unit

# Serves configs/local-dev.yaml in front of local stub production and candidate model
# servers, until Ctrl-C.
run: $(STAMP)
	$(PY) -m shadowproxy.devtools.run_local --config configs/local-dev.yaml

# The same, with 500 requests replayed through the proxy; stops by itself.
demo: $(STAMP)
	$(PY) -m shadowproxy demo

bench: $(STAMP) system-deps
	$(PY) -m bench run --write-docs

bench-smoke: $(STAMP) system-deps
	$(PY) -m bench run --smoke

# Known vulnerabilities of every pin in the lock file. Needs PyPI's per-version JSON API
# (or OSV); --strict fails when a pin could not be looked up, so an audit that audited
# nothing never reads as clean.
audit: $(STAMP)
	$(PY) -m pip_audit --requirement requirements.lock --no-deps --disable-pip --strict \
		--progress-spinner off

# Re-pin every dependency from a clean environment.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[test]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage*
