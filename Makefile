# keyturn developer entry points. `make demo` and `make test` work on a fresh machine
# with Rust (cargo) and Python 3.11+; everything else is installed here.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CARGO ?= cargo
# The journal crash tests need the failpoints feature (compiled out of normal builds).
TEST_FEATURES := --features keyturn-cli/failpoints,keyturn-lambda/failpoints

.PHONY: demo test venv build lint unit bench man clean deploy-check browser

# The venv is complete once its stamp exists; the stamp is newer than every
# requirements file it was built from. (A stamp file, not bin/python: that is a
# symlink, and touching it would touch the system interpreter.) Re-running after a
# requirements change installs into the existing venv, so `make venv` is idempotent.
VENV_STAMP := $(VENV)/.keyturn-installed
VENV_REQS := emulator/requirements.txt fixtures/requirements.txt

$(VENV_STAMP): $(VENV_REQS)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet $(addprefix -r ,$(VENV_REQS))
	touch $@

$(VPY): $(VENV_STAMP)

venv: $(VENV_STAMP)

# The template validators (cfn-lint, checkov, python-hcl2) live in their own venv:
# checkov pins an older boto3 than moto wants.
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.keyturn-installed

$(DEPLOY_STAMP): deploy/requirements.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r deploy/requirements.txt
	touch $@

## Validate the deployment templates offline (see docs/deploy.md).
deploy-check: $(DEPLOY_STAMP)
	$(DEPLOY_VENV)/bin/python deploy/check.py

build:
	$(CARGO) build --locked -p keyturn-cli

## Run keyturn's main job against a local AWS emulator (no AWS account needed).
demo: venv build
	$(VPY) scripts/demo.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets $(TEST_FEATURES) -- -D warnings

## The browser tests of `keyturn serve` (crates/keyturn-cli/tests/serve.rs): Debian's
## Chromium and ChromeDriver, and playwright-core from npm (it drives /usr/bin/chromium;
## it never downloads a browser). Idempotent: apt-get only when chromium is missing,
## npm ci only when the lock file changed.
BROWSER_DIR := crates/keyturn-cli/tests/browser
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.keyturn-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BROWSER_STAMP): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi
	@if ! command -v npm >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; \
	fi
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

browser: $(BROWSER_STAMP)

## Install what the tests need, then run the whole suite (emulator and service-fixture
## self-tests, unit, emulator integration, browser).
test: venv lint deploy-check browser
	$(VPY) emulator/selftest.py > /dev/null
	$(VPY) fixtures/selftest.py
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
	rm -rf $(VENV) $(DEPLOY_VENV) target
