#!/usr/bin/env python3
"""keyturn demo: rotate IAM access keys against a local AWS emulator.

Starts the emulator (moto with keyturn's fixes, auth enforced), creates a few users
and keys with boto3, and runs the real `keyturn` binary through the rotation
scenarios, printing each command, its exit code, what it printed, and the user's keys
in IAM afterwards. No AWS account is needed. Run it with `make demo`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
KEYTURN = os.environ.get("KEYTURN_BIN", str(ROOT / "target/debug/keyturn"))
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def start_emulator() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "emulator/keyturn_emulator.py"),
         "--bootstrap-admin", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    ready = json.loads(proc.stdout.readline())
    return proc, ready


def main() -> int:
    proc, ready = start_emulator()
    endpoint, admin = ready["endpoint"], ready["admin"]
    home = tempfile.mkdtemp(prefix="keyturn-demo-")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": home,
        "XDG_STATE_HOME": f"{home}/state",
        "AWS_ACCESS_KEY_ID": admin["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": admin["secret_access_key"],
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=admin["access_key_id"],
        aws_secret_access_key=admin["secret_access_key"],
    )
    secrets: list[str] = []

    def keys(user: str) -> str:
        ks = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        return ", ".join(f"{k['AccessKeyId']} {k['Status']}" for k in ks) or "(none)"

    def new_key(user: str, status: str = "Active") -> str:
        k = iam.create_access_key(UserName=user)["AccessKey"]
        if status != "Active":
            iam.update_access_key(UserName=user, AccessKeyId=k["AccessKeyId"], Status=status)
        return k["AccessKeyId"]

    def backdate(key_id: str, days: int, used_days: int | None) -> None:
        import datetime as dt
        import urllib.request

        now = dt.datetime.now(dt.timezone.utc)
        body = {"access_key_id": key_id,
                "create_date": (now - dt.timedelta(days=days)).isoformat(),
                "last_used": None if used_days is None else
                (now - dt.timedelta(days=used_days)).isoformat(),
                "last_used_service": "s3"}
        req = urllib.request.Request(f"{endpoint}/_keyturn/access-key",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()

    def scenario(title: str, user: str, *args: str) -> None:
        print(f"\n{BOLD}== {title}{RESET}")
        print(f"{DIM}before:{RESET} {user}: {keys(user)}")
        cmd = [KEYTURN, *args]
        print(f"{BOLD}$ keyturn {' '.join(args)}{RESET}")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out = r.stdout
        for m in re.findall(r"AWS_SECRET_ACCESS_KEY=(\S+)|\"SecretAccessKey\": \"([^\"]+)\""
                            r"|SecretAccessKey +\S (\S+)", out):
            secrets.extend(s for s in m if s)
        # Mask secrets in the demo's own display (keyturn prints them in full).
        shown = out
        for s in secrets:
            shown = shown.replace(s, s[:4] + "…(masked by the demo)")
        for line in shown.rstrip().splitlines():
            print(f"  stdout| {line}")
        leaked = [s for s in secrets if s in r.stderr]
        assert not leaked, "a secret reached stderr"
        for line in r.stderr.rstrip().splitlines():
            print(f"  stderr| {line}")
        print(f"{DIM}exit code:{RESET} {r.returncode}")
        print(f"{DIM}after:{RESET}  {user}: {keys(user)}")

    try:
        for u in ["ci-bot", "deploy-bot", "backup-bot", "two-apps", "report-bot", "slow-bot"]:
            iam.create_user(UserName=u)
        new_key("ci-bot")
        k = new_key("deploy-bot")
        backdate(k, 97, 2)
        new_key("backup-bot")
        new_key("backup-bot", "Inactive")
        a, b = new_key("two-apps"), new_key("two-apps")
        backdate(a, 120, 1)
        backdate(b, 30, None)
        new_key("report-bot")
        new_key("slow-bot")

        scenario("1. one Active key, no flags: a second key is added, nothing is retired",
                 "ci-bot", "rotate", "--user", "ci-bot")
        scenario("2. without --yes, destructive flags stop before any change (exit 2)",
                 "deploy-bot", "rotate", "--user", "deploy-bot", "--deactivate-old-keys")
        scenario("3. dry run: the plan, and nothing changes",
                 "deploy-bot", "rotate", "--user", "deploy-bot", "--deactivate-old-keys",
                 "--delete-inactive-keys", "--yes", "--dry-run")
        scenario("4. full rotation: new key verified, old key deactivated then deleted",
                 "deploy-bot", "rotate", "--user", "deploy-bot", "--deactivate-old-keys",
                 "--delete-inactive-keys", "--yes", "--output", "json")
        scenario("5. two-key limit with an Inactive key and no cleanup flag (exit 2)",
                 "backup-bot", "rotate", "--user", "backup-bot")
        scenario("6. --delete-inactive-keys frees the slot; the Active key is untouched",
                 "backup-bot", "rotate", "--user", "backup-bot", "--delete-inactive-keys", "--yes")
        scenario("7. two Active keys: keyturn never guesses which one is unused (exit 2)",
                 "two-apps", "rotate", "--user", "two-apps", "--deactivate-old-keys",
                 "--delete-inactive-keys", "--yes")
        scenario("8. unknown user (exit 2)", "ci-bot", "rotate", "--user", "nobody")
        # IAM eventual consistency: new keys fail for 2 s; keyturn retries with backoff.
        req = __import__("urllib.request").request
        req.urlopen(req.Request(f"{endpoint}/_keyturn/propagation-delay",
                                data=b'{"seconds": 2}', method="POST")).read()
        scenario("9. IAM takes 2 s to accept the new key: verification retries, then retires",
                 "slow-bot", "rotate", "--user", "slow-bot", "--deactivate-old-keys", "--yes",
                 "--output", "table")
        req.urlopen(req.Request(f"{endpoint}/_keyturn/propagation-delay",
                                data=b'{"seconds": 3600}', method="POST")).read()
        scenario("10. the new key never verifies: it is deleted again, old key untouched (exit 1)",
                 "report-bot", "rotate", "--user", "report-bot", "--deactivate-old-keys",
                 "--yes", "--verify-timeout", "3")
        req.urlopen(req.Request(f"{endpoint}/_keyturn/propagation-delay",
                                data=b'{"seconds": 0}', method="POST")).read()

        # Self-rotation: a laptop's credentials file, rewritten byte for byte.
        iam.create_user(UserName="laptop")
        iam.put_user_policy(UserName="laptop", PolicyName="self", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["iam:*AccessKey*", "iam:GetUser"],
                 "Resource": "arn:aws:iam::*:user/${aws:username}"},
                {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="laptop")["AccessKey"]
        creds = Path(home) / ".aws" / "credentials"
        creds.parent.mkdir(parents=True)
        creds.write_text(
            "# my laptop\n[default]\nregion = eu-west-1\n"
            f"aws_access_key_id = {k['AccessKeyId']}\naws_secret_access_key = {k['SecretAccessKey']}\n\n"
            f"[backup]  ; same key, second profile\naws_access_key_id={k['AccessKeyId']}\n"
            f"aws_secret_access_key={k['SecretAccessKey']}\n")
        creds.chmod(0o600)
        secrets.append(k["SecretAccessKey"])
        # The profile's own key signs every call: no admin credentials in the environment.
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        print(f"\n{BOLD}== 11. self-rotation of ~/.aws/credentials (profile 'default', shared by 'backup'){RESET}")
        print(f"{DIM}file before:{RESET}")
        for line in creds.read_text().replace(k["SecretAccessKey"], k["SecretAccessKey"][:4] + "…").splitlines():
            print(f"  | {line}")
        scenario("    keyturn rotate --profile default", "laptop", "rotate", "--profile", "default")
        text = creds.read_text()
        for s_ in secrets:
            text = text.replace(s_, s_[:4] + "…")
        print(f"{DIM}file after (only the two key lines of each profile changed, mode "
              f"{oct(creds.stat().st_mode & 0o777)}):{RESET}")
        for line in text.splitlines():
            print(f"  | {line}")
        env["AWS_ACCESS_KEY_ID"] = admin["access_key_id"]
        env["AWS_SECRET_ACCESS_KEY"] = admin["secret_access_key"]

        # A rotation killed with SIGKILL in the middle, then resumed from the journal.
        iam.create_user(UserName="crash-bot")
        new_key("crash-bot")
        req.urlopen(req.Request(f"{endpoint}/_keyturn/propagation-delay",
                                data=b'{"seconds": 30}', method="POST")).read()
        print(f"\n{BOLD}== 12. kill -9 during verification, then `keyturn resume`{RESET}")
        print(f"{DIM}before:{RESET} crash-bot: {keys('crash-bot')}")
        print(f"{BOLD}$ keyturn rotate --user crash-bot --deactivate-old-keys --delete-inactive-keys --yes &  # killed{RESET}")
        import time
        p = subprocess.Popen([KEYTURN, "rotate", "--user", "crash-bot", "--deactivate-old-keys",
                              "--delete-inactive-keys", "--yes"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while len(iam.list_access_keys(UserName="crash-bot")["AccessKeyMetadata"]) < 2:
            time.sleep(0.05)
        time.sleep(0.5)
        p.kill()
        p.wait()
        print(f"  killed with SIGKILL; IAM now: crash-bot: {keys('crash-bot')} (new key unverified, its secret sealed in the journal)")
        req.urlopen(req.Request(f"{endpoint}/_keyturn/propagation-delay",
                                data=b'{"seconds": 0}', method="POST")).read()
        scenario("    keyturn resume", "crash-bot", "resume")
        scenario("    keyturn history --user crash-bot", "crash-bot", "history", "--user", "crash-bot")

        # Delivery: one rotation, three consumers (Secrets Manager, SSM, an env file).
        demo_delivery(env, endpoint, admin, home, iam, new_key, keys, scenario, secrets)
        openbao_demo(env, iam)
        demo_fleet(env, home, iam, new_key, backdate, keys)

        print(f"\n{BOLD}Demo finished.{RESET} {len(secrets)} new secrets were issued; "
              "each reached its destinations (stdout or the sinks) once and never stderr.")
    finally:
        proc.stdin.close()  # the emulator exits when its stdin closes
        proc.wait(timeout=10)
    return 0


def demo_fleet(env, home, iam, new_key, backdate, keys) -> None:
    """A fleet run of a policy file, then a second run right after that changes nothing."""
    print(f"\n{BOLD}== 13. fleet run: `keyturn run` keeps every selected key within policy{RESET}")
    for name, path, age in [("fleet-api", "/bots/", 85), ("fleet-etl", "/bots/", 20),
                            ("fleet-web", "/bots/", 200), ("fleet-human", "/people/", 200)]:
        iam.create_user(UserName=name, Path=path)
        backdate(new_key(name), age, 1)
    Path(home, "fleet-keys").mkdir()
    cfg = Path(home, "fleet.toml")
    cfg.write_text(f"""[policy]
