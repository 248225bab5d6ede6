#!/usr/bin/env python3
"""End-to-end self test of keyturn_emulator.py (run with the venv's python).

Starts the launcher as a subprocess, talks to it with boto3 and the /_keyturn/
endpoints, and asserts every fix.  Exits non-zero on the first failure.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

LAUNCHER = Path(__file__).with_name("keyturn_emulator.py")
ACCOUNT = "123456789012"
CONFIG = Config(retries={"max_attempts": 1, "mode": "standard"})
CHECKS: list[str] = []


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    CHECKS.append(what)
    print(f"  ok  {what}")


def start(*extra: str) -> tuple[subprocess.Popen, dict, float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline()
    elapsed = time.monotonic() - began
    if not line:
        raise AssertionError(f"launcher exited without a ready line: {proc.wait()}")
    return proc, json.loads(line), elapsed


class Emulator:
    def __init__(self, ready: dict):
        self.ready = ready
        self.endpoint = ready["endpoint"]
        admin = ready["admin"]
        self.admin = (admin["access_key_id"], admin["secret_access_key"], None)

    def client(self, service: str, creds: tuple, region: str = "us-east-1") -> object:
        key, secret, token = creds
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=CONFIG,
        )

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def raw(self, service: str, creds: tuple, body: str, target: str | None = None):
        """A signed request whose raw response we inspect."""
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        if target:
            headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
        request = AWSRequest(method="POST", url=self.endpoint + "/", data=body, headers=headers)
        SigV4Auth(Credentials(*creds), service, "us-east-1").add_auth(request)
        prepared = request.prepare()
        data = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
        req = urllib.request.Request(
            prepared.url, data=data, headers=dict(prepared.headers), method="POST"
        )
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read().decode()


def code_of(err: ClientError) -> str:
    return err.response["Error"]["Code"]


def expect_error(fn, code: str, what: str) -> ClientError:
    try:
        fn()
    except ClientError as err:
        check(code_of(err) == code, f"{what} -> {code} (got {code_of(err)})")
        return err
    raise AssertionError(f"{what}: expected {code}, call succeeded")


def check_query_error_xml(body: str, code: str, what: str) -> None:
    root = ET.fromstring(body)
    tag = root.tag.split("}")[-1]
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    error = root.find(f"{ns}Error")
    check(
        tag == "ErrorResponse"
        and root.find(f"{ns}Errors") is None
        and error is not None
        and error.findtext(f"{ns}Type") == "Sender"
        and error.findtext(f"{ns}Code") == code
        and bool(error.findtext(f"{ns}Message"))
        and bool(root.findtext(f"{ns}RequestId")),
        f"{what}: raw XML is <ErrorResponse><Error><Type/><Code>{code}</Code><Message/></Error><RequestId/>",
    )


def report_rows(iam) -> list[dict]:
    content = iam.get_credential_report()["Content"].decode()
    return list(csv.DictReader(io.StringIO(content)))


def main() -> int:
    print("start-up (process start -> ready line):")
    times = []
    for _ in range(5):
        proc, ready, elapsed = start("--bootstrap-admin", "--exit-on-stdin-eof")
        times.append(elapsed)
        proc.stdin.close()
        proc.wait(timeout=10)
    print(f"  runs: {', '.join(f'{t:.3f}s' for t in times)}; median {statistics.median(times):.3f}s")

    proc, ready, elapsed = start("--bootstrap-admin", "--exit-on-stdin-eof")
    try:
        run(Emulator(ready))
    finally:
        proc.stdin.close()  # the launcher must exit on stdin EOF
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("launcher did not exit on stdin EOF")
    check(code == 0, "launcher exits 0 when stdin closes")
    check(proc.stdout.read() == b"", "nothing on stdout after the ready line")

    proc, _, _ = start()
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(timeout=10) == 0, "launcher exits 0 on SIGTERM")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, ready, _ = start("--port", str(port))
    check(ready["admin"] is None and ready["port"] == port,
          "--port N binds N; without --bootstrap-admin, admin is null")
    proc.send_signal(signal.SIGINT)
    check(proc.wait(timeout=10) == 0, "launcher exits 0 on SIGINT")
    print(f"\nALL {len(CHECKS)} CHECKS PASSED")
    return 0


def run(emu: Emulator) -> None:
    print("ready line:", json.dumps(emu.ready))
    check(
        set(emu.ready) == {"endpoint", "port", "account_id", "admin"}
        and emu.ready["endpoint"] == f"http://127.0.0.1:{emu.ready['port']}"
        and emu.ready["account_id"] == ACCOUNT
        and emu.ready["admin"]["user"] == "keyturn-admin",
        "ready line has the documented keys",
    )
    iam = emu.client("iam", emu.admin)
    sts = emu.client("sts", emu.admin)
    check(iam.get_user()["User"]["UserName"] == "keyturn-admin", "admin key works (GetUser)")

    print("auth errors:")
    bad_secret = (emu.admin[0], "x" * 40, None)
    expect_error(lambda: emu.client("iam", bad_secret).list_users(), "SignatureDoesNotMatch",
                 "IAM with a wrong secret")
    status, _, body = emu.raw("iam", bad_secret, "Action=ListUsers&Version=2010-05-08")
    check(status == 403, "wrong secret -> HTTP 403")
    check_query_error_xml(body, "SignatureDoesNotMatch", "IAM wrong secret")
    status, _, body = emu.raw("sts", bad_secret, "Action=GetCallerIdentity&Version=2011-06-15")
    check_query_error_xml(body, "SignatureDoesNotMatch", "STS wrong secret")
    expect_error(lambda: emu.client("iam", ("AKIAUNKNOWNUNKNOWN00", "x" * 40, None)).list_users(),
                 "InvalidClientTokenId", "IAM with an unknown key id")
    status, headers, body = emu.raw("organizations", bad_secret, "{}",
                                    target="AWSOrganizationsV20161128.ListAccounts")
    check(json.loads(body)["__type"] == "InvalidSignatureException"
          and headers["x-amzn-ErrorType"] == "InvalidSignatureException",
          "Organizations wrong secret -> JSON InvalidSignatureException")
    expect_error(lambda: emu.client("kms", ("AKIAUNKNOWNUNKNOWN00", "x" * 40, None)).list_keys(),
                 "UnrecognizedClientException", "KMS with an unknown key id")

    iam.create_user(UserName="alice")
    alice_key = iam.create_access_key(UserName="alice")["AccessKey"]
    alice = (alice_key["AccessKeyId"], alice_key["SecretAccessKey"], None)
    alice_iam = emu.client("iam", alice)
    check(emu.client("sts", alice).get_caller_identity()["Arn"].endswith(":user/alice"),
          "a user key without policies may still call sts:GetCallerIdentity")
    err = expect_error(lambda: alice_iam.create_access_key(UserName="alice"), "AccessDenied",
                       "user without permissions calls CreateAccessKey")
    message = err.response["Error"]["Message"]
    check("arn:aws:iam::123456789012:user/alice is not authorized to perform: iam:CreateAccessKey"
          " on resource: arn:aws:iam::123456789012:user/alice" in message,
          f"AccessDenied names the action and resource ({message})")
    status, _, body = emu.raw("iam", alice, "Action=CreateAccessKey&Version=2010-05-08")
    check(status == 403, "AccessDenied -> HTTP 403")
    check_query_error_xml(body, "AccessDenied", "IAM AccessDenied")
    status, _, body = emu.raw("organizations", alice, "{}",
                              target="AWSOrganizationsV20161128.ListAccounts")
    check(json.loads(body)["__type"] == "AccessDeniedException",
          "Organizations AccessDenied -> JSON AccessDeniedException")

    print("Inactive / deleted keys:")
    alice_sts = emu.client("sts", alice)
    iam.update_access_key(UserName="alice", AccessKeyId=alice[0], Status="Inactive")
    expect_error(alice_sts.get_caller_identity, "InvalidClientTokenId", "Inactive key")
    status, _, body = emu.raw("iam", alice, "Action=ListUsers&Version=2010-05-08")
    check_query_error_xml(body, "InvalidClientTokenId", "Inactive key")
    check("security token included in the request is invalid" in body,
          "Inactive key message is AWS's")
    iam.update_access_key(UserName="alice", AccessKeyId=alice[0], Status="Active")
    check(alice_sts.get_caller_identity()["Account"] == ACCOUNT, "key Active again -> works")
    iam.delete_access_key(UserName="alice", AccessKeyId=alice[0])
    expect_error(alice_sts.get_caller_identity, "InvalidClientTokenId", "deleted key")

    print("backdating / last used:")
    iam.create_user(UserName="bob")
    bob_key = iam.create_access_key(UserName="bob")["AccessKey"]
    bob = (bob_key["AccessKeyId"], bob_key["SecretAccessKey"], None)
    status, body = emu.call("POST", "/_keyturn/access-key", {
        "access_key_id": bob[0], "create_date": "2025-01-01T00:00:00Z",
        "last_used": "2025-06-01T12:30:00Z", "last_used_service": "s3",
        "last_used_region": "eu-west-1"})
    check(status == 200 and body["create_date"] == "2025-01-01T00:00:00+00:00",
          f"POST /_keyturn/access-key answers the key ({body})")
    meta = iam.list_access_keys(UserName="bob")["AccessKeyMetadata"][0]
    check(meta["CreateDate"].isoformat() == "2025-01-01T00:00:00+00:00",
          "ListAccessKeys shows the backdated CreateDate")
    used = iam.get_access_key_last_used(AccessKeyId=bob[0])["AccessKeyLastUsed"]
    check(used["LastUsedDate"].isoformat() == "2025-06-01T12:30:00+00:00"
          and used["ServiceName"] == "s3" and used["Region"] == "eu-west-1",
          "GetAccessKeyLastUsed shows the backdated last use")
    expect_error(lambda: emu.client("sts", (bob[0], "y" * 40, None)).get_caller_identity(),
                 "SignatureDoesNotMatch", "bob's key with a wrong secret")
    used = iam.get_access_key_last_used(AccessKeyId=bob[0])["AccessKeyLastUsed"]
    check(used["LastUsedDate"].year == 2025, "a rejected request does not move LastUsedDate")
    emu.client("sts", bob).get_caller_identity()
    used = iam.get_access_key_last_used(AccessKeyId=bob[0])["AccessKeyLastUsed"]
    check(used["LastUsedDate"].year > 2025 and used["ServiceName"] == "sts",
          "an authenticated request moves LastUsedDate to now")
    emu.call("POST", "/_keyturn/access-key", {"access_key_id": bob[0], "last_used": None})
    used = iam.get_access_key_last_used(AccessKeyId=bob[0])["AccessKeyLastUsed"]
    check("LastUsedDate" not in used and used["ServiceName"] == "N/A" and used["Region"] == "N/A",
          "last_used null -> never used (no LastUsedDate, N/A/N/A)")
    status, body = emu.call("POST", "/_keyturn/access-key", {"access_key_id": "AKIANOPE"})
    check(status == 404 and "error" in body, "unknown key -> 404 JSON error")
    emu.call("POST", "/_keyturn/access-key", {
        "access_key_id": bob[0], "last_used": "2025-06-01T12:30:00Z",
        "last_used_service": "s3", "last_used_region": "eu-west-1"})

    print("credential report:")
    first = iam.generate_credential_report()["State"]
    second = iam.generate_credential_report()["State"]
    check((first, second) == ("STARTED", "COMPLETE"),
          "GenerateCredentialReport: STARTED, then COMPLETE")
    report = iam.get_credential_report()
    header = report["Content"].decode().splitlines()[0]
    check(header == (
        "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,"
        "password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,"
        "access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,"
        "access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,"
        "access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,"
        "cert_1_last_rotated,cert_2_active,cert_2_last_rotated"), "report header is AWS's")
    check(report["GeneratedTime"].year > 2015, "GeneratedTime is the generation time")
    rows = report_rows(iam)
    root = rows[0]
    check(root["user"] == "<root_account>" and root["arn"] == f"arn:aws:iam::{ACCOUNT}:root"
          and root["access_key_1_active"] == "false", "first row is <root_account> without keys")
    row = {r["user"]: r for r in rows}["bob"]
    check(row["access_key_1_active"] == "true"
          and row["access_key_1_last_rotated"] == "2025-01-01T00:00:00+00:00"
          and row["access_key_1_last_used_date"] == "2025-06-01T12:30:00+00:00"
          and row["access_key_1_last_used_region"] == "eu-west-1"
          and row["access_key_1_last_used_service"] == "s3"
          and row["access_key_2_active"] == "false" and row["access_key_2_last_rotated"] == "N/A"
          and row["password_enabled"] == "false" and row["password_last_used"] == "N/A",
          f"bob's report row reflects the backdated key ({row})")
    status, _ = emu.call("POST", "/_keyturn/root-access-key",
                         {"active": True, "last_rotated": "2024-03-01T00:00:00Z"})
    root = report_rows(iam)[0]
    check(status == 200 and root["access_key_1_active"] == "true"
          and root["access_key_1_last_rotated"] == "2024-03-01T00:00:00+00:00"
          and root["access_key_1_last_used_date"] == "N/A",
          "root-access-key endpoint shows a root key in the report")

    print("stats:")
    emu.call("POST", "/_keyturn/stats/reset")
    for _ in range(3):
        iam.list_users()
    expect_error(lambda: emu.client("organizations", emu.admin).list_roots(),
                 "AWSOrganizationsNotInUseException", "ListRoots before CreateOrganization")
    _, stats = emu.call("GET", "/_keyturn/stats")
    check(stats == {"requests": 4, "by_action": {"iam:ListUsers": 3,
                                                 "organizations:ListRoots": 1}},
          f"stats count query and JSON protocol actions ({stats})")
    _, stats = emu.call("POST", "/_keyturn/stats/reset")
    check(stats == {"requests": 0, "by_action": {}}, "stats reset")

    print("session tokens (GetSessionToken, e.g. after MFA):")
    iam.create_user(UserName="mfa-user")
    iam.put_user_policy(UserName="mfa-user", PolicyName="self", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iam:ListAccessKeys",
             "Resource": "arn:aws:iam::*:user/${aws:username}"},
            {"Effect": "Allow", "Action": "sts:GetSessionToken", "Resource": "*"}]}))
    mk = iam.create_access_key(UserName="mfa-user")["AccessKey"]
    session = emu.client("sts", (mk["AccessKeyId"], mk["SecretAccessKey"], None)).get_session_token(
        SerialNumber=f"arn:aws:iam::{ACCOUNT}:mfa/mfa-user", TokenCode="123456")["Credentials"]
    check(session["AccessKeyId"].startswith("ASIA"), "GetSessionToken issues an ASIA key")
    screds = (session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"])
    check(emu.client("sts", screds).get_caller_identity()["Arn"]
          == f"arn:aws:iam::{ACCOUNT}:user/mfa-user", "a session acts as the user who asked for it")
    check(len(emu.client("iam", screds).list_access_keys(UserName="mfa-user")["AccessKeyMetadata"]) == 1,
          "the user's own policy (${aws:username}) applies to the session")
    expect_error(lambda: emu.client("iam", screds).list_access_keys(UserName="keyturn-admin"),
                 "AccessDenied", "the session gets no more than the user")
    expect_error(lambda: emu.client("sts", (screds[0], screds[1], "wrong")).get_caller_identity(),
                 "InvalidClientTokenId", "a session key with a wrong token")

    print("propagation delay (IAM eventual consistency):")
    emu.call("POST", "/_keyturn/propagation-delay", {"seconds": 1.0})
    fresh = iam.create_access_key(UserName="mfa-user")["AccessKey"]
    fresh_creds = (fresh["AccessKeyId"], fresh["SecretAccessKey"], None)
    expect_error(lambda: emu.client("sts", fresh_creds).get_caller_identity(),
                 "InvalidClientTokenId", "a key younger than the delay")
    check(emu.client("sts", (mk["AccessKeyId"], mk["SecretAccessKey"], None))
          .get_caller_identity()["Arn"].endswith(":user/mfa-user"),
          "keys created before the delay was set keep working")
    time.sleep(1.1)
    check(emu.client("sts", fresh_creds).get_caller_identity()["Arn"].endswith(":user/mfa-user"),
          "the new key works once the delay has passed")
    emu.call("POST", "/_keyturn/propagation-delay", {"seconds": 0})

    print("reset:")
    status, body = emu.call("POST", "/_keyturn/reset")
    check(status == 200 and body == emu.ready, "reset answers the ready line (same admin key)")
    names = [u["UserName"] for u in iam.list_users()["Users"]]
    check(names == ["keyturn-admin"], "reset removed all other state; admin key still works")
    expect_error(lambda: emu.client("iam", ("AKIAUNKNOWNUNKNOWN00", "x" * 40, None)).list_users(),
                 "InvalidClientTokenId", "auth is still on after reset")

    print("seed:")
    users = [{"name": f"seed-{i:05d}", "keys": [
        {"status": "Active", "create_date": "2024-01-01T00:00:00Z",
         "last_used": None if i % 2 else "2024-06-01T00:00:00Z"}]} for i in range(5000)]
    users[0]["keys"].append({"status": "Inactive", "create_date": "2023-01-01T00:00:00Z"})
    began = time.monotonic()
    status, body = emu.call("POST", "/_keyturn/seed", {"users": users})
    seeded = time.monotonic() - began
    print(f"  seed of 5000 users (5001 keys) took {seeded:.3f}s")
    check(status == 200 and len(body["users"]) == 5000 and seeded < 10, "seed 5000 users")
    first = body["users"][0]
    seed_key = first["keys"][0]
    meta = iam.list_access_keys(UserName="seed-00000")["AccessKeyMetadata"]
    check(len(meta) == 2 and meta[1]["Status"] == "Inactive", "seeded keys are listed")
    began = time.monotonic()
    all_users = iam.list_users(MaxItems=10)
    listed = time.monotonic() - began
    check(len(all_users["Users"]) == 5001 and not all_users["IsTruncated"],
          f"quirk: ListUsers ignores MaxItems (5001 users in one page, {listed:.2f}s)")
    began = time.monotonic()
    for user in body["users"][:200]:
        iam.get_access_key_last_used(AccessKeyId=user["keys"][0]["access_key_id"])
    per_call = (time.monotonic() - began) / 200
    print(f"  GetAccessKeyLastUsed with 5001 users: {per_call * 1000:.1f} ms/call")
    seeded_sts = emu.client("sts", (seed_key["access_key_id"], seed_key["secret_access_key"], None))
    check(seeded_sts.get_caller_identity()["Arn"].endswith("user/seed-00000"),
          "a seeded key authenticates")
    inactive = first["keys"][1]
    expect_error(lambda: emu.client("sts", (inactive["access_key_id"],
                                            inactive["secret_access_key"], None)).get_caller_identity(),
                 "InvalidClientTokenId", "seeded Inactive key")
    iam.generate_credential_report()
    rows = report_rows(iam)
    check(len(rows) == 5002, "credential report has root + 5001 users")

    print("concurrency:")
    def identity(_: int) -> str:
        return emu.client("sts", emu.admin).get_caller_identity()["Account"]
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(identity, range(80)))
    check(accounts == [ACCOUNT] * 80,
          f"80 requests on 8 threads all authenticate ({time.monotonic() - began:.2f}s)")

    print("multi-account:")
    multi_account(emu, iam, sts)

    print("quirks:")
    quirks(emu, iam)

    print("fault injection:")
    faults(emu, iam)

    print("Secrets Manager stages:")
    secrets_manager(emu)

    print("CloudTrail:")
    cloudtrail(emu, iam)


def multi_account(emu: Emulator, iam, sts) -> None:
    org = emu.client("organizations", emu.admin)
    org.create_organization(FeatureSet="ALL")
    # Recipe A: CreateAccount names the role -> KeyturnAudit exists in the new account.
    status_a = org.create_account(Email="a@example.com", AccountName="member-a",
                                  RoleName="KeyturnAudit")["CreateAccountStatus"]
    # Recipe B: default OrganizationAccountAccessRole, then create KeyturnAudit through it.
    status_b = org.create_account(Email="b@example.com",
                                  AccountName="member-b")["CreateAccountStatus"]
    check(status_a["State"] == "SUCCEEDED" and status_b["State"] == "SUCCEEDED",
          "CreateAccount is SUCCEEDED at once (real AWS: IN_PROGRESS, poll "
          "DescribeCreateAccountStatus)")
    member_a, member_b = status_a["AccountId"], status_b["AccountId"]
    accounts = {a["Id"] for a in org.list_accounts()["Accounts"]}
    check(accounts == {ACCOUNT, member_a, member_b}, "ListAccounts lists the 3 accounts")
    page = org.list_accounts(MaxResults=1)
    check(len(page["Accounts"]) == 1 and "NextToken" in page,
          "quirk: Organizations ListAccounts honours MaxResults/NextToken")

    def assume(account: str, role: str, creds=emu.admin) -> tuple:
        c = emu.client("sts", creds).assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{role}", RoleSessionName="keyturn")["Credentials"]
        return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]

    bootstrap = assume(member_b, "OrganizationAccountAccessRole")
    boot_iam = emu.client("iam", bootstrap)
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole"}]}
    boot_iam.create_role(RoleName="KeyturnAudit", AssumeRolePolicyDocument=json.dumps(trust))
    boot_iam.put_role_policy(RoleName="KeyturnAudit", PolicyName="audit", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:*",
                                                  "Resource": "*"}]}))
    for account in (member_a, member_b):
        creds = assume(account, "KeyturnAudit")
        ident = emu.client("sts", creds).get_caller_identity()
        check(ident["Account"] == account
              and ident["Arn"] == f"arn:aws:sts::{account}:assumed-role/KeyturnAudit/keyturn",
              f"assumed KeyturnAudit in {account}: GetCallerIdentity is that account")
        m_iam = emu.client("iam", creds)
        m_iam.create_user(UserName=f"svc-{account}")
        key = m_iam.create_access_key(UserName=f"svc-{account}")["AccessKey"]
        check(m_iam.get_user(UserName=f"svc-{account}")["User"]["Arn"]
              == f"arn:aws:iam::{account}:user/svc-{account}",
              f"IAM calls with the temporary credentials land in {account}")
        check(key["AccessKeyId"].startswith("AKIA"), "member key created")
        if account == member_a:
            try:
                m_iam.create_access_key()
                outcome = "succeeded"
            except ClientError as err:
                outcome = f"{code_of(err)}: {err.response['Error']['Message']}"
            print(f"  quirk: CreateAccessKey without UserName on role credentials -> {outcome}")
    admin_names = {u["UserName"] for u in iam.list_users()["Users"]}
    check(not any(n.startswith("svc-") for n in admin_names),
          "member-account users are not visible in the admin account")
    status, body = emu.call("POST", "/_keyturn/role", {
        "account_id": member_a, "role_name": "Distrustful", "trust_account_id": "999999999999"})
    check(status == 200 and body["arn"] == f"arn:aws:iam::{member_a}:role/Distrustful",
          "POST /_keyturn/role creates a role in a member account")
    expect_error(lambda: assume(member_a, "Distrustful"), "AccessDenied",
                 "AssumeRole of a role whose trust policy names another account")
    status, body = emu.call("POST", "/_keyturn/role", {
        "account_id": "210987654321", "role_name": "KeyturnAudit"})
    creds = assume("210987654321", "KeyturnAudit")
    check(emu.client("sts", creds).get_caller_identity()["Account"] == "210987654321",
          "/_keyturn/role works for an account outside any organization")
    missing = f"arn:aws:iam::{member_a}:role/DoesNotExist"
    err = expect_error(lambda: sts.assume_role(RoleArn=missing, RoleSessionName="keyturn"),
                       "AccessDenied", "AssumeRole of a missing role")
    message = err.response["Error"]["Message"]
    check(message == f"User: arn:aws:iam::{ACCOUNT}:user/keyturn-admin is not authorized to "
          f"perform: sts:AssumeRole on resource: {missing}", f"AssumeRole message ({message})")


def quirks(emu: Emulator, iam) -> None:
    iam.create_user(UserName="carol")
    created = iam.create_access_key(UserName="carol")["AccessKey"]
    print("  CreateAccessKey returns:", sorted(created), "CreateDate", created["CreateDate"])
    carol = (created["AccessKeyId"], created["SecretAccessKey"], None)
    check(created["Status"] == "Active" and len(created["SecretAccessKey"]) == 40,
          "CreateAccessKey: Active key with a 40-char secret")
    never = iam.get_access_key_last_used(AccessKeyId=carol[0])
    print("  GetAccessKeyLastUsed (never used):", never["AccessKeyLastUsed"])
    # Resource element: allow iam:CreateAccessKey only on dave -> carol may not create her own.
    iam.put_user_policy(UserName="carol", PolicyName="only-dave", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["iam:CreateAccessKey", "iam:ListAccessKeys"],
            "Resource": f"arn:aws:iam::{ACCOUNT}:user/dave"}]}))
    carol_iam = emu.client("iam", carol)
    expect_error(lambda: carol_iam.create_access_key(), "AccessDenied",
                 "Resource element is enforced: a policy on user/dave does not cover carol")
    # The usual self-service rotation policy, with a policy variable.
    iam.put_user_policy(UserName="carol", PolicyName="self", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow",
            "Action": ["iam:CreateAccessKey", "iam:ListAccessKeys", "iam:UpdateAccessKey",
                       "iam:DeleteAccessKey", "iam:GetAccessKeyLastUsed"],
            "Resource": "arn:aws:iam::*:user/${aws:username}"}]}))
    own = carol_iam.create_access_key()["AccessKey"]
    check(own["UserName"] == "carol",
          "a user's key may CreateAccessKey without UserName (self, ${aws:username} policy)")
    check(len(carol_iam.list_access_keys()["AccessKeyMetadata"]) == 2,
          "ListAccessKeys without UserName lists the caller's keys")
    carol_iam.get_access_key_last_used(AccessKeyId=own["AccessKeyId"])
    expect_error(lambda: carol_iam.list_access_keys(UserName="keyturn-admin"), "AccessDenied",
                 "the self-service policy does not reach another user")
    admin_key = emu.admin[0]
    expect_error(lambda: carol_iam.update_access_key(AccessKeyId=admin_key, Status="Inactive"),
                 "AccessDenied", "UpdateAccessKey without UserName on another user's key")
    iam.put_user_policy(UserName="carol", PolicyName="deny-delete", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Action": "iam:DeleteAccessKey",
            "Resource": f"arn:aws:iam::{ACCOUNT}:user/carol"}]}))
    expect_error(lambda: carol_iam.delete_access_key(AccessKeyId=own["AccessKeyId"]),
                 "AccessDenied", "an explicit Deny on a specific resource applies")
    iam.put_user_policy(UserName="carol", PolicyName="mfa-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "iam:*", "Resource": "*",
            "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}}}]}))
    carol_iam.list_access_keys()
    check(True, "an Allow whose Condition does not hold is not an explicit deny")
    expect_error(lambda: carol_iam.create_access_key(), "LimitExceeded", "a third key for a user")
    iam.create_login_profile(UserName="carol", Password="Secret-Passw0rd!")
    iam.generate_credential_report()
    row = {r["user"]: r for r in report_rows(iam)}["carol"]
    check(row["password_enabled"] == "true" and row["password_last_used"] == "N/A"
          and row["password_last_changed"].endswith("+00:00")
          and row["password_next_rotation"] == "N/A"
          and row["access_key_2_active"] == "true",
          "report row of a user with a password and two keys")
    expect_error(lambda: iam.delete_user(UserName="carol"), "DeleteConflict",
                 "DeleteUser of a user that still has access keys")


def faults(emu: Emulator, iam) -> None:
    """POST /_keyturn/faults: throttle, error, drop-response, delay, seed."""
    admin = emu.admin
    status, body = emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "iam:ListUsers", "mode": "throttle", "count": 1}]})
    check(status == 200 and body["rules"][0]["hits"] == 0, "POST /_keyturn/faults sets the rules")
    status, _, text = emu.raw("iam", admin, "Action=ListUsers&Version=2010-05-08")
    check(status == 400, "throttled IAM call -> HTTP 400")
    check_query_error_xml(text, "Throttling", "throttled IAM call")
    check("Rate exceeded" in text, "throttle message is AWS's 'Rate exceeded'")
    status, _, _ = emu.raw("iam", admin, "Action=ListUsers&Version=2010-05-08")
    check(status == 200, "count: 1 -> only the first matching call is throttled")
    # boto3's standard retry treats it as throttling and retries it.
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "iam:List*", "mode": "throttle", "count": 2}]})
    retrying = boto3.client("iam", endpoint_url=emu.endpoint, region_name="us-east-1",
                            aws_access_key_id=admin[0], aws_secret_access_key=admin[1],
                            config=Config(retries={"total_max_attempts": 3, "mode": "standard"}))
    retrying.list_users()
    _, body = emu.call("GET", "/_keyturn/faults")
    check(body["rules"][0]["hits"] == 2 and body["rules"][0]["matched"] == 3,
          "an SDK's standard retry absorbs two throttles (3 attempts, GET shows hits/matched)")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "organizations:*", "mode": "throttle"},
        {"action": "kms:ListKeys", "mode": "throttle"}]})
    status, headers, text = emu.raw("organizations", admin, "{}",
                                    target="AWSOrganizationsV20161128.ListAccounts")
    check(status == 400 and json.loads(text)["__type"] == "TooManyRequestsException"
          and headers["x-amzn-ErrorType"] == "TooManyRequestsException",
          "throttled Organizations call -> JSON TooManyRequestsException (its real code)")
    status, headers, text = emu.raw("kms", admin, "{}", target="TrentService.ListKeys")
    check(status == 400 and json.loads(text)["__type"] == "ThrottlingException"
          and headers["Content-Type"] == "application/x-amz-json-1.1",
          "throttled awsJson call -> ThrottlingException, the request's JSON version")

    print("  error rules (match on request parameters):")
    iam.create_user(UserName="bad-user")
    iam.create_user(UserName="good-user")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "iam:CreateAccessKey", "mode": "error", "code": "AccessDenied",
         "status": 403, "message": "injected denial", "match": {"UserName": "bad-user"}}]})
    err = expect_error(lambda: iam.create_access_key(UserName="bad-user"), "AccessDenied",
                       "error rule answers its code for a matching UserName")
    check(err.response["Error"]["Message"] == "injected denial"
          and err.response["ResponseMetadata"]["HTTPStatusCode"] == 403,
          "error rule: given message and status")
    check(iam.list_access_keys(UserName="bad-user")["AccessKeyMetadata"] == [],
          "an error rule answers before moto: the call did not take effect")
    iam.create_access_key(UserName="good-user")
    expect_error(lambda: iam.create_access_key(UserName="bad-user"), "AccessDenied",
                 "an error rule without count is permanent")
    _, body = emu.call("GET", "/_keyturn/faults")
    check(body["rules"][0]["hits"] == 2 and body["rules"][0]["matched"] == 2,
          "a call that does not match the parameters is not counted")

    print("  drop-response:")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "iam:CreateAccessKey", "mode": "drop-response", "count": 1}]})
    try:
        emu.raw("iam", admin, "Action=CreateAccessKey&UserName=good-user&Version=2010-05-08")
        dropped = "answered"
    except (ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError) as err:
        dropped = type(err).__name__
    check(dropped != "answered", f"drop-response: the connection closes with no response ({dropped})")
    check(len(iam.list_access_keys(UserName="good-user")["AccessKeyMetadata"]) == 2,
          "drop-response: the call took effect (the second key exists)")
    status, _, _ = emu.raw("iam", admin, "Action=ListUsers&Version=2010-05-08")
    check(status == 200, "the next call is answered normally")

    print("  delay and seed:")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "sts:GetCallerIdentity", "mode": "delay", "ms": 300}]})
    began = time.monotonic()
    emu.client("sts", admin).get_caller_identity()
    check(time.monotonic() - began >= 0.3, "delay: the answer comes after ms")

    def pattern(seed: int) -> list[int]:
        emu.call("POST", "/_keyturn/faults", {"seed": seed, "rules": [
            {"action": "sts:GetCallerIdentity", "mode": "throttle", "fraction": 0.5}]})
        return [emu.raw("sts", admin, "Action=GetCallerIdentity&Version=2011-06-15")[0]
                for _ in range(20)]

    first, second = pattern(7), pattern(7)
    check(first == second and 400 in first and 200 in first,
          f"seed: the same seed throttles the same calls ({first.count(400)}/20 throttled)")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "cloudtrail:LookupEvents", "mode": "throttle", "rate": 2}]})
    codes = [emu.raw("cloudtrail", admin, "{}",
                     target="com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents")[0]
             for _ in range(6)]
    check(codes[:2] == [200, 200] and 400 in codes[2:],
          f"rate: 2 requests/s pass, a burst beyond is throttled ({codes})")
    status, body = emu.call("POST", "/_keyturn/faults", {"rules": [{"action": "iam", "mode": "x"}]})
    check(status == 400 and "action" in body["error"], "a bad rule -> 400 naming the problem")
    status, body = emu.call("POST", "/_keyturn/faults", {"rules": []})
    check(status == 200 and body["rules"] == [], "rules: [] removes every rule")


def secrets_manager(emu: Emulator) -> None:
    sm = emu.client("secretsmanager", emu.admin)
    arn = sm.create_secret(Name="ci/bot", SecretString='{"v": 1}')["ARN"]
    old = sm.get_secret_value(SecretId="ci/bot")["VersionId"]
    token = "11111111-2222-3333-4444-555555555555"
    sm.put_secret_value(SecretId="ci/bot", SecretString='{"v": 2}', ClientRequestToken=token,
                        VersionStages=["AWSPENDING"])
    expect_error(lambda: sm.put_secret_value(SecretId="ci/bot", SecretString='{"v": 3}',
                                             ClientRequestToken=token, VersionStages=["AWSPENDING"]),
                 "ResourceExistsException", "PutSecretValue: same token, different value")
    again = sm.put_secret_value(SecretId="ci/bot", SecretString='{"v": 2}',
                                ClientRequestToken=token, VersionStages=["AWSPENDING"])
    check(again["VersionId"] == token, "PutSecretValue: same token, same value is idempotent")
    check(sm.get_secret_value(SecretId="ci/bot", VersionStage="AWSPENDING")["SecretString"]
          == '{"v": 2}', "the AWSPENDING version kept its first value")
    sm.update_secret_version_stage(SecretId="ci/bot", VersionStage="AWSCURRENT",
                                   MoveToVersionId=token, RemoveFromVersionId=old)
    plain = sm.get_secret_value(SecretId="ci/bot")
    check(plain["SecretString"] == '{"v": 2}' and plain["VersionId"] == token,
          "plain GetSecretValue returns AWSCURRENT after UpdateSecretVersionStage")
    batch = sm.batch_get_secret_value(SecretIdList=["ci/bot"])["SecretValues"][0]
    check(batch["SecretString"] == '{"v": 2}', "BatchGetSecretValue returns AWSCURRENT too")
    stages = sm.describe_secret(SecretId="ci/bot")["VersionIdsToStages"]
    check(stages == {old: ["AWSPREVIOUS"], token: ["AWSPENDING", "AWSCURRENT"]},
          f"DescribeSecret VersionIdsToStages after the move ({stages})")
    sm.update_secret_version_stage(SecretId="ci/bot", VersionStage="AWSPENDING",
                                   RemoveFromVersionId=token)
    third = "66666666-2222-3333-4444-555555555555"
    sm.put_secret_value(SecretId="ci/bot", SecretString='{"v": 3}', ClientRequestToken=third,
                        VersionStages=["AWSPENDING"])
    sm.update_secret_version_stage(SecretId="ci/bot", VersionStage="AWSCURRENT",
                                   MoveToVersionId=third, RemoveFromVersionId=token)
    sm.update_secret_version_stage(SecretId="ci/bot", VersionStage="AWSPENDING",
                                   RemoveFromVersionId=third)
    stages = sm.describe_secret(SecretId="ci/bot")["VersionIdsToStages"]
    check(stages == {token: ["AWSPREVIOUS"], third: ["AWSCURRENT"]},
          "a version with no labels left is not listed in VersionIdsToStages")
    listed = sm.list_secret_version_ids(SecretId="ci/bot")
    check(listed["ARN"] == arn and {v["VersionId"] for v in listed["Versions"]} == {token, third},
          "ListSecretVersionIds: the secret's ARN, no unlabelled versions")
    deprecated = sm.list_secret_version_ids(SecretId="ci/bot", IncludeDeprecated=True)
    check(len(deprecated["Versions"]) == 3, "ListSecretVersionIds IncludeDeprecated lists all 3")
    # Rotation in progress: AWSPENDING on a version other than AWSCURRENT.
    pending = "77777777-2222-3333-4444-555555555555"
    sm.put_secret_value(SecretId="ci/bot", SecretString='{"v": 4}', ClientRequestToken=pending,
                        VersionStages=["AWSPENDING"])
    expect_error(lambda: sm.rotate_secret(SecretId="ci/bot", RotateImmediately=False),
                 "InvalidRequestException", "RotateSecret while AWSPENDING is on another version")
    sm.update_secret_version_stage(SecretId="ci/bot", VersionStage="AWSCURRENT",
                                   MoveToVersionId=pending, RemoveFromVersionId=third)
    rotated = sm.rotate_secret(SecretId="ci/bot", RotateImmediately=False)
    check(bool(rotated["VersionId"]),
          "RotateSecret after a finished rotation (AWSPENDING on AWSCURRENT) is allowed")


def cloudtrail(emu: Emulator, iam) -> None:
    iam.create_user(UserName="trail-user")
    key = iam.create_access_key(UserName="trail-user")["AccessKey"]
    creds = (key["AccessKeyId"], key["SecretAccessKey"], None)
    iam.put_user_policy(UserName="trail-user", PolicyName="ct", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [
            "cloudtrail:LookupEvents", "iam:ListUsers"], "Resource": "*"}]}))
    user_iam = emu.client("iam", creds)
    user_iam.list_users()
    expect_error(lambda: user_iam.create_user(UserName="nope"), "AccessDenied",
                 "trail-user may not CreateUser")
    emu.call("POST", "/_keyturn/source-ip", {"ip": "10.0.4.17"})
    emu.client("sts", creds).get_caller_identity()
    emu.call("POST", "/_keyturn/source-ip", {"ip": None})
    emu.client("secretsmanager", creds, region="eu-west-1")
    try:
        emu.client("secretsmanager", creds, region="eu-west-1").list_secrets()
    except ClientError:
        pass  # AccessDenied is recorded too
    expect_error(lambda: emu.client("sts", (creds[0], "x" * 40, None)).get_caller_identity(),
                 "SignatureDoesNotMatch", "a request with a wrong secret")
    ct = emu.client("cloudtrail", emu.admin)
    by_key = [{"AttributeKey": "AccessKeyId", "AttributeValue": creds[0]}]
    events = ct.lookup_events(LookupAttributes=by_key)["Events"]
    names = [e["EventName"] for e in events]
    check(names == ["GetCallerIdentity", "CreateUser", "ListUsers"],
          f"us-east-1: IAM/STS events of the key, newest first, rejected signature not recorded ({names})")
    record = json.loads(events[0]["CloudTrailEvent"])
    check(events[0]["EventSource"] == "sts.amazonaws.com" and events[0]["ReadOnly"] == "true"
          and events[0]["Username"] == "trail-user" and events[0]["AccessKeyId"] == creds[0],
          "Event: EventSource, ReadOnly (a string), Username, AccessKeyId")
    check(record["sourceIPAddress"] == "10.0.4.17" and record["userAgent"].startswith("Boto3/")
          and record["awsRegion"] == "us-east-1" and record["userIdentity"]["type"] == "IAMUser"
          and record["userIdentity"]["arn"].endswith(":user/trail-user")
          and record["userIdentity"]["accessKeyId"] == creds[0] and record["readOnly"] is True
          and record["eventID"] == events[0]["EventId"],
          "CloudTrailEvent JSON: source IP from /_keyturn/source-ip, user agent, userIdentity")
    denied = json.loads(events[1]["CloudTrailEvent"])
    check(denied["errorCode"] == "AccessDenied" and events[1]["ReadOnly"] == "false"
          and denied["requestParameters"] == {"userName": "nope"}
          and {"ResourceType": "AWS::IAM::User", "ResourceName": "nope"} in events[1]["Resources"],
          "an AccessDenied call is recorded with errorCode, requestParameters and Resources")
    eu = emu.client("cloudtrail", emu.admin, region="eu-west-1").lookup_events(
        LookupAttributes=by_key)["Events"]
    check([e["EventName"] for e in eu] == ["ListSecrets"],
          "eu-west-1 sees only the event signed for eu-west-1")
    status, _, _ = emu.raw("sts", creds, "Action=GetCallerIdentity&Version=2011-06-15")
    headers = {"X-Keyturn-Source-Ip": "192.0.2.5"}
    request = AWSRequest(method="POST", url=emu.endpoint + "/",
                         data="Action=GetCallerIdentity&Version=2011-06-15",
                         headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
    SigV4Auth(Credentials(*creds[:2]), "sts", "us-east-1").add_auth(request)
    prepared = request.prepare()
    urllib.request.urlopen(urllib.request.Request(
        prepared.url, data=prepared.body.encode(), headers=dict(prepared.headers), method="POST"))
    latest = ct.lookup_events(LookupAttributes=by_key, MaxResults=1)["Events"][0]
    check(json.loads(latest["CloudTrailEvent"])["sourceIPAddress"] == "192.0.2.5",
          "the X-Keyturn-Source-Ip header sets the recorded source IP")

    print("  paging, attributes, window:")
    status, body = emu.call("POST", "/_keyturn/cloudtrail/events", {"events": [
        {"access_key_id": creds[0], "event_name": "ListBuckets", "event_source": "s3.amazonaws.com",
         "aws_region": "us-east-1", "source_ip": "10.0.9.9", "user_agent": "aws-cli/2.15.30",
         "hours_ago": 2, "count": 120, "interval_seconds": 30},
        {"access_key_id": creds[0], "event_name": "DescribeInstances",
         "event_source": "ec2.amazonaws.com", "aws_region": "us-east-1", "hours_ago": 24 * 100}]})
    check(status == 200 and body["injected"] == 121, "POST /_keyturn/cloudtrail/events injects")
    pages, seen, token = 0, [], None
    while True:
        kwargs = {"NextToken": token} if token else {}
        page = ct.lookup_events(LookupAttributes=by_key, MaxResults=50, **kwargs)
        pages += 1
        seen += page["Events"]
        token = page.get("NextToken")
        if not token:
            break
    times = [e["EventTime"] for e in seen]
    check(pages == 3 and len(seen) == 125 and len({e["EventId"] for e in seen}) == 125
          and times == sorted(times, reverse=True),
          f"NextToken pages 125 events in 3 pages of <= 50, newest first, none twice ({pages} pages)")
    check(not any(e["EventName"] == "DescribeInstances" for e in seen),
          "an event older than 90 days is not returned")
    paginated = [e for p in ct.get_paginator("lookup_events").paginate(
        LookupAttributes=by_key, PaginationConfig={"PageSize": 7}) for e in p["Events"]]
    check(len(paginated) == 125, "boto3's LookupEvents paginator walks every page")
    window = ct.lookup_events(LookupAttributes=by_key, StartTime=datetime.now(timezone.utc)
                              - timedelta(hours=1))["Events"]
    check([e["EventName"] for e in window][-1] == "ListUsers" and len(window) == 5,
          "StartTime: only the last hour's 5 events")
    old_end = ct.lookup_events(LookupAttributes=by_key, EndTime=datetime.now(timezone.utc)
                               - timedelta(hours=1))["Events"]
    check(len(old_end) == 50 and all(e["EventName"] == "ListBuckets" for e in old_end),
          "EndTime: only older events")
    s3 = ct.lookup_events(LookupAttributes=[{"AttributeKey": "EventSource",
                                             "AttributeValue": "s3.amazonaws.com"}])
    check(len(s3["Events"]) == 50 and "NextToken" in s3, "EventSource lookup")
    for key_name, value, want in (("EventName", "CreateUser", 1), ("Username", "trail-user", 50),
                                  ("ReadOnly", "false", 5), ("ResourceName", "nope", 1)):
        got = ct.lookup_events(LookupAttributes=[{"AttributeKey": key_name,
                                                  "AttributeValue": value}])["Events"]
        check(len(got) >= want and all(key_name != "EventName" or e["EventName"] == value
                                       for e in got), f"{key_name} lookup")
    expect_error(lambda: ct.lookup_events(LookupAttributes=by_key * 2),
                 "InvalidLookupAttributesException", "two lookup attributes")
    expect_error(lambda: ct.lookup_events(MaxResults=51), "InvalidMaxResultsException",
                 "MaxResults 51")
    expect_error(lambda: ct.lookup_events(StartTime=datetime.now(timezone.utc),
                                          EndTime=datetime.now(timezone.utc) - timedelta(hours=1)),
                 "InvalidTimeRangeException", "StartTime after EndTime")
    first = ct.lookup_events(LookupAttributes=by_key, MaxResults=5)
    expect_error(lambda: ct.lookup_events(MaxResults=5, NextToken=first["NextToken"]),
                 "InvalidNextTokenException", "a NextToken used with other parameters")

    print("  time travel:")
    status, body = emu.call("POST", "/_keyturn/cloudtrail/events",
                            {"access_key_id": creds[0], "shift_hours": -30})
    check(status == 200 and body["shifted"] == 127, f"shift_hours moves the key's events ({body})")
    recent = ct.lookup_events(LookupAttributes=by_key, StartTime=datetime.now(timezone.utc)
                              - timedelta(hours=24))["Events"]
    check(recent == [], "after shifting 30 h back, nothing in the last 24 h")
    status, body = emu.call("GET", f"/_keyturn/cloudtrail/events?access_key_id={creds[0]}")
    check(status == 200 and body["count"] == 127, "GET /_keyturn/cloudtrail/events lists them")
    emu.call("POST", "/_keyturn/faults", {"rules": [
        {"action": "cloudtrail:LookupEvents", "mode": "throttle", "count": 2}]})
    expect_error(lambda: ct.lookup_events(MaxResults=1), "ThrottlingException",
                 "LookupEvents is throttled by a fault rule (both attempts)")
    emu.call("POST", "/_keyturn/faults", {"rules": []})

    print("  Account ListRegions:")
    account = emu.client("account", emu.admin)
    enabled = [r["RegionName"] for p in account.get_paginator("list_regions").paginate(
        RegionOptStatusContains=["ENABLED", "ENABLED_BY_DEFAULT"]) for r in p["Regions"]]
    check(len(enabled) == 17 and "us-east-1" in enabled and "af-south-1" not in enabled,
          "ListRegions: the 17 default regions are enabled, opt-in ones are not")
    emu.call("POST", "/_keyturn/regions", {"enabled": ["af-south-1"]})
    status = {r["RegionName"]: r["RegionOptStatus"]
              for r in account.list_regions(MaxResults=50)["Regions"]}
    check(status["af-south-1"] == "ENABLED" and status["me-south-1"] == "DISABLED"
          and status["eu-west-1"] == "ENABLED_BY_DEFAULT",
          "POST /_keyturn/regions enables an opt-in region")


if __name__ == "__main__":
    sys.exit(main())
