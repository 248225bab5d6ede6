#!/usr/bin/env python3
"""Benchmark `keyturn audit` against the AWS CLI loop people write instead.

On a fresh local emulator (emulator/keyturn_emulator.py, auth enforced) this script
builds an Organization of 3 accounts (the management account and two members with
the role KeyturnAudit), seeds BENCH_USERS users (default 5,000) with 1-2 access keys
each into every account, and then times, in the same run:

  * keyturn audit --organization --role-name KeyturnAudit --source report (cold: the
    first run generates the credential reports; warm: AWS reuses a report for up to
    4 hours, so later audits find it ready), and the same for a single account;
  * keyturn audit ... --source api (ListUsers + ListAccessKeys and
    GetAccessKeyLastUsed per key);
  * the AWS CLI baseline: `aws iam list-users`, then `aws iam list-access-keys
    --user-name U` for every user, one account after another. At ~0.4 s per CLI call
    15,000 users take well over an hour, so by default each account's list-users is
    timed in full and list-access-keys on a random sample of BENCH_SAMPLE users
    (default 100); the loop's time is extrapolated from the mean per-user cost and
    labelled as such. BENCH_FULL=1 runs the whole loop.

It prints a Markdown table of wall times and ratios (CLI loop / keyturn) and writes it
to bench/results/audit.md.

Run it with the repository's venv Python (it needs moto and boto3):

    .venv/bin/python bench/audit_bench.py

Environment:
    KEYTURN_BIN     keyturn binary (default target/release/keyturn; build it with
                    `cargo build --release -p keyturn-cli`)
    AWS_CLI         the aws command (default: `aws` on PATH)
    BENCH_USERS     users per account (default 5000)
    BENCH_SAMPLE    users per account sampled for the CLI loop (default 100)
    BENCH_FULL      1 = run the full CLI loop instead of sampling
    BENCH_REPEAT    warm keyturn report runs to take the median of (default 5)
    BENCH_SEED      random seed for the seeded keys and the sample (default 5)
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYTURN = os.environ.get("KEYTURN_BIN", str(ROOT / "target/release/keyturn"))
AWS_CLI = os.environ.get("AWS_CLI") or shutil.which("aws")
USERS = int(os.environ.get("BENCH_USERS", "5000"))
SAMPLE = int(os.environ.get("BENCH_SAMPLE", "100"))
FULL = os.environ.get("BENCH_FULL") == "1"
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
SEED = int(os.environ.get("BENCH_SEED", "5"))
ROLE = "KeyturnAudit"
REGION = "us-east-1"
RESULTS = ROOT / "bench" / "results" / "audit.md"


def fail(msg: str) -> None:
    print(f"audit_bench: {msg}", file=sys.stderr)
    sys.exit(2)


class Emulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "emulator/keyturn_emulator.py"),
             "--bootstrap-admin", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ready = json.loads(self.proc.stdout.readline())
        self.endpoint = ready["endpoint"]
        self.account = ready["account_id"]
        self.admin = ready["admin"]

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(
            self.endpoint + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())

    def requests(self) -> int:
        with urllib.request.urlopen(self.endpoint + "/_keyturn/stats") as resp:
            return json.loads(resp.read())["requests"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def creds_env(endpoint: str, key_id: str, secret: str, token: str | None, home: str) -> dict:
    """An environment that reaches only the emulator, signed with these credentials."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": home,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.path.join(home, "config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_PAGER": "",
        "NO_COLOR": "1",
    }
    if token:
        env["AWS_SESSION_TOKEN"] = token
    return env


