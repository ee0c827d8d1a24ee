# Two commands: `make run` starts the relay, `make test` runs every check.
# Both bootstrap .venv from the hash-pinned lock file on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test test-fast lint types unit bench bench-setup clean

$(STAMP): requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The simulator app's APNs credentials: `make run AUTH=certificate` sends with a push certificate.
AUTH ?= token

run: $(STAMP)
	$(BIN)/apns-relay serve --dev --auth $(AUTH)

demo: $(STAMP)
	$(BIN)/apns-relay demo --auth $(AUTH)

lint: $(STAMP)
	$(BIN)/ruff check relay relay_devkit tests bench
	$(BIN)/ruff format --check relay relay_devkit tests bench
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy relay relay_devkit tests bench

# Two lanes: the tests that mostly wait (marked `beside`: the APNs outage and fault runs at a few
# requests a second, processes killed or restarted, credentials rotated, Redis filled) run in a
# second pytest beside the rest instead of after it, the two lanes about as long; their report
# follows the main one, and either lane failing fails the target.
BESIDE_LOG := .pytest-beside.log
unit: $(STAMP)
	@$(BIN)/pytest -m beside > $(BESIDE_LOG) 2>&1 & beside=$$!; \
	$(BIN)/pytest -m "not beside"; rest=$$?; \
	wait $$beside; lane=$$?; \
	echo "---- the lane beside (pytest -m beside) ----"; cat $(BESIDE_LOG); \
	test $$rest -eq 0 && test $$lane -eq 0

test: lint types unit

# The quick loop while editing: lint, types and every test not marked slow. `make test` (and
# .ci/run) still runs everything.
test-fast: lint types $(STAMP)
	$(BIN)/pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/apns-relay bench

# The benchmark's optional tools, installed once before a run (a run itself installs nothing):
# wrk for the GMS phase (apt-get, as root; without it the Python generator is used and the report
# says so), @parse/node-apn for the peer phase (npm ci from bench/node's lock file) and py-spy for
# `--profile` (a binary wheel, beside the venv: the venv stays exactly the hash-pinned lock).
NODE_WORK := bench/.work/node
PY_SPY_WORK := bench/.work/py-spy
PY_SPY_VERSION := 0.4.3
bench-setup: $(STAMP)
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk
	test -x $(PY_SPY_WORK)/bin/py-spy || $(BIN)/python -m pip install --quiet \
		--target $(PY_SPY_WORK) py-spy==$(PY_SPY_VERSION)
	mkdir -p $(NODE_WORK)
	cp bench/node/package.json bench/node/package-lock.json $(NODE_WORK)/
	cd $(NODE_WORK) && npm ci --no-audit --no-fund

clean:
	rm -rf $(VENV) .relay-dev $(BESIDE_LOG) .pytest_cache .mypy_cache .ruff_cache
