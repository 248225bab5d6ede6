#!/usr/bin/env python3
"""Benchmark `keyturn run` (fleet runs) against the AWS CLI loop and the emulator's
own request ceiling, in one run, on a fresh local emulator (auth enforced).

Scenarios:
  1. BENCH_FLEET_USERS users (default 1,000), each with one Active key 100 days old
     (due under max_age_days 90): wall time of `keyturn run` (json-file sink per user,
     when-switched, concurrency BENCH_FLEET_CONCURRENCY, default 32), its request rate
     (the emulator's own request counter), and its peak RSS (wait4);
  2. the AWS CLI baseline (bench/baselines/rotate-access-keys.sh, one user after
     another) on a sample of BENCH_FLEET_CLI_SAMPLE users (default 10), extrapolated to
     the whole fleet, and labelled as extrapolated;
  3. the emulator's request ceiling: boto3 threads calling iam:ListAccessKeys as fast
     as they can for BENCH_CEILING_SECS seconds (default 5), best of 1/4/16 threads;
  4. 200 users with a 2 s propagation delay per new key (new keys fail
     authentication for 2 s): wall time vs the 200 x 2 s a sequential loop waits;
  5. peak RSS of `keyturn run --dry-run` at 1,000 and 10,000 users (the planning path
     every user goes through; no key is created), to show memory does not grow with
     the fleet beyond the report.

Run with the emulator's Python (moto, boto3):  .venv/bin/python bench/fleet_bench.py
KEYTURN_BIN (default target/release/keyturn) and AWS_CLI (default `aws` on PATH).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import Emulator, creds_env, fmt_secs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYTURN = os.environ.get("KEYTURN_BIN", str(ROOT / "target/release/keyturn"))
AWS_CLI = os.environ.get("AWS_CLI") or shutil.which("aws")
USERS = int(os.environ.get("BENCH_FLEET_USERS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_FLEET_CONCURRENCY", "32"))
CLI_SAMPLE = int(os.environ.get("BENCH_FLEET_CLI_SAMPLE", "10"))
CEILING_SECS = float(os.environ.get("BENCH_CEILING_SECS", "5"))
DELAY_USERS = 200
BIG = int(os.environ.get("BENCH_FLEET_BIG", "10000"))


def log(msg: str) -> None:
    print(f"fleet_bench: {msg}", file=sys.stderr, flush=True)


def seed(emu: Emulator, prefix: str, n: int) -> None:
    old = (datetime.now(timezone.utc) - timedelta(days=100)).isoformat()
    for start in range(0, n, 2500):
        users = [{"name": f"{prefix}-{i:05d}", "keys": [{"create_date": old, "last_used": old}]}
                 for i in range(start, min(n, start + 2500))]
        emu.post("/_keyturn/seed", {"users": users})


def policy(home: str, prefix: str) -> str:
    path = os.path.join(home, f"{prefix}.toml")
    Path(path).write_text(f"""
[policy]
concurrency = {CONCURRENCY}
canary = 1
verify_timeout = 120

[[sinks]]
name = "keys"
type = "json-file"
path = "{home}/keys/{{account}}-{{user}}.json"

