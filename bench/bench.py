#!/usr/bin/env python3
"""keyturn's benchmarks: keyturn against the AWS CLI and boto3 baselines, measured side
by side in one run against one local emulator (auth enforced).

Run through `bench/run.sh` (`make bench`), which installs the tools and builds the
release binary. This driver starts the emulator, runs the six scenarios described in
bench/README.md, and prints one markdown table (also written to BENCH_OUT). Progress
goes to stderr.

Knobs (environment): BENCH_RUNS, BENCH_WARMUP, BENCH_COLD_RUNS, BENCH_USERS,
BENCH_CLI_USERS, BENCH_CEILING_SECS, BENCH_CEILING_THREADS, BENCH_OUT; paths
KEYTURN_BIN, EMULATOR_PYTHON, AWS_CLI, HYPERFINE, GNU_TIME.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLI_SCRIPT = BENCH / "baselines" / "rotate-access-keys.sh"
BOTO3_SCRIPT = BENCH / "baselines" / "rotate_access_keys_boto3.py"
ROTATE_FLAGS = ["--deactivate-old-keys", "--delete-inactive-keys", "--yes", "--output", "env"]


def env_int(name: str, default: int) -> int:
    try:
        v = int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"bench: {name} must be an integer")
    if v < 1:
        sys.exit(f"bench: {name} must be >= 1")
    return v


RUNS = env_int("BENCH_RUNS", 10)
WARMUP = int(os.environ.get("BENCH_WARMUP", "1"))
COLD_RUNS = env_int("BENCH_COLD_RUNS", 20)
USERS = env_int("BENCH_USERS", 200)
CLI_USERS = min(env_int("BENCH_CLI_USERS", 40), USERS)
CEILING_SECS = env_int("BENCH_CEILING_SECS", 5)
CEILING_THREADS = [int(t) for t in os.environ.get("BENCH_CEILING_THREADS", "1,2,4,8").split(",")]
OUT = Path(os.environ.get("BENCH_OUT", BENCH / "results" / "latest.md"))
KEYTURN = os.environ.get("KEYTURN_BIN", str(ROOT / "target" / "release" / "keyturn"))
EMU_PY = os.environ.get("EMULATOR_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
AWS = os.environ.get("AWS_CLI", str(BENCH / ".venv" / "bin" / "aws"))
HYPERFINE = os.environ.get("HYPERFINE") or shutil.which("hyperfine")
GNU_TIME = os.environ.get("GNU_TIME") or ("/usr/bin/time" if os.access("/usr/bin/time", os.X_OK)
                                          else None)


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- emulator

class Emulator:
    """The test emulator (moto + keyturn's fixes), auth enforced, admin bootstrapped."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [EMU_PY, str(ROOT / "emulator" / "keyturn_emulator.py"),
             "--bootstrap-admin", "--exit-on-stdin-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("bench: the emulator did not start (run `make venv`)")
        ready = json.loads(line)
        self.endpoint = ready["endpoint"]
        self.admin = ready["admin"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.endpoint + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def reset(self) -> None:
        self.call("POST", "/_keyturn/reset")
        self.call("POST", "/_keyturn/stats/reset")

    def seed(self, names: list[str], keys: int = 1) -> None:
        self.call("POST", "/_keyturn/seed",
                  {"users": [{"name": n, "keys": [{}] * keys} for n in names]})

    def stats_reset(self) -> None:
        self.call("POST", "/_keyturn/stats/reset")

    def stats(self) -> dict[str, int]:
        return self.call("GET", "/_keyturn/stats")["by_action"]

    def keys(self, user: str) -> list:
        import boto3
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id=self.admin["access_key_id"],
                           aws_secret_access_key=self.admin["secret_access_key"])
        return iam.list_access_keys(UserName=user)["AccessKeyMetadata"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def tool_env(emu: Emulator, home: str) -> dict[str, str]:
    """What every tool runs with: the emulator, the admin key, no real ~/.aws."""
    return {
        "PATH": f"{Path(AWS).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": home,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_STATE_HOME": f"{home}/.local/state",
        "AWS_ENDPOINT_URL": emu.endpoint,
        "AWS_ACCESS_KEY_ID": emu.admin["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": emu.admin["secret_access_key"],
        "AWS_REGION": "us-east-1",
        # AWS CLI v1 reads only AWS_DEFAULT_REGION.
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CLI": AWS,
        "LANG": "C.UTF-8",
    }


# Tools: display name -> argv for rotating one user.
def rotate_cmd(tool: str, user: str) -> list[str]:
    if tool == "keyturn":
        return [KEYTURN, "rotate", "--user", user, *ROTATE_FLAGS]
    if tool == "aws-cli script":
        return ["bash", str(CLI_SCRIPT), "--user", user, *ROTATE_FLAGS]
    if tool == "boto3 script":
        return [sys.executable, str(BOTO3_SCRIPT), "--user", user, *ROTATE_FLAGS]
    raise ValueError(tool)


TOOLS = ["keyturn", "aws-cli script", "boto3 script"]


# --------------------------------------------------------------------------- stats

def describe(xs: list[float]) -> dict:
    xs = sorted(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        q1, q3 = q[0], q[2]
    else:
        q1, q3 = xs[0], xs[-1]
    return {"n": len(xs), "median": statistics.median(xs), "q1": q1, "q3": q3,
            "min": xs[0], "max": xs[-1], "mean": statistics.fmean(xs)}


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_num(x: float, unit: str, digits: int = 1) -> str:
    if float(x).is_integer() and digits <= 1:
        return f"{x:.0f} {unit}"
    return f"{x:.{digits}f} {unit}"


class Table:
    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    def add(self, scenario: str, tool: str, d: dict | None, fmt, ratio: str = "",
            notes: str = "") -> None:
        if d is None:
            self.rows.append([scenario, tool, "", "", "", "", ratio, notes])
            return
        self.rows.append([
            scenario, tool, str(d["n"]), fmt(d["median"]),
            f"{fmt(d['q1'])} – {fmt(d['q3'])}", f"{fmt(d['min'])} – {fmt(d['max'])}",
            ratio, notes])

    def markdown(self) -> str:
        head = ["Scenario", "Tool", "n", "Median", "IQR", "Min – max",
                "Ratio tool / keyturn", "Notes"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def ratio(base: dict, kt: dict) -> str:
    if kt["median"] == 0:
        return "n/a"
    return f"{base['median'] / kt['median']:.2f}×"


# --------------------------------------------------------------------------- runners

def hyperfine(cmds: dict[str, list[str]], env: dict, runs: int, warmup: int) -> dict:
    """Wall times (s) per command. hyperfine when installed, else a timing loop."""
    out: dict[str, list[float]] = {}
    for name, argv in cmds.items():
        if HYPERFINE:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run(
                    [HYPERFINE, "-N", "--style", "basic", "--warmup", str(warmup),
                     "--runs", str(runs), "--export-json", f.name, "--command-name", name,
                     shlex.join(argv)],
                    env=env, check=True, stdout=sys.stderr)
                out[name] = json.load(open(f.name))["results"][0]["times"]
        else:
            for _ in range(warmup):
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                ts.append(time.perf_counter() - t0)
            out[name] = ts
    return out


def run_checked(argv: list[str], env: dict) -> float:
    """Run one rotation; return its wall time in seconds."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            err.seek(0)
            sys.exit(f"bench: {shlex.join(argv)} exited {p.returncode}:\n{err.read()}")
    return dt


def split_calls(by_action: dict[str, int]) -> tuple[int, int]:
    iam = sum(v for k, v in by_action.items() if k.startswith("iam:"))
    sts = sum(v for k, v in by_action.items() if k.startswith("sts:"))
    return iam, sts


def inprocess_boto3(users: list[str]) -> None:
    """`bench.py --inprocess-boto3 USER...`: rotate every user in this one process with
    the boto3 baseline's own `rotate()` and reused clients (how a boto3 user loops over
    a fleet). Prints {"times": [...], "calls": [...]} on stdout; the per-rotation
    request counts are read from the emulator between rotations, outside the timing."""
    sys.path.insert(0, str(BOTO3_SCRIPT.parent))
    import argparse

    import boto3
    import rotate_access_keys_boto3 as base

    endpoint = os.environ["AWS_ENDPOINT_URL"]

    def emu(method: str, path: str) -> dict:
        req = urllib.request.Request(endpoint + path, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    args = argparse.Namespace(deactivate_old_keys=True, delete_inactive_keys=True,
                              yes=True, dry_run=False, output="env")
    session = boto3.session.Session()
    iam = session.client("iam")
    times, calls = [], []
    sink = io.StringIO()
    for u in users:
        emu("POST", "/_keyturn/stats/reset")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            new = base.rotate(session, iam, u, args)
            base.emit(new, args.output)
        times.append(time.perf_counter() - t0)
        sink.seek(0)
        sink.truncate()
        calls.append(emu("GET", "/_keyturn/stats")["by_action"])
    json.dump({"times": times, "calls": calls}, sys.stdout)


# --------------------------------------------------------------------------- scenarios

def scenario_single(emu: Emulator, env: dict, t: Table, res: dict) -> None:
    say(f"1. one rotation: {RUNS} runs (+{WARMUP} warm-up) per tool")
    emu.reset()
    users = {tool: f"single-{i}" for i, tool in enumerate(TOOLS)}
    emu.seed(list(users.values()))
    # Each rotation leaves the user with exactly one Active key, so every run does the
    # same work: create, verify, deactivate and delete the previous key.
    times = hyperfine({tool: rotate_cmd(tool, users[tool]) for tool in TOOLS}, env,
                      RUNS, WARMUP)
    for tool, u in users.items():
        ks = emu.keys(u)
        if len(ks) != 1 or ks[0]["Status"] != "Active":
            sys.exit(f"bench: after scenario 1, {u} ({tool}) has keys {ks}")
    kt = describe(times["keyturn"])
    res["single"] = {tool: describe(ts) for tool, ts in times.items()}
    how = "hyperfine" if HYPERFINE else "timing loop"
    for tool in TOOLS:
        d = res["single"][tool]
        t.add("1. one rotation (latency)", tool, d, fmt_time,
              "" if tool == "keyturn" else ratio(d, kt),
              f"{how}; `--deactivate-old-keys --delete-inactive-keys --yes`; keyturn's "
              f"journal in the temp HOME (same disk as a real ~/.local/state)"
              if tool == "keyturn" else "")
    # Diagnostic: the same rotation with keyturn's journal on tmpfs, so the cost of
    # the journal's durable writes (fsync) shows. Not used for the targets.
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        shm = tempfile.mkdtemp(prefix="keyturn-bench-", dir="/dev/shm")
        try:
            emu.seed(["single-tmpfs"])
            env2 = dict(env, KEYTURN_JOURNAL=f"{shm}/journal.sqlite")
            d = describe(hyperfine(
                {"keyturn, journal on tmpfs": rotate_cmd("keyturn", "single-tmpfs")},
                env2, RUNS, WARMUP)["keyturn, journal on tmpfs"])
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        res["single_tmpfs"] = d
        t.add("1. one rotation (latency)", "keyturn, journal on tmpfs", d, fmt_time,
              ratio(d, kt), "diagnostic: `KEYTURN_JOURNAL` on /dev/shm, no disk fsync "
              "cost; the difference to keyturn's row is the journal's durability")


def scenario_fleet(emu: Emulator, env: dict, t: Table, res: dict) -> None:
    res["fleet"], res["calls"] = {}, {}
    variants = [("keyturn", USERS), ("aws-cli script", CLI_USERS), ("boto3 script", USERS),
                ("boto3 script, one process", USERS)]
    shm = None
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        shm = tempfile.mkdtemp(prefix="keyturn-bench-", dir="/dev/shm")
        variants.insert(1, ("keyturn, journal on tmpfs", USERS))
    try:
        for tool, n in variants:
            fleet_one(emu, env, res, tool, n, shm)
    finally:
        if shm:
            shutil.rmtree(shm, ignore_errors=True)
    kt = res["fleet"]["keyturn"]
    for tool, _ in variants:
        f = res["fleet"][tool]
        total = f["per_rot"] * USERS
        if f["n"] == USERS:
            note = f"{USERS} users in {fmt_time(f['wall'])} ({USERS / f['wall']:.1f} rotations/s)"
        else:
            note = (f"measured on {f['n']} users ({fmt_time(f['wall'])}); "
                    f"{USERS} extrapolated: ≈ {fmt_time(total)}")
        if tool == "boto3 script, one process":
            note += "; all users in one Python process, clients reused (start-up counted once)"
        elif tool == "keyturn, journal on tmpfs":
            note += "; diagnostic: `KEYTURN_JOURNAL` on /dev/shm (no disk fsync cost)"
        elif tool != "keyturn":
            note += "; one process per user"
        else:
            note += "; one process per user (no fleet command yet)"
        t.add(f"2. {USERS} users in a row (per rotation)", tool, f["d"], fmt_time,
              "" if tool == "keyturn" else
              f"{ratio(f['d'], kt['d'])} (total {f['per_rot'] / kt['per_rot']:.2f}×)", note)


def fleet_one(emu: Emulator, env: dict, res: dict, tool: str, n: int,
              shm: str | None) -> None:
    """Rotate n fresh users one after another with `tool`; record per-rotation times
    and the API calls each rotation made (counted at the emulator, outside timing)."""
    say(f"2. {n} users one after another: {tool}")
    emu.reset()
    names = [f"fleet-{i:04d}" for i in range(n)]
    emu.seed(names)
    cmd_tool = tool
    if tool == "keyturn, journal on tmpfs":
        env = dict(env, KEYTURN_JOURNAL=f"{shm}/journal.sqlite")
        cmd_tool = "keyturn"
    if tool == "boto3 script, one process":
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--inprocess-boto3", *names],
                           env=env, stdout=subprocess.PIPE, text=True, check=True)
        wall = time.perf_counter() - t0
        r = json.loads(p.stdout)
        times, calls = r["times"], r["calls"]
    else:
        times, calls = [], []
        wall = 0.0
        for u in names:
            emu.stats_reset()
            dt = run_checked(rotate_cmd(cmd_tool, u), env)
            times.append(dt)
            wall += dt
            calls.append(emu.stats())
    requests = sum(sum(c.values()) for c in calls)
    res["fleet"][tool] = {"d": describe(times), "n": n, "wall": wall,
                          "per_rot": wall / n, "req_rate": requests / sum(times)}
    res["calls"][tool] = calls


def scenario_calls(t: Table, res: dict) -> None:
    kt = None
    for tool in ["keyturn", "aws-cli script", "boto3 script"]:
        calls = res["calls"][tool]
        iam = [split_calls(c)[0] for c in calls]
        sts = [split_calls(c)[1] for c in calls]
        tot = [sum(c.values()) for c in calls]
        agg: dict[str, int] = {}
        for c in calls:
            for k, v in c.items():
                agg[k] = agg.get(k, 0) + v
        per = ", ".join(f"{k} {v / len(calls):g}" for k, v in sorted(agg.items()))
        d = {"iam": describe(iam), "sts": describe(sts), "total": describe(tot)}
        res.setdefault("call_stats", {})[tool] = d
        if tool == "keyturn":
            kt = d
        fmt = lambda x: fmt_num(x, "call" if x == 1 else "calls")  # noqa: E731
        for part, label in [("iam", "IAM"), ("sts", "STS"), ("total", "IAM + STS")]:
            t.add(f"4. API calls per rotation: {label}", tool, d[part], fmt,
                  "" if tool == "keyturn" else ratio(d[part], kt[part]),
                  f"counted at the emulator over scenario 2's rotations; per rotation: {per}"
                  if part == "total" else "")


def scenario_cold(env: dict, t: Table, res: dict) -> None:
    say(f"3. cold start: {COLD_RUNS} runs each")
    cmds = {"keyturn": [KEYTURN, "--version"], "aws-cli script": [AWS, "--version"],
            "boto3 script": [sys.executable, "-c", "import boto3"]}
    times = hyperfine(cmds, env, COLD_RUNS, 3)
    kt = describe(times["keyturn"])
    res["cold"] = kt
    notes = {"keyturn": "`keyturn --version`", "aws-cli script": "`aws --version`",
             "boto3 script": "`python -c 'import boto3'` (what every boto3 run pays first)"}
    for tool in cmds:
        d = describe(times[tool])
        t.add("3. cold start", tool, d, fmt_time, "" if tool == "keyturn" else ratio(d, kt),
              notes[tool])


def gnu_time_rss_kib(argv: list[str], env: dict) -> int:
    """Peak RSS (KiB) as `/usr/bin/time -v` reports it ("Maximum resident set size")."""
    with tempfile.NamedTemporaryFile("r") as f:
        p = subprocess.run([GNU_TIME, "-v", "-o", f.name, *argv], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.exit(f"bench: {shlex.join(argv)} exited {p.returncode}:\n{p.stderr}")
        for line in f.read().splitlines():
            if "Maximum resident set size" in line:
                return int(line.rsplit(":", 1)[1])
    sys.exit("bench: no 'Maximum resident set size' in GNU time's output")


def scenario_memory(emu: Emulator, env: dict, t: Table, res: dict) -> None:
    """Peak RSS under GNU time. Not measured from this (Python) driver with wait4():
    ru_maxrss survives exec, so a child forked from a 50 MB Python process would
    report at least 50 MB; GNU time is a small process that forks the tool itself."""
    mb = lambda x: fmt_num(x, "MB", 1)  # noqa: E731
    if not GNU_TIME:
        res["mem"] = None
        t.add("5. peak memory of one rotation", "keyturn", None, str, "",
              "skipped: /usr/bin/time (Debian package `time`) is not installed")
        return
    # The AWS CLI script costs seconds per run; its memory barely varies.
    runs = {"keyturn": RUNS, "aws-cli script": min(RUNS, 3), "boto3 script": RUNS}
    say(f"5. peak memory under {GNU_TIME} -v: {runs}")
    emu.reset()
    users = {tool: f"mem-{i}" for i, tool in enumerate(TOOLS)}
    emu.seed(list(users.values()))
    d = {tool: describe([gnu_time_rss_kib(rotate_cmd(tool, users[tool]), env) * 1024 / 1e6
                         for _ in range(runs[tool])]) for tool in TOOLS}
    res["mem"] = d["keyturn"]
    for tool in TOOLS:
        note = {"keyturn": "max RSS from `/usr/bin/time -v`; MB = 10^6 bytes",
                "aws-cli script": "the script's largest process: one `aws` call",
                "boto3 script": ""}[tool]
        t.add("5. peak memory of one rotation", tool, d[tool], mb,
              "" if tool == "keyturn" else ratio(d[tool], d["keyturn"]), note)


def scenario_ceiling(emu: Emulator, t: Table, res: dict) -> None:
    import boto3

    emu.reset()
    best = None
    rows = []
    for threads in CEILING_THREADS:
        say(f"6. emulator ceiling: {threads} client thread(s) for {CEILING_SECS} s")
        names = [f"ceiling-{threads}-{i}" for i in range(threads)]
        emu.seed(names, keys=0)
        session = boto3.session.Session(
            aws_access_key_id=emu.admin["access_key_id"],
            aws_secret_access_key=emu.admin["secret_access_key"], region_name="us-east-1")
        clients = [session.client("iam", endpoint_url=emu.endpoint) for _ in names]
        for c, u in zip(clients, names):  # warm up: connection, first-request costs
            k = c.create_access_key(UserName=u)["AccessKey"]["AccessKeyId"]
            c.delete_access_key(UserName=u, AccessKeyId=k)
        stamps: list[list[float]] = [[] for _ in names]
        start = time.perf_counter()
        deadline = start + CEILING_SECS

        def loop(i: int) -> None:
            c, u, out = clients[i], names[i], stamps[i]
            while time.perf_counter() < deadline:
                k = c.create_access_key(UserName=u)["AccessKey"]["AccessKeyId"]
                out.append(time.perf_counter())
                c.delete_access_key(UserName=u, AccessKeyId=k)
                out.append(time.perf_counter())

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        ths = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        end = time.perf_counter()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        # Requests completed in each whole second of the run.
        per_sec = [0] * CEILING_SECS
        for s in stamps:
            for ts in s:
                b = int(ts - start)
                if b < CEILING_SECS:
                    per_sec[b] += 1
        d = describe([float(x) for x in per_sec])
        total = sum(len(s) for s in stamps)
        rate = total / (end - start)
        rows.append((threads, d, rate, cpu / (end - start)))
        if best is None or d["median"] > best[1]["median"]:
            best = (threads, d, rate)
    res["ceiling"] = best
    kt = res["fleet"]["keyturn"]["req_rate"]
    for threads, d, rate, cpu in rows:
        t.add("6. emulator ceiling (create + delete)",
              f"tight boto3 client, {threads} thread{'s' if threads > 1 else ''}", d,
              lambda x: fmt_num(x, "req/s", 0), "",
              f"requests per 1-s window; {rate:.0f} req/s overall; client used "
              f"{cpu:.2f} CPU cores" + (" ← ceiling" if threads == best[0] else ""))
    for tool in ["keyturn", "keyturn, journal on tmpfs", "boto3 script, one process"]:
        if tool not in res["fleet"]:
            continue
        r = res["fleet"][tool]["req_rate"]
        t.add("6. API request rate reached in scenario 2", tool, None, str, "",
              f"{r:.0f} req/s = {100 * r / best[1]['median']:.0f}% of the ceiling "
              f"({best[1]['median']:.0f} req/s)")
    res["kt_fraction"] = kt / best[1]["median"]


# --------------------------------------------------------------------------- report

def cmd_out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return "?"


def machine() -> str:
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem_kib = int(line.split()[1])
    osname = platform.platform()
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"') + f", Linux {platform.release()}"
    moto = cmd_out([EMU_PY, "-c", "import importlib.metadata as m; print(m.version('moto'))"])
    boto3v = cmd_out([sys.executable, "-c",
                      "import importlib.metadata as m; print(m.version('boto3'))"])
    awsv = cmd_out([AWS, "--version"]).split(" ")[0]
    hf = cmd_out([HYPERFINE, "--version"]) if HYPERFINE else "not installed (timing loop)"
    return (f"CPU {cpu}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB RAM; {osname}; "
            f"{cmd_out(['rustc', '--version'])}; {cmd_out([KEYTURN, '--version'])}"
            f"{' (release build)' if '/release/' in KEYTURN else ''}; "
            f"Python {platform.python_version()}; moto {moto}; {awsv}; boto3 {boto3v}; {hf}")


def targets(res: dict) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    s = res["single"]
    r = s["aws-cli script"]["median"] / s["keyturn"]["median"]
    cold = res["cold"]["median"]
    cs = res["call_stats"]
    kt_iam, kt_sts, kt_tot = (cs["keyturn"][p]["median"] for p in ("iam", "sts", "total"))
    cli_iam, cli_sts, cli_tot = (cs["aws-cli script"][p]["median"] for p in ("iam", "sts", "total"))
    mem = res["mem"]["max"] if res["mem"] else None
    return [
        f"- One rotation ≥ 10× faster than the AWS CLI script: {verdict(r >= 10)} "
        f"({r:.1f}×: {fmt_time(s['keyturn']['median'])} vs "
        f"{fmt_time(s['aws-cli script']['median'])}, medians).",
        f"- Cold start < 10 ms: {verdict(cold < 0.010)} (`keyturn --version` median "
        f"{fmt_time(cold)}).",
        f"- No more API calls per rotation than the AWS CLI script: "
        f"{verdict(kt_tot <= cli_tot)} in total ({kt_tot:g} vs {cli_tot:g}); IAM calls "
        f"{verdict(kt_iam <= cli_iam)} ({kt_iam:g} vs {cli_iam:g}); STS {kt_sts:g} vs "
        f"{cli_sts:g}. keyturn calls sts:GetCallerIdentity once for the caller and "
        f"three times with the new key (three consecutive successes), by design; the "
        f"script calls iam:GetUser and verifies once.",
        f"- Peak memory < 30 MB: {verdict(mem < 30)} (largest of {res['mem']['n']} "
        f"keyturn rotations {mem:.1f} MB, median {res['mem']['median']:.1f} MB)."
        if mem is not None else "- Peak memory < 30 MB: not measured (no /usr/bin/time).",
    ]


def main() -> int:
    if sys.argv[1:2] == ["--inprocess-boto3"]:
        inprocess_boto3(sys.argv[2:])
        return 0
    for p in (KEYTURN, EMU_PY, AWS):
        if not os.access(p, os.X_OK):
            sys.exit(f"bench: {p} is missing (run `make bench`, which builds and installs it)")
    t_start = time.time()
    load0 = os.getloadavg()
    home = tempfile.mkdtemp(prefix="keyturn-bench-")
    emu = Emulator()
    say(f"emulator at {emu.endpoint}; HOME={home}")
    env = tool_env(emu, home)
    table, res = Table(), {}
    try:
        scenario_single(emu, env, table, res)
        scenario_fleet(emu, env, table, res)
        scenario_cold(env, table, res)
        scenario_calls(table, res)
        scenario_memory(emu, env, table, res)
        scenario_ceiling(emu, table, res)
    finally:
        emu.stop()
        shutil.rmtree(home, ignore_errors=True)
    load1 = os.getloadavg()
    # Scenario order in the table follows the numbering.
    table.rows.sort(key=lambda r: r[0].split(".")[0])
    elapsed = time.time() - t_start
    md = "\n".join([
        "## keyturn benchmarks",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}; "
        f"{machine()}.",
        f"Runs: BENCH_RUNS={RUNS} (+{WARMUP} warm-up), BENCH_COLD_RUNS={COLD_RUNS}, "
        f"BENCH_USERS={USERS}, BENCH_CLI_USERS={CLI_USERS}, "
        f"BENCH_CEILING_SECS={CEILING_SECS}. Load average {load0[0]:.2f} at start, "
        f"{load1[0]:.2f} at end; total {elapsed / 60:.1f} min. All tools ran against one "
        f"emulator (moto, auth enforced) on 127.0.0.1 in this run. Ratios are "
        f"tool median / keyturn median (> 1: keyturn faster, smaller or fewer).",
        "",
        table.markdown(),
        "",
        "Targets (reported, not asserted):",
        "",
        *targets(res),
        "",
    ])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(md)
    print(md)
    say(f"done in {elapsed / 60:.1f} min; written to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