def seed_users(rng: random.Random, prefix: str) -> list[dict]:
    """USERS users, half with two keys; ages 0-500 days, some unused or Inactive."""
    now = datetime.now(timezone.utc)
    users = []
    for i in range(USERS):
        keys = []
        for _ in range(rng.choice((1, 2))):
            age = rng.randint(0, 500)
            used = rng.choice((None, rng.randint(0, age)))
            keys.append({
                "status": "Inactive" if rng.random() < 0.15 else "Active",
                "create_date": (now - timedelta(days=age)).isoformat(),
                "last_used": (now - timedelta(days=used)).isoformat() if used is not None else None,
                "last_used_service": "s3",
            })
        users.append({"name": f"{prefix}-user-{i:05d}", "keys": keys})
    return users


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def keyturn(args: list[str], env: dict, ok=(0, 3)) -> tuple[float, dict]:
    secs, proc = timed([KEYTURN, "audit", "--format", "json", *args], env)
    if proc.returncode not in ok:
        fail(f"keyturn {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return secs, json.loads(proc.stdout)


def fmt_secs(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.2f} s"


def main() -> int:
    if not os.access(KEYTURN, os.X_OK):
        fail(f"no keyturn binary at {KEYTURN}: run `cargo build --release -p keyturn-cli` or set KEYTURN_BIN")
    if not AWS_CLI:
        fail("the AWS CLI was not found: install it (pip install awscli) or set AWS_CLI")
    try:
        import boto3  # noqa: F401  (setup only; nothing timed uses it)
    except ImportError:
        fail("run this with the repository's venv Python (.venv/bin/python): it needs boto3")
    import boto3

    rng = random.Random(SEED)
    home = tempfile.mkdtemp(prefix="keyturn-bench-")
    emu = Emulator()
    try:
        admin = emu.admin
        session = dict(endpoint_url=emu.endpoint, region_name=REGION,
                       aws_access_key_id=admin["access_key_id"],
                       aws_secret_access_key=admin["secret_access_key"])
        org = boto3.client("organizations", **session)
        org.create_organization(FeatureSet="ALL")
        accounts = [emu.account]
        for name in ("bench-member-a", "bench-member-b"):
            out = org.create_account(Email=f"{name}@example.com", AccountName=name, RoleName=ROLE)
            accounts.append(out["CreateAccountStatus"]["AccountId"])

        t0 = time.perf_counter()
        seeded: dict[str, list[str]] = {}
        keys_total = 0
        for n, account in enumerate(accounts):
            users = seed_users(rng, f"a{n}")
            emu.post("/_keyturn/seed", {"account_id": account, "users": users})
            seeded[account] = [u["name"] for u in users]
            keys_total += sum(len(u["keys"]) for u in users)
        print(f"seeded {USERS} users x {len(accounts)} accounts ({keys_total} keys) "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # Credentials per account for the CLI loop: the admin key, and role sessions.
        sts = boto3.client("sts", **session)
        envs = {emu.account: creds_env(emu.endpoint, admin["access_key_id"],
                                       admin["secret_access_key"], None, home)}
        for account in accounts[1:]:
            c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ROLE}",
                                RoleSessionName="bench")["Credentials"]
            envs[account] = creds_env(emu.endpoint, c["AccessKeyId"], c["SecretAccessKey"],
                                      c["SessionToken"], home)
        admin_env = envs[emu.account]
        org_args = ["--organization", "--role-name", ROLE]

        rows = []  # (label, seconds, users covered, requests, note)

        # keyturn, report source: cold (reports generated by this run), then warm.
        r0 = emu.requests()
        cold, cold_out = keyturn([*org_args, "--source", "report"], admin_env)
        cold_requests = emu.requests() - r0
        warm = []
        for _ in range(REPEAT):
            secs, warm_out = keyturn([*org_args, "--source", "report"], admin_env)
            warm.append(secs)
        warm_med = statistics.median(warm)
        r0 = emu.requests()
        single = statistics.median(
            keyturn(["--source", "report"], admin_env)[0] for _ in range(REPEAT)
        )
        single_requests = (emu.requests() - r0) // REPEAT
        rows.append(("keyturn audit --source report, 3 accounts, cold (reports generated)",
                     cold, USERS * 3, cold_requests, "1 run"))
        rows.append(("keyturn audit --source report, 3 accounts, warm",
                     warm_med, USERS * 3, None, f"median of {REPEAT}"))
        rows.append(("keyturn audit --source report, 1 account, warm",
                     single, USERS, single_requests, f"median of {REPEAT}"))

        # keyturn, api source.
        r0 = emu.requests()
        api_secs, api_out = keyturn([*org_args, "--source", "api"], admin_env)
        api_requests = emu.requests() - r0
        rows.append(("keyturn audit --source api, 3 accounts", api_secs, USERS * 3,
                     api_requests, "1 run"))

        # The verdicts must agree, or the timing compares different work.
        for key in ("Users", "Keys", "CompliantKeys", "Findings"):
            if cold_out["Summary"][key] != api_out["Summary"][key]:
                fail(f"report and api disagree on {key}: {cold_out['Summary'][key]} vs "
                     f"{api_out['Summary'][key]}")

        # The AWS CLI loop.
        cli = [AWS_CLI, "iam", "--output", "json", "--endpoint-url", emu.endpoint]
        r0 = emu.requests()
        loop_total = 0.0
        measured_users = 0
        per_user_costs: list[float] = []
        for account in accounts:
            env = envs[account]
            secs, proc = timed([*cli, "list-users"], env)
            if proc.returncode != 0:
                fail(f"aws iam list-users failed:\n{proc.stderr}")
            names = [u["UserName"] for u in json.loads(proc.stdout)["Users"]]
            loop_total += secs
            sample = names if FULL else rng.sample(names, min(SAMPLE, len(names)))
            costs = []
            for name in sample:
                secs, proc = timed([*cli, "list-access-keys", "--user-name", name], env)
                if proc.returncode != 0:
                    fail(f"aws iam list-access-keys failed:\n{proc.stderr}")
                costs.append(secs)
            per_user_costs += costs
            measured_users += len(sample)
            # Extrapolated: this account's users times the sampled mean per user.
            loop_total += statistics.mean(costs) * len(names) if costs else 0.0
        cli_requests = emu.requests() - r0
        label = ("AWS CLI loop (list-users + list-access-keys per user), 3 accounts"
                 + ("" if FULL else ", EXTRAPOLATED"))
        note = ("full loop" if FULL else
                f"extrapolated from {measured_users} sampled users "
                f"(mean {statistics.mean(per_user_costs):.3f} s per list-access-keys call)")
        rows.append((label, loop_total, USERS * 3, None if not FULL else cli_requests, note))

        cli_version = subprocess.run([AWS_CLI, "--version"], capture_output=True,
                                     text=True).stdout.strip() or "?"
        kt_version = subprocess.run([KEYTURN, "--version"], capture_output=True,
                                    text=True).stdout.strip()
        lines = [
            "# keyturn audit benchmark",
            "",
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
            f"{platform.machine()}, {os.cpu_count()} cores; {kt_version} "
            f"({KEYTURN}); {cli_version}.",
            f"Local emulator (moto + keyturn fixes, auth on), 3 accounts (Organization, "
            f"AssumeRole {ROLE}), {USERS} users per account, {keys_total} keys in total.",
            "",
            "| run | wall time | per account | requests | CLI loop / this | note |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for label, secs, users, requests, note in rows:
            accounts_covered = users // USERS
            ratio = loop_total / secs if secs else 0
            lines.append(
                f"| {label} | {fmt_secs(secs)} | {fmt_secs(secs / accounts_covered)} | "
                f"{requests if requests is not None else '-'} | "
                f"{'1' if label.startswith('AWS CLI') else f'{ratio:,.0f}x'} | {note} |"
            )
        lines += [
            "",
            f"Target: report source under 1 s for {USERS} users: "
            f"{'met' if single < 1 else 'NOT met'} for one account ({fmt_secs(single)} warm), "
            f"{'met' if warm_med < 1 else 'not met'} for all three accounts at once "
            f"({fmt_secs(warm_med)} warm, {fmt_secs(cold)} cold).",
            f"Both sources gave identical totals: {cold_out['Summary']['Keys']} keys, "
            f"findings {json.dumps(cold_out['Summary']['Findings'])}.",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
        return 0
    finally:
        emu.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