[[rotations]]
name = "fleet"
users = ["{prefix}-*"]
sinks = ["keys"]
""")
    return path


def run_keyturn(args: list[str], env: dict) -> tuple[float, int, dict]:
    """Wall time, peak RSS (KiB) and the JSON report of one keyturn run."""
    t0 = time.perf_counter()
    p = subprocess.Popen([KEYTURN, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    secs = time.perf_counter() - t0
    # communicate() reaped the child; RUSAGE_CHILDREN holds the largest child so far,
    # so each measured run is the largest one yet (runs go small to big).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode not in (0, 3):
        log(f"keyturn {' '.join(args)} exited {p.returncode}:\n{err[-3000:]}")
        sys.exit(1)
    return secs, rss, json.loads(out)


def ceiling(emu: Emulator) -> float:
    import boto3

    def client():
        return boto3.client("iam", endpoint_url=emu.endpoint, region_name="us-east-1",
                            aws_access_key_id=emu.admin["access_key_id"],
                            aws_secret_access_key=emu.admin["secret_access_key"])

    best = 0.0
    for threads in (1, 4, 16):
        clients = [client() for _ in range(threads)]
        stop = time.perf_counter() + CEILING_SECS

        def work(c):
            n = 0
            while time.perf_counter() < stop:
                c.list_access_keys(UserName="keyturn-admin")
                n += 1
            return n

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            total = sum(ex.map(work, clients))
        rate = total / (time.perf_counter() - t0)
        log(f"ceiling: {threads} threads -> {rate:.0f} requests/s")
        best = max(best, rate)
    return best


def main() -> int:
    if not Path(KEYTURN).exists():
        log(f"no keyturn binary at {KEYTURN} (cargo build --release -p keyturn-cli)")
        return 2
    home = tempfile.mkdtemp(prefix="keyturn-fleet-bench-")
    os.makedirs(os.path.join(home, "keys"))
    emu = Emulator()
    try:
        env = creds_env(emu.endpoint, emu.admin["access_key_id"],
                        emu.admin["secret_access_key"], None, home)
        env["XDG_STATE_HOME"] = os.path.join(home, "state")
        rows = []

        # 5 (small first: RUSAGE_CHILDREN keeps the maximum): dry-run memory.
        seed(emu, "m", USERS)
        dry_small = run_keyturn(["--config", policy(home, "m"), "run", "--dry-run",
                                 "--output", "json", "--concurrency", str(CONCURRENCY)], env)
        log(f"dry run {USERS}: {dry_small[0]:.1f} s, {dry_small[1] / 1024:.1f} MiB")

        # 1: the fleet run.
        seed(emu, "f", USERS)
        before = emu.requests()
        secs, rss, rep = run_keyturn(["--config", policy(home, "f"), "run", "--output", "json"],
                                     env)
        reqs = emu.requests() - before
        rotated = rep["Summary"]["rotated"]
        rate = reqs / secs
        log(f"keyturn run {USERS}: {secs:.1f} s, {reqs} requests, {rotated} rotated")
        if rotated != USERS:
            log(f"expected {USERS} rotated, got {rep['Summary']}")
            return 1

        # 2: the AWS CLI loop on a sample.
        cli_per_user = None
        if AWS_CLI:
            seed(emu, "c", CLI_SAMPLE)
            cenv = dict(env, AWS_CLI=AWS_CLI)
            t0 = time.perf_counter()
            for i in range(CLI_SAMPLE):
                p = subprocess.run(["bash", str(ROOT / "bench/baselines/rotate-access-keys.sh"),
                                    "--user", f"c-{i:05d}", "--output", "json"],
                                   env=cenv, capture_output=True, text=True)
                if p.returncode != 0:
                    log(f"AWS CLI script failed: {p.stderr[-2000:]}")
                    return 1
            cli_per_user = (time.perf_counter() - t0) / CLI_SAMPLE
        else:
            log("no AWS CLI (set AWS_CLI or run through make bench): skipping the CLI loop")

        # 3: the emulator's ceiling.
        top = ceiling(emu)

        # 4: 2 s propagation delay.
        seed(emu, "d", DELAY_USERS)
        emu.post("/_keyturn/propagation-delay", {"seconds": 2})
        dsecs, _, drep = run_keyturn(["--config", policy(home, "d"), "run", "--output", "json",
                                      "--concurrency", "64"], env)
        emu.post("/_keyturn/propagation-delay", {"seconds": 0})
        log(f"propagation delay: {dsecs:.1f} s, {drep['Summary']}")

        # 5 (big): dry-run memory at BIG users.
        seed(emu, "b", BIG)
        dry_big = run_keyturn(["--config", policy(home, "b"), "run", "--dry-run",
                               "--output", "json", "--concurrency", str(CONCURRENCY)], env)
        log(f"dry run {BIG}: {dry_big[0]:.1f} s, {dry_big[1] / 1024:.1f} MiB")

        rows.append(f"| `keyturn run`, {USERS} due users, concurrency {CONCURRENCY} | "
                    f"{fmt_secs(secs)} | {reqs} requests, {rate:.0f} req/s; peak RSS "
                    f"{rss / 1024:.1f} MiB |")
        if cli_per_user is not None:
            cli_total = cli_per_user * USERS
            rows.append(f"| AWS CLI loop (rotate-access-keys.sh), {CLI_SAMPLE} users measured, "
                        f"extrapolated to {USERS} | {fmt_secs(cli_total)} (extrapolated) | "
                        f"{cli_per_user:.2f} s per user; keyturn is {cli_total / secs:.0f}x faster |")
        rows.append(f"| Emulator ceiling (boto3 ListAccessKeys, best of 1/4/16 threads) | | "
                    f"{top:.0f} req/s; keyturn reaches {100 * rate / top:.0f}% |")
        rows.append(f"| `keyturn run`, {DELAY_USERS} users, 2 s propagation delay, concurrency 64 | "
                    f"{fmt_secs(dsecs)} | a sequential loop waits {DELAY_USERS * 2} s for "
                    f"propagation alone; {drep['Summary']['rotated']} rotated |")
        rows.append(f"| `keyturn run --dry-run`, {USERS} / {BIG} users (peak RSS) | "
                    f"{fmt_secs(dry_small[0])} / {fmt_secs(dry_big[0])} | "
                    f"{dry_small[1] / 1024:.1f} MiB / {dry_big[1] / 1024:.1f} MiB |")
        table = "\n".join(["## Fleet runs (`keyturn run`)", "",
                           f"keyturn binary: `{KEYTURN}`", "",
                           "| scenario | wall time | notes |", "| --- | --- | --- |", *rows])
        print(table)
        out = ROOT / "bench/results"
        out.mkdir(exist_ok=True)
        (out / "fleet.md").write_text(table + "\n")
        return 0
    finally:
        emu.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
