# Two commands matter: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

LOCK := requirements.lock
PIP_COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

.PHONY: venv lock lock-upgrade proto proto-check lint typecheck test test-unit test-e2e demo demo-stop bench clean

venv: $(VENV)/.installed

# The runtime dependencies come from the lock, as in production; then the plugin (with its
# SDK) and its dev tools (which must not move a locked version: tests/test_install.py checks),
# plus, editable, the dev-only distributions: the Skyflow emulator and the OpenBao
# harness/demo (devtools). The plugin's own wheel carries neither.
$(VENV)/.installed: pyproject.toml $(LOCK) sdk/pyproject.toml emulator/pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q -e ".[dev]" -e ./emulator -e ./devtools
	touch $@

lock: venv  ## rewrite requirements.lock after a change of pyproject's dependencies
	$(PIP_COMPILE)

lock-upgrade: venv  ## move every locked runtime dependency to its newest allowed version
	$(PIP_COMPILE) --upgrade

proto: venv  ## regenerate the protobuf/grpclib modules
	scripts/gen_proto.sh

proto-check: venv  ## fail when the committed generated code is not current
	scripts/check_proto.sh

lint: venv
	$(BIN)/ruff check src sdk emulator devtools tests bench examples scripts
	$(BIN)/ruff format --check src sdk emulator devtools tests bench examples scripts

typecheck: venv
	$(BIN)/mypy

test-unit: venv
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: venv
	$(BIN)/pytest -m e2e $(PYTEST_ARGS)

test: venv proto-check lint typecheck  ## everything CI runs
	$(BIN)/pytest $(PYTEST_ARGS)

demo: venv  ## OpenBao + the Skyflow emulator + three business-unit mounts
	$(BIN)/python -m skyflow_devtools.demo

demo-stop:
	$(BIN)/python -m skyflow_devtools.demo --stop

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo build dist .mypy_cache .ruff_cache .pytest_cache
