#!/usr/bin/env python3
"""Baseline for keyturn's benchmarks: the rotate-access-keys contract as a sequential
boto3 script, the other way people rotate keys today.

Same flow, flags, output and exit codes as `rotate-access-keys.sh` (and keyturn's
`rotate --user` contract): get-user, list-access-keys, optionally delete Inactive keys,
refuse at the two-key limit, create-access-key, verify the new key with
sts:GetCallerIdentity (bounded retries on failure only; an unverified key is deleted
again), deactivate and delete the old keys, print the new credentials.

`--user` may be repeated: the users are then rotated one after another in this one
process, reusing the clients, which is how a boto3 user would loop over a fleet.
Exit codes: 0 success, 2 invalid input / safety guard, 1 AWS failure (the worst over
all users).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

# Bounded verification: up to 8 attempts 2 s apart (same as the shell baseline).
VERIFY_ATTEMPTS = int(os.environ.get("VERIFY_ATTEMPTS", "8"))
VERIFY_SLEEP = float(os.environ.get("VERIFY_SLEEP", "2"))


class Refused(Exception):
    """Invalid input or safety guard: exit 2, nothing changed."""


def log(msg: str) -> None:
    print(f"rotate_access_keys_boto3: {msg}", file=sys.stderr)


def rotate(session: boto3.session.Session, iam, user: str, args) -> dict | None:
    try:
        arn = iam.get_user(UserName=user)["User"]["Arn"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "NoSuchEntity":
            raise Refused(f"no IAM user {user}") from None
        raise
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    active = [k["AccessKeyId"] for k in keys if k["Status"] == "Active"]
    inactive = [k["AccessKeyId"] for k in keys if k["Status"] != "Active"]

    remaining = len(active) + (0 if args.delete_inactive_keys else len(inactive))
    if remaining >= 2:
        if inactive:
            raise Refused(f"{user} has 2 keys; {inactive[0]} is Inactive: "
                          "add --delete-inactive-keys --yes")
        raise Refused(f"{user} has 2 Active keys ({', '.join(active)}); "
                      "delete one that is not in use first")

    if args.dry_run:
        plan = [f"delete-access-key {k}" for k in inactive if args.delete_inactive_keys]
        plan += ["create-access-key", "sts get-caller-identity (new key)"]
        if args.deactivate_old_keys:
            for k in active:
                plan.append(f"update-access-key {k} Inactive")
                if args.delete_inactive_keys:
                    plan.append(f"delete-access-key {k}")
        for p in plan:
            print(f"# {p}")
        return None

    if args.delete_inactive_keys:
        for k in inactive:
            iam.delete_access_key(UserName=user, AccessKeyId=k)
            log(f"deleted Inactive key {k}")

    new = iam.create_access_key(UserName=user)["AccessKey"]
    log(f"created {new['AccessKeyId']}")

    sts = session.client("sts", aws_access_key_id=new["AccessKeyId"],
                         aws_secret_access_key=new["SecretAccessKey"],
                         aws_session_token=None)
    verified, last = False, ""
    for attempt in range(1, VERIFY_ATTEMPTS + 1):
        try:
            got = sts.get_caller_identity()["Arn"]
            if got == arn:
                verified = True
            else:
                last = f"the new key authenticated as {got}, not {arn}"
            break
        except (ClientError, BotoCoreError) as e:
            last = str(e)
            if attempt < VERIFY_ATTEMPTS:
                time.sleep(VERIFY_SLEEP)
    if not verified:
        try:
            iam.delete_access_key(UserName=user, AccessKeyId=new["AccessKeyId"])
        except (ClientError, BotoCoreError) as e:
            log(f"could not delete unverified key {new['AccessKeyId']}: {e}")
        raise RuntimeError(f"the new key {new['AccessKeyId']} did not verify ({last}); "
                           "deleted it, old keys untouched")
    log(f"verified {new['AccessKeyId']}")

    if args.deactivate_old_keys:
        for k in active:
            iam.update_access_key(UserName=user, AccessKeyId=k, Status="Inactive")
            log(f"deactivated {k}")
            if args.delete_inactive_keys:
                iam.delete_access_key(UserName=user, AccessKeyId=k)
                log(f"deleted {k}")
    return new


def emit(new: dict, fmt: str) -> None:
    if fmt == "env":
        print(f"export AWS_ACCESS_KEY_ID={new['AccessKeyId']}")
        print(f"export AWS_SECRET_ACCESS_KEY={new['SecretAccessKey']}")
    elif fmt == "json":
        print(json.dumps({
            "UserName": new["UserName"], "AccessKeyId": new["AccessKeyId"],
            "SecretAccessKey": new["SecretAccessKey"],
            "CreateDate": new["CreateDate"].isoformat(), "Status": new["Status"]}))
    else:
        for k in ("UserName", "AccessKeyId", "SecretAccessKey", "CreateDate", "Status"):
            v = new[k].isoformat() if k == "CreateDate" else new[k]
            print(f"{k:<18} {v}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--user", action="append", required=True)
    p.add_argument("--profile")
    p.add_argument("--deactivate-old-keys", action="store_true")
    p.add_argument("--delete-inactive-keys", action="store_true")
    p.add_argument("--output", choices=["env", "json", "table"], default="env")
    p.add_argument("--yes", "-y", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    if (args.deactivate_old_keys or args.delete_inactive_keys) and not (
            args.yes or args.dry_run):
        log("--deactivate-old-keys/--delete-inactive-keys change key state: add --yes")
        return 2

    session = boto3.session.Session(profile_name=args.profile)
    iam = session.client("iam")
    worst = 0
    for user in args.user:
        try:
            new = rotate(session, iam, user, args)
            if new is not None:
                emit(new, args.output)
        except Refused as e:
            log(str(e))
            worst = worst or 2
        except (ClientError, BotoCoreError, RuntimeError) as e:
            log(f"{user}: {e}")
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
