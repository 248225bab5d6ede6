# keyturn developer entry points. `make demo` and `make test` work on a fresh machine
# with Rust (cargo) and Python 3.11+; everything else is installed here.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CARGO ?= cargo
# The journal crash tests need the failpoints feature (compiled out of normal builds).
TEST_FEATURES := --features keyturn-cli/failpoints

.PHONY: demo test venv build lint unit bench man clean

$(VPY): emulator/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r emulator/requirements.txt
	touch $(VPY)

venv: $(VPY)

build:
	$(CARGO) build --locked -p keyturn-cli

## Run keyturn's main job against a local AWS emulator (no AWS account needed).
demo: venv build
	$(VPY) scripts/demo.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets $(TEST_FEATURES) -- -D warnings

## Install what the tests need, then run the whole suite (emulator self-test, unit,
## emulator integration).
test: venv lint
	$(VPY) emulator/selftest.py > /dev/null
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		KEYTURN_PYTHON=$(abspath $(VPY)) $(CARGO) nextest run --locked --workspace $(TEST_FEATURES) --no-fail-fast; \
	else \
		KEYTURN_PYTHON=$(abspath $(VPY)) $(CARGO) test --locked --workspace $(TEST_FEATURES) --no-fail-fast; \
	fi

## Man pages, one per command (keyturn.1, keyturn-rotate.1, ...), generated from the
## clap definitions by the binary itself: `man -l target/man/keyturn-rotate.1`.
KEYTURN ?= $(CARGO) run --quiet --locked -p keyturn-cli --
MAN_DIR ?= target/man
man:
	$(KEYTURN) --generate-man $(MAN_DIR)

## Benchmarks against the AWS CLI and boto3 baselines (see bench/README.md).
bench: venv
	bash bench/run.sh

clean:
	rm -rf $(VENV) target