max_age_days = 90
rotate_before_days = 14

[[sinks]]
name = "vault-file"
type = "json-file"
path = "{home}/fleet-keys/{{user}}.json"

[[rotations]]
name = "bots"
users = ["fleet-*"]
path_prefix = "/bots/"
sinks = ["vault-file"]
""")
    print(f"{DIM}policy:{RESET} rotate users fleet-* under /bots/ at 76 days (max 90), deliver to a json-file")
    for u in ["fleet-api", "fleet-etl", "fleet-web", "fleet-human"]:
        print(f"{DIM}before:{RESET} {u}: {keys(u)}")
    for title in ["first run", "second run, right after: nothing to do"]:
        print(f"{BOLD}$ keyturn --config fleet.toml run   # {title}{RESET}")
        r = subprocess.run([KEYTURN, "--config", str(cfg), "run"], env=env,
                           capture_output=True, text=True)
        for line in r.stdout.rstrip().splitlines():
            print(f"  stdout| {line}")
        for line in r.stderr.rstrip().splitlines():
            print(f"  stderr| {line}")
        print(f"{DIM}exit code:{RESET} {r.returncode}")
        delivered = sorted(p.name for p in Path(home, "fleet-keys").iterdir())
        for p in Path(home, "fleet-keys").iterdir():
            secret = json.loads(p.read_text())["SecretAccessKey"]
            assert secret not in r.stdout and secret not in r.stderr, "a secret leaked"
        print(f"{DIM}delivered:{RESET} {', '.join(delivered)}")
    for u in ["fleet-api", "fleet-etl", "fleet-web", "fleet-human"]:
        print(f"{DIM}after:{RESET}  {u}: {keys(u)}")


def demo_delivery(env, endpoint, admin, home, iam, new_key, keys, scenario, secrets) -> None:
    """13: `--sink` delivers the new key to Secrets Manager, SSM and an env file, reads
    each back, and only then retires the old key."""
    clients = {name: boto3.client(name, endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id=admin["access_key_id"],
                                  aws_secret_access_key=admin["secret_access_key"])
               for name in ("secretsmanager", "ssm")}
    sm, ssm = clients["secretsmanager"], clients["ssm"]
    iam.create_user(UserName="billing-bot")
    old = iam.create_access_key(UserName="billing-bot")["AccessKey"]
    secrets.append(old["SecretAccessKey"])
    sm.create_secret(Name="ci/billing-bot", SecretString=json.dumps(
        {"AccessKeyId": old["AccessKeyId"], "SecretAccessKey": old["SecretAccessKey"],
         "bucket": "billing-reports"}))
    ssm.put_parameter(Name="/ci/billing-bot", Type="SecureString", Value=json.dumps(
        {"AccessKeyId": old["AccessKeyId"], "SecretAccessKey": old["SecretAccessKey"]}))
    env_file = Path(home) / "billing.env"
    env_file.write_text("# billing app\nREGION=eu-west-1\n"
                        f"AWS_ACCESS_KEY_ID={old['AccessKeyId']}\n"
                        f"AWS_SECRET_ACCESS_KEY={old['SecretAccessKey']}\n")
    config = Path(home) / "keyturn.toml"
    config.write_text(f"""
