#!/usr/bin/env bash
# `make bench`: install what the benchmarks need, build keyturn in release mode, run
# bench/bench.py (one markdown table on stdout, also bench/results/latest.md), then the
# audit benchmark (bench/audit_bench.py) if it exists. See bench/README.md.
#
# Knobs (environment): BENCH_RUNS, BENCH_WARMUP, BENCH_COLD_RUNS, BENCH_USERS,
# BENCH_CLI_USERS, BENCH_CEILING_SECS, BENCH_CEILING_THREADS; KEYTURN_BIN (measure this
# binary instead of building one); PYTHON (for the bench venv), CARGO.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
BENCH_VENV=bench/.venv
BPY=$BENCH_VENV/bin/python
EMU_PY=.venv/bin/python
OUT=bench/results/latest.md

log() { printf 'bench: %s\n' "$*" >&2; }

# The emulator's venv (moto) is the one the tests use; `make bench` creates it.
if [[ ! -x $EMU_PY ]]; then
    log "creating .venv (the emulator) with make venv"
    make -s venv PYTHON="$PYTHON" >&2
fi

# The bench venv: AWS CLI v1 and boto3 at pinned versions (bench/requirements.txt).
if [[ ! -x $BPY || bench/requirements.txt -nt $BENCH_VENV/.installed ]]; then
    log "installing bench/requirements.txt into $BENCH_VENV"
    "$PYTHON" -m venv "$BENCH_VENV"
    "$BPY" -m pip install --quiet --upgrade pip >&2
    "$BPY" -m pip install --quiet -r bench/requirements.txt >&2
    touch "$BENCH_VENV/.installed"
fi

# hyperfine and GNU time are Debian packages; install them when missing and possible.
missing=()
command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
    if command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} (apt-get)"
        { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq "${missing[@]}"; } >&2 ||
            log "could not install ${missing[*]}; falling back to Python timing/wait4()"
    else
        log "no apt-get: ${missing[*]} missing; falling back to Python timing/wait4()"
    fi
fi

# keyturn in release mode (cargo skips this when it is up to date), unless
# KEYTURN_BIN names another build to measure.
if [[ -z ${KEYTURN_BIN:-} ]]; then
    log "building keyturn (release)"
    "$CARGO" build --release --locked --quiet -p keyturn-cli >&2
    KEYTURN_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/keyturn
fi

mkdir -p bench/results
export KEYTURN_BIN EMULATOR_PYTHON=$ROOT/$EMU_PY AWS_CLI=$ROOT/$BENCH_VENV/bin/aws
export BENCH_OUT=$ROOT/$OUT
"$BPY" bench/bench.py

# The audit benchmark, written separately, joins as the final section when present.
if [[ -f bench/audit_bench.py ]]; then
    log "running bench/audit_bench.py"
    audit_out=$(mktemp)
    trap 'rm -f "$audit_out"' EXIT
    # It starts its own emulator with its own interpreter, so it runs on the
    # emulator's venv (moto, boto3); the AWS CLI is the bench venv's.
    "$ROOT/$EMU_PY" bench/audit_bench.py >"$audit_out"
    { echo; cat "$audit_out"; } | tee -a "$OUT"
fi
# The fleet-run benchmark (`keyturn run`), likewise, when present.
if [[ -f bench/fleet_bench.py ]]; then
    log "running bench/fleet_bench.py"
    fleet_out=$(mktemp)
    "$ROOT/$EMU_PY" bench/fleet_bench.py >"$fleet_out"
    { echo; cat "$fleet_out"; } | tee -a "$OUT"
    rm -f "$fleet_out"
fi
log "results: $OUT"