[[sinks]]
name = "ci-aws"
type = "secretsmanager"
secret_id = "ci/{{user}}"

[[sinks]]
name = "ci-param"
type = "ssm"
parameter = "/ci/{{user}}"

[[sinks]]
name = "billing-env"
type = "env-file"
path = "{env_file}"
""")
    print(f"\n{BOLD}== 13. delivery: Secrets Manager, SSM and an env file, each read back "
          f"before the old key is retired{RESET}")
    print(f"{DIM}sinks declared in {config.name}:{RESET}")
    for line in config.read_text().strip().splitlines():
        print(f"  | {line}")
    scenario("    keyturn rotate --sink ci-aws --sink ci-param --sink billing-env", "billing-bot",
             "--config", str(config), "rotate", "--user", "billing-bot", "--sink", "ci-aws",
             "--sink", "ci-param", "--sink", "billing-env", "--deactivate-old-keys", "--yes",
             "--output", "table")
    cur = json.loads(sm.get_secret_value(SecretId="ci/billing-bot",
                                         VersionStage="AWSCURRENT")["SecretString"])
    prev = json.loads(sm.get_secret_value(SecretId="ci/billing-bot",
                                          VersionStage="AWSPREVIOUS")["SecretString"])
    secrets.append(cur["SecretAccessKey"])
    stages = sm.describe_secret(SecretId="ci/billing-bot")["VersionIdsToStages"]
    param = ssm.get_parameter(Name="/ci/billing-bot", WithDecryption=True)["Parameter"]
    print(f"{DIM}Secrets Manager:{RESET} AWSCURRENT holds {cur['AccessKeyId']} "
          f"(bucket kept: {cur['bucket']}), AWSPREVIOUS holds {prev['AccessKeyId']}, "
          f"stages {sorted(sum(stages.values(), []))}")
    print(f"{DIM}SSM:{RESET} /ci/billing-bot version {param['Version']} holds "
          f"{json.loads(param['Value'])['AccessKeyId']}")
    text = env_file.read_text()
    for s_ in secrets:
        text = text.replace(s_, s_[:4] + "…")
    print(f"{DIM}{env_file.name} (mode {oct(env_file.stat().st_mode & 0o777)}):{RESET}")
    for line in text.splitlines():
        print(f"  | {line}")
def openbao_demo(env: dict, iam) -> None:
    """A rotation delivered to a real OpenBao (Vault KV v2): written with check-and-set,
    the secret's other keys kept, read back before the old key is retired. The new
    secret goes to OpenBao only; the demo shows its first four characters."""
    import urllib.request

    print(f"\n{BOLD}== 13. deliver to OpenBao (Vault KV v2): check-and-set write, "
          f"read back, then retire the old key{RESET}")
    bao = subprocess.Popen(
        [sys.executable, str(ROOT / "fixtures/serve.py"), "--service", "openbao",
         "--port", "0", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(bao.stdout.readline())
        addr, root = ready["endpoint"], ready["root_token"]

        def kv(method: str, body: dict | None = None) -> dict:
            req = urllib.request.Request(
                f"{addr}/v1/secret/data/ci/vault-bot", method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"X-Vault-Token": root, "Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req).read() or b"{}")

        def show(label: str) -> None:
            d = kv("GET")["data"]
            data = {k: (v[:4] + "…" if k == "SecretAccessKey" else v)
                    for k, v in d["data"].items()}
            print(f"{DIM}{label}:{RESET} secret/ci/vault-bot version "
                  f"{d['metadata']['version']}: {json.dumps(data, ensure_ascii=False)}")

        def keys() -> str:
            ks = iam.list_access_keys(UserName="vault-bot")["AccessKeyMetadata"]
            return ", ".join(f"{k['AccessKeyId']} {k['Status']}" for k in ks)

        iam.create_user(UserName="vault-bot")
        old = iam.create_access_key(UserName="vault-bot")["AccessKey"]
        kv("POST", {"data": {"AccessKeyId": old["AccessKeyId"],
                             "SecretAccessKey": old["SecretAccessKey"],
                             "region": "eu-west-1"}})
        home = Path(env["HOME"])
        token = home / "vault-token"
        token.write_text(root + "\n")
        token.chmod(0o600)
        cfg = home / "keyturn-vault.toml"
        cfg.write_text(
            "[[sinks]]\nname = \"ci-vault\"\ntype = \"vault\"\n"
            f"address = \"{addr}\"\npath = \"ci/{{user}}\"\ntoken_file = \"{token}\"\n")
        print(f"{DIM}settings ({cfg.name}):{RESET}")
        for line in cfg.read_text().splitlines():
            print(f"  | {line}")
        print(f"{DIM}before:{RESET} vault-bot: {keys()}")
        show("before")
        args = ["--config", str(cfg), "rotate", "--user", "vault-bot", "--sink", "ci-vault",
                "--deactivate-old-keys", "--yes"]
        print(f"{BOLD}$ keyturn {' '.join(args)}{RESET}")
        r = subprocess.run([KEYTURN, *args], env=env, capture_output=True, text=True)
        new_secret = kv("GET")["data"]["data"]["SecretAccessKey"]
        assert new_secret not in r.stdout + r.stderr, "a secret reached keyturn's output"
        assert root not in r.stdout + r.stderr, "the Vault token reached keyturn's output"
        for line in r.stdout.rstrip().splitlines():
            print(f"  stdout| {line}")
        for line in r.stderr.rstrip().splitlines():
            print(f"  stderr| {line}")
        print(f"{DIM}exit code:{RESET} {r.returncode}")
        print(f"{DIM}after:{RESET}  vault-bot: {keys()}")
        show("after ")
    finally:
        bao.stdin.close()  # the launcher stops bao when its stdin closes
        bao.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
