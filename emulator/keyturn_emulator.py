#!/usr/bin/env python3
"""Local AWS emulator for keyturn's tests.

Serves moto's WSGI app on 127.0.0.1 with a few start-up monkeypatches that make
moto behave like real AWS where keyturn depends on it, plus JSON test endpoints
under /_keyturn/.  README.md next to this file documents the contract.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import parse_qs
from xml.sax.saxutils import escape as xml_escape

DEFAULT_ACCOUNT_ID = "123456789012"
PARTITION = "aws"
REGION = "us-east-1"
ADMIN_USER = "keyturn-admin"
ADMIN_POLICY_NAME = "AdministratorAccess"
ALLOW_ALL = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
)
REPORT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S+00:00"
REPORT_COLUMNS = (
    "user,arn,user_creation_time,password_enabled,password_last_used,"
    "password_last_changed,password_next_rotation,mfa_active,"
    "access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,"
    "access_key_1_last_used_region,access_key_1_last_used_service,"
    "access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,"
    "access_key_2_last_used_region,access_key_2_last_used_service,"
    "cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated"
)


class EndpointError(Exception):
    """An error answered by a /_keyturn/ endpoint as {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_time(value: Any, field: str) -> datetime:
    """ISO-8601 string -> naive UTC datetime (moto stores naive UTC times)."""
    if not isinstance(value, str):
        raise EndpointError(400, f"{field} must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EndpointError(400, f"{field} is not an ISO-8601 time: {value!r}")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def report_time(value: datetime | None) -> str:
    return value.strftime(REPORT_DATE_FORMAT) if value else "N/A"


class EmulatorState:
    """State the launcher keeps beside moto's backends (guarded by `lock`)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.started = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        self.admin: dict[str, str] | None = None
        # account id -> {"active", "last_rotated", "last_used", "service", "region"}
        self.root_keys: dict[str, dict[str, Any]] = {}
        # account id -> time of the GenerateCredentialReport that produced the report
        self.report_times: dict[str, datetime] = {}
        # Simulated IAM propagation delay: keys created less than this many seconds
        # ago fail authentication (see patch_propagation_delay).
        self.propagation_delay = 0.0
        # access key id -> time.monotonic() at creation (through the IAM API)
        self.key_born: dict[str, float] = {}
        # GetSessionToken credentials: ASIA key id -> {account_id, user, secret, token}
        self.sessions: dict[str, dict[str, str]] = {}
        # Source IP recorded in CloudTrail events of requests without the
        # X-Keyturn-Source-Ip header (POST /_keyturn/source-ip); None = 127.0.0.1.
        self.source_ip: str | None = None
        # CloudTrail userIdentity of assumed-role session keys (they never change).
        self.role_identities: dict[str, dict[str, Any]] = {}
        # account id -> opt-in regions enabled (Account ListRegions)
        self.enabled_regions: dict[str, set[str]] = {}

    def clear(self) -> None:
        self.source_ip = None
        self.role_identities.clear()
        self.enabled_regions.clear()
        self.root_keys.clear()
        self.report_times.clear()
        self.propagation_delay = 0.0
        self.key_born.clear()
        self.sessions.clear()


STATE = EmulatorState()


class RequestStats:
    """Thread-safe count of the AWS API requests served, by service:Action."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._by_action: dict[str, int] = {}

    def record(self, action: str) -> None:
        with self._lock:
            self._total += 1
            self._by_action[action] = self._by_action.get(action, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self._total, "by_action": dict(self._by_action)}

    def reset(self) -> None:
        with self._lock:
            self._total = 0
            self._by_action = {}


# --------------------------------------------------------------------------
# The AWS request being served (parsed once by the middleware, shared with the
# patches below through a thread-local: werkzeug serves each request on its own
# thread and moto handles it synchronously there).
# --------------------------------------------------------------------------

# Services whose CloudTrail events land in us-east-1 whatever region was signed.
GLOBAL_SERVICES = {"iam", "sts", "organizations", "cloudfront", "route53", "account"}
SOURCE_IP_HEADER = "HTTP_X_KEYTURN_SOURCE_IP"
DEFAULT_SOURCE_IP = "127.0.0.1"

_CURRENT = threading.local()


def current_request() -> "RequestInfo | None":
    return getattr(_CURRENT, "request", None)


class RequestInfo:
    """What the emulator knows about an AWS API request before moto sees it:
    service (SigV4 signing name), signing region, access key id, action, source IP,
    user agent and (lazily) the request parameters."""

    def __init__(self, environ: dict[str, Any]):
        self.environ = environ
        self.service = "unknown"
        self.region = REGION
        self.access_key_id = ""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        credential = ""
        if "Credential=" in auth:
            credential = auth.split("Credential=", 1)[1].split(",", 1)[0]
        elif "X-Amz-Credential" in query:  # presigned URL
            credential = query["X-Amz-Credential"][0]
        scope = credential.split("/")
        if len(scope) >= 4:
            self.access_key_id, self.region, self.service = scope[0], scope[2], scope[3]
        self.target = environ.get("HTTP_X_AMZ_TARGET")
        self.content_type = environ.get("CONTENT_TYPE", "")
        self.method = environ.get("REQUEST_METHOD", "GET")
        self.path = environ.get("PATH_INFO", "/")
        self._query = query
        self._form: dict[str, list[str]] | None = None
        self._params: dict[str, Any] | None = None
        if self.target:
            self.action = self.target.rsplit(".", 1)[-1]
            self.protocol = "json"
        else:
            action = query.get("Action", [None])[0]
            if not action and self.content_type.startswith("application/x-www-form-urlencoded"):
                action = self.form().get("Action", [None])[0]
            self.protocol = "query" if action else "rest"
            self.action = action or self.method
        self.name = f"{self.service}:{self.action}"
        self.source_ip = environ.get(SOURCE_IP_HEADER) or STATE.source_ip or DEFAULT_SOURCE_IP
        self.user_agent = environ.get("HTTP_USER_AGENT", "")
        # Set by the auth patch once the signature checked out: the account the
        # request acts in, and the error code/message of an AccessDenied.
        self.authenticated_account: str | None = None
        self.auth_error: tuple[str, str] | None = None
        self.moto_action: str | None = None  # operation name of a REST request

    def form(self) -> dict[str, list[str]]:
        if self._form is None:
            self._form = {}
            if self.content_type.startswith("application/x-www-form-urlencoded"):
                self._form = parse_qs(read_body(self.environ).decode("utf-8", "replace"))
        return self._form

    def params(self) -> dict[str, Any]:
        """Request parameters: the JSON body (awsJson), or the query string and
        form fields (awsQuery, REST query parameters), first value of each."""
        if self._params is None:
            params: dict[str, Any] = {}
            if self.protocol == "json" or "json" in self.content_type:
                try:
                    body = json.loads(read_body(self.environ) or b"{}")
                    params = body if isinstance(body, dict) else {}
                except ValueError:
                    params = {}
            else:
                for source in (self._query, self.form()):
                    for key, values in source.items():
                        if values and not key.startswith("X-Amz-"):
                            params.setdefault(key, values[0])
            params.pop("Action", None)
            params.pop("Version", None)
            self._params = params
        return self._params

    @property
    def event_region(self) -> str:
        return REGION if self.service in GLOBAL_SERVICES else self.region


def describe_request(environ: dict[str, Any]) -> str:
    """service:Action of an AWS API request (service from the SigV4 scope)."""
    return RequestInfo(environ).name


# --------------------------------------------------------------------------
# Fault injection (POST /_keyturn/faults).
# --------------------------------------------------------------------------

FAULT_MODES = ("drop-response", "throttle", "error", "delay")
# The throttling error each protocol's services really answer, and its status.
THROTTLE_CODES = {"query": ("Throttling", 400), "json": ("ThrottlingException", 400),
                  "rest-json": ("ThrottlingException", 429), "ec2": ("RequestLimitExceeded", 503),
                  "rest-xml": ("SlowDown", 503)}
# Services whose throttling code differs from their protocol's usual one.
THROTTLE_CODE_BY_SERVICE = {"organizations": "TooManyRequestsException"}


class FaultRule:
    def __init__(self, index: int, spec: Any, seed: Any):
        if not isinstance(spec, dict):
            raise EndpointError(400, f"rule {index}: must be a JSON object")
        known = {"action", "mode", "count", "fraction", "code", "status", "message", "match",
                 "ms", "after", "rate", "access_key_id"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise EndpointError(400, f"rule {index}: unknown field(s) {', '.join(unknown)}")
        self.spec = spec
        self.action = spec.get("action")
        if not isinstance(self.action, str) or ":" not in self.action:
            raise EndpointError(400, f"rule {index}: action must be 'service:Action' (globs allowed)")
        self.mode = spec.get("mode")
        if self.mode not in FAULT_MODES:
            raise EndpointError(400, f"rule {index}: mode must be one of {', '.join(FAULT_MODES)}")
        self.count = spec.get("count")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise EndpointError(400, f"rule {index}: count must be an integer >= 0")
        self.fraction = spec.get("fraction", 1.0)
        if not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction <= 1:
            raise EndpointError(400, f"rule {index}: fraction must be a number in [0, 1]")
        self.match = spec.get("match") or {}
        if not isinstance(self.match, dict):
            raise EndpointError(400, f"rule {index}: match must be an object of parameters")
        self.access_key_id = spec.get("access_key_id")
        self.code = spec.get("code")
        self.status = spec.get("status")
        self.message = spec.get("message")
        if self.mode == "error" and not isinstance(self.code, str):
            raise EndpointError(400, f"rule {index}: an error rule needs a code")
        if self.status is not None and (not isinstance(self.status, int)
                                        or not 400 <= self.status <= 599):
            raise EndpointError(400, f"rule {index}: status must be an HTTP error status")
        self.ms = spec.get("ms", 0)
        if self.mode == "delay" and (not isinstance(self.ms, (int, float)) or self.ms < 0):
            raise EndpointError(400, f"rule {index}: a delay rule needs ms >= 0")
        self.after = bool(spec.get("after", False))
        self.rate = spec.get("rate")
        if self.rate is not None and (self.mode != "throttle"
                                      or not isinstance(self.rate, (int, float))
                                      or self.rate <= 0):
            raise EndpointError(400, f"rule {index}: rate (requests/s) is for throttle rules, > 0")
        import random

        # One generator per rule: with a seed, a rule's decisions depend only on
        # the sequence of calls it matched, not on other rules' traffic.
        self.rng = random.Random(f"{seed}:{index}") if seed is not None else random.Random()
        self.matched = 0
        self.hits = 0
        # rate: token buckets per (account, region), as AWS limits are per account
        # per region.
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def matches(self, req: RequestInfo) -> bool:
        if not fnmatch.fnmatchcase(req.name, self.action):
            return False
        if self.access_key_id and req.access_key_id != self.access_key_id:
            return False
        if self.match:
            params = req.params()
            for key, want in self.match.items():
                have = params.get(key)
                if isinstance(want, str) and isinstance(have, str):
                    if not fnmatch.fnmatchcase(have, want):
                        return False
                elif have != want and str(have) != str(want):
                    return False
        return True

    def fires(self, req: RequestInfo) -> bool:
        """Called for a matching request (under the fault lock)."""
        self.matched += 1
        if self.count is not None and self.hits >= self.count:
            return False
        if self.rate is not None:
            identity = identity_of_key(req.access_key_id)
            key = (identity["accountId"] if identity else "unknown", req.region)
            now = time.monotonic()
            tokens, last = self.buckets.get(key, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return False
            self.buckets[key] = (tokens, now)
        if self.fraction < 1 and self.rng.random() >= self.fraction:
            return False
        self.hits += 1
        return True

    def describe(self) -> dict[str, Any]:
        return {**self.spec, "matched": self.matched, "hits": self.hits}

    def error_response(self, req: RequestInfo) -> tuple[int, dict[str, str], str]:
        protocol, xmlns, json_version = service_protocol(req.service)
        if protocol is None:
            protocol = {"json": "json", "query": "query"}.get(req.protocol, "rest-json")
        if protocol == "json" and req.content_type.startswith("application/x-amz-json-"):
            json_version = req.content_type.split("application/x-amz-json-", 1)[1][:3]
        if self.mode == "throttle":
            code, status = THROTTLE_CODES.get(protocol, ("ThrottlingException", 400))
            code = THROTTLE_CODE_BY_SERVICE.get(req.service, code)
            code = self.code or code
            status = self.status or status
            message = self.message or "Rate exceeded"
        else:
            code, status = self.code, self.status or 400
            message = self.message if self.message is not None else code
        return render_protocol_error(protocol, xmlns, json_version, code, message, status)


class Faults:
    """The rule set of POST /_keyturn/faults and the decision for each request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.seed: Any = None

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        rules = body.get("rules")
        if not isinstance(rules, list):
            raise EndpointError(400, "rules must be a list (use [] to remove every rule)")
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, (int, str)):
            raise EndpointError(400, "seed must be an integer or a string")
        parsed = [FaultRule(i, spec, seed) for i, spec in enumerate(rules)]
        with self.lock:
            self.rules, self.seed = parsed, seed
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"seed": self.seed, "rules": [r.describe() for r in self.rules]}

    def clear(self) -> None:
        with self.lock:
            self.rules, self.seed = [], None

    def decide(self, req: RequestInfo) -> tuple[float, float, FaultRule | None]:
        """(seconds to wait before moto, seconds to wait after, the rule that
        throttles/fails/drops this request or None).  Rules are tried in order;
        every delay rule that fires adds its delay, the first throttle, error or
        drop-response rule that fires decides and ends the evaluation."""
        if not self.rules:
            return 0.0, 0.0, None
        before = after = 0.0
        with self.lock:
            for rule in self.rules:
                if not rule.matches(req) or not rule.fires(req):
                    continue
                if rule.mode == "delay":
                    if rule.after:
                        after += rule.ms / 1000
                    else:
                        before += rule.ms / 1000
                    continue
                return before, after, rule
        return before, after, None


FAULTS = Faults()


# --------------------------------------------------------------------------
# CloudTrail: a management event for every authenticated request, per account
# and region, answered by LookupEvents (patch_cloudtrail_lookup_events).
# --------------------------------------------------------------------------

CLOUDTRAIL_WINDOW = timedelta(days=90)
# Oldest events are dropped beyond this many per account and region (memory bound
# for long benchmarks; AWS keeps 90 days whatever the volume).
CLOUDTRAIL_MAX_EVENTS = 200_000
READ_ONLY_PREFIXES = ("Get", "List", "Describe", "Lookup", "Head", "BatchGet", "Query",
                      "Scan", "Search", "Select", "Decrypt", "Verify", "Check")
HIDDEN = "HIDDEN_DUE_TO_SECURITY_REASONS"
SENSITIVE_PARAMS = ("secret", "password", "plaintext", "token", "privatekey")
SENSITIVE_EXACT = {"value", "secretstring", "secretbinary"}
# Request parameter -> CloudTrail resource type (LookupEvents `Resources`).
RESOURCE_PARAMS = {
    "UserName": "AWS::IAM::User", "AccessKeyId": "AWS::IAM::AccessKey",
    "RoleName": "AWS::IAM::Role", "RoleArn": "AWS::IAM::Role", "GroupName": "AWS::IAM::Group",
    "PolicyArn": "AWS::IAM::Policy", "SecretId": "AWS::SecretsManager::Secret",
    "KeyId": "AWS::KMS::Key", "TableName": "AWS::DynamoDB::Table",
}
LOOKUP_KEYS = ("EventId", "EventName", "ReadOnly", "Username", "ResourceType", "ResourceName",
               "EventSource", "AccessKeyId")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def iso_z(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _redact(value: Any, key: str = "") -> Any:
    lowered = key.lower()
    if key and (lowered in SENSITIVE_EXACT or any(s in lowered for s in SENSITIVE_PARAMS)) \
            and lowered != "clientrequesttoken":
        return HIDDEN
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    return value


def cloudtrail_parameters(params: dict[str, Any]) -> dict[str, Any] | None:
    """requestParameters as CloudTrail writes them: lowerCamelCase names, secrets
    replaced by HIDDEN_DUE_TO_SECURITY_REASONS."""
    if not params:
        return None
    out = {}
    for key, value in params.items():
        name = key[:1].lower() + key[1:]
        out[name] = _redact(value, key)
    return out


def identity_of_key(access_key_id: str) -> dict[str, Any] | None:
    """CloudTrail userIdentity of an access key (IAM user key, GetSessionToken
    session or assumed-role session), or None for a key nobody owns."""
    if not access_key_id:
        return None
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    session = STATE.sessions.get(access_key_id)
    if session is not None:
        user = _iam(session["account_id"]).users.get(session["user"])
        if user is not None:
            return {"type": "IAMUser", "principalId": user.id, "arn": user.arn,
                    "accountId": session["account_id"], "accessKeyId": access_key_id,
                    "userName": user.name,
                    "sessionContext": {"attributes": {"mfaAuthenticated": "false"}}}
    for account_id in list(iam_backends.keys()):
        if PARTITION not in iam_backends[account_id].keys():
            continue
        backend = iam_backends[account_id][PARTITION]
        key = backend.access_keys.get(access_key_id)
        if key is not None and key.user_name in backend.users:
            user = backend.users[key.user_name]
            return {"type": "IAMUser", "principalId": user.id, "arn": user.arn,
                    "accountId": account_id, "accessKeyId": access_key_id,
                    "userName": user.name}
    cached = STATE.role_identities.get(access_key_id)
    if cached is not None:
        return cached
    for account_id in list(sts_backends.keys()):
        if PARTITION not in sts_backends[account_id].keys():
            continue
        role = sts_backends[account_id][PARTITION].get_assumed_role_from_access_key(access_key_id)
        if role is None:
            continue
        role_name = role.role_arn.split("/")[-1]
        identity = {
            "type": "AssumedRole", "principalId": role.user_id, "arn": role.arn,
            "accountId": role.account_id, "accessKeyId": access_key_id,
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "principalId": role.user_id.split(":")[0],
                                  "arn": role.role_arn, "accountId": role.account_id,
                                  "userName": role_name},
                "attributes": {"creationDate": iso_z(utc_now()), "mfaAuthenticated": "false"},
            },
            # LookupEvents' Username for a role session is the session name.
            "_username": role.session_name,
        }
        STATE.role_identities[access_key_id] = identity
        return identity
    return None


def event_username(identity: dict[str, Any]) -> str | None:
    return identity.get("userName") or identity.get("_username")


class CloudTrailStore:
    """Events per (account, region), in insertion order; each has a sequence
    number that breaks ties between events of the same second."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.trails: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.seq = 0

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            event["seq"] = self.seq
            trail = self.trails.setdefault((event["account"], event["region"]), [])
            trail.append(event)
            if len(trail) > CLOUDTRAIL_MAX_EVENTS:
                del trail[: len(trail) - CLOUDTRAIL_MAX_EVENTS]

    def clear(self) -> None:
        with self.lock:
            self.trails.clear()

    def events(self, account: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for (acct, reg), trail in self.trails.items():
                if (account is None or acct == account) and (region is None or reg == region):
                    out.extend(trail)
        out.sort(key=lambda e: (e["time"], e["seq"]), reverse=True)
        return out

    def shift(self, access_key_id: str, hours: float, account: str | None) -> int:
        delta = timedelta(hours=hours)
        n = 0
        with self.lock:
            for (acct, _), trail in self.trails.items():
                if account is not None and acct != account:
                    continue
                for event in trail:
                    if event["access_key_id"] == access_key_id:
                        event["time"] = event["time"] + delta
                        n += 1
        return n


CLOUDTRAIL = CloudTrailStore()


def make_event(*, account: str, region: str, service: str, name: str, time_: datetime,
               access_key_id: str, identity: dict[str, Any] | None, source_ip: str,
               user_agent: str, read_only: bool | None = None,
               request_parameters: dict[str, Any] | None = None,
               resources: list[dict[str, str]] | None = None,
               error_code: str | None = None, error_message: str | None = None,
               username: str | None = None) -> dict[str, Any]:
    if read_only is None:
        read_only = name.startswith(READ_ONLY_PREFIXES)
    identity = dict(identity or {"type": "Unknown", "accountId": account,
                                 "accessKeyId": access_key_id})
    if username is None:
        username = event_username(identity)
    identity.pop("_username", None)
    return {
        "account": account, "region": region, "time": time_, "event_id": str(uuid.uuid4()),
        "request_id": str(uuid.uuid4()), "source": f"{service}.amazonaws.com", "name": name,
        "read_only": bool(read_only), "access_key_id": access_key_id, "identity": identity,
        "username": username, "source_ip": source_ip, "user_agent": user_agent,
        "request_parameters": request_parameters, "resources": resources or [],
        "error_code": error_code, "error_message": error_message,
    }


def record_request_event(req: RequestInfo, status: int, body: bytes) -> None:
    """Called by the middleware after moto answered an authenticated request."""
    account = req.authenticated_account
    if account is None or req.service == "unknown":
        return
    name = req.action
    if req.service == "s3":
        # LookupEvents returns management events only; S3 object reads/writes are
        # data events.  Of S3's REST calls only ListBuckets is named cheaply here.
        if req.method == "GET" and req.path in ("", "/"):
            name = "ListBuckets"
        else:
            return
    elif req.protocol == "rest":
        name = req.moto_action or name
    params = req.params() if req.protocol != "rest" else {}
    identity = identity_of_key(req.access_key_id)
    error_code = error_message = None
    if req.auth_error is not None:
        error_code, error_message = req.auth_error
    elif status >= 400:
        error_code, error_message = parse_error_body(body)
    resources = []
    for param, kind in RESOURCE_PARAMS.items():
        value = params.get(param)
        if isinstance(value, str) and value:
            resources.append({"ResourceType": kind, "ResourceName": value})
    if req.service == "ssm" and isinstance(params.get("Name"), str):
        resources.append({"ResourceType": "AWS::SSM::Parameter", "ResourceName": params["Name"]})
    CLOUDTRAIL.add(make_event(
        account=account, region=req.event_region, service=req.service, name=name,
        time_=utc_now(), access_key_id=req.access_key_id, identity=identity,
        source_ip=req.source_ip, user_agent=req.user_agent,
        request_parameters=cloudtrail_parameters(params), resources=resources,
        error_code=error_code, error_message=error_message,
    ))


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    text = body[:4096].decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(body)
            code = str(data.get("__type", "")).rsplit("#", 1)[-1] or None
            return code, data.get("message") or data.get("Message")
        except ValueError:
            return None, None
    import re

    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return (code.group(1) if code else None), (message.group(1) if message else None)


def cloudtrail_record(event: dict[str, Any]) -> dict[str, Any]:
    """The event as CloudTrail's log record (LookupEvents' CloudTrailEvent)."""
    record = {
        "eventVersion": "1.09",
        "userIdentity": event["identity"],
        "eventTime": iso_z(event["time"]),
        "eventSource": event["source"],
        "eventName": event["name"],
        "awsRegion": event["region"],
        "sourceIPAddress": event["source_ip"],
        "userAgent": event["user_agent"],
    }
    if event["error_code"]:
        record["errorCode"] = event["error_code"]
        if event["error_message"]:
            record["errorMessage"] = event["error_message"]
    record.update({
        "requestParameters": event["request_parameters"],
        "responseElements": None,
        "requestID": event["request_id"],
        "eventID": event["event_id"],
        "readOnly": event["read_only"],
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": event["account"],
        "eventCategory": "Management",
    })
    return record


# --------------------------------------------------------------------------
# Monkeypatches.  Each one fixes a place where moto 5.2.5 differs from AWS in
# a way keyturn (or its tests) can observe.
# --------------------------------------------------------------------------


def _iam(account_id: str):
    from moto.iam.models import iam_backends

    return iam_backends[account_id][PARTITION]


def _arn_account(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4] else None


def _role_by_arn(role_arn: str):
    """The role named by an ARN, looked up in the account the ARN names."""
    from moto.iam.exceptions import NotFoundException

    account_id = _arn_account(role_arn)
    if account_id is None:
        return None
    try:
        return _iam(account_id).get_role_by_arn(role_arn)
    except NotFoundException:
        return None


_PROTOCOL_ERROR_CLASS: Any = None


def _protocol_error_class() -> Any:
    """A werkzeug HTTPException that answers a fixed status, headers and body
    (built lazily: werkzeug is imported only once moto is)."""
    global _PROTOCOL_ERROR_CLASS
    if _PROTOCOL_ERROR_CLASS is None:
        from werkzeug.exceptions import HTTPException

        class _ProtocolError(HTTPException):
            def __init__(self, status: int, body: str, headers: dict[str, str]):
                super().__init__(description=body)
                self.code = status
                self.headers = headers

            def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
                return list(self.headers.items())

            def get_body(self, *args: Any, **kwargs: Any) -> str:
                return self.description or ""

        _PROTOCOL_ERROR_CLASS = _ProtocolError
    return _PROTOCOL_ERROR_CLASS


_MODEL_CACHE: dict[str, tuple[str | None, str | None, str]] = {}


def service_protocol(service: str) -> tuple[str | None, str | None, str]:
    """(protocol, xmlNamespace, jsonVersion) of a service from botocore's model,
    (None, None, "1.1") when the model is unknown.  Cached: loading a model takes
    milliseconds and this is asked on every faulted request."""
    if service not in _MODEL_CACHE:
        try:
            from moto.core.utils import get_service_model

            model = get_service_model(service)
            _MODEL_CACHE[service] = (
                model.protocol,
                model.metadata.get("xmlNamespace"),
                model.metadata.get("jsonVersion", "1.1"),
            )
        except Exception:
            _MODEL_CACHE[service] = (None, None, "1.1")
    return _MODEL_CACHE[service]


def render_protocol_error(
    protocol: str | None, xmlns: str | None, json_version: str, code: str, message: str,
    status: int,
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of an error in the standard shape of `protocol`,
    the shapes aws-sdk-rust and botocore parse (code() and message() set)."""
    if protocol in ("json", "rest-json"):
        body = json.dumps({"__type": code, "message": message})
        content_type = (
            f"application/x-amz-json-{json_version}" if protocol == "json" else "application/json"
        )
        return status, {"Content-Type": content_type, "x-amzn-ErrorType": code}, body
    if protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
            f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return status, {"Content-Type": "text/xml"}, body
    if protocol == "rest-xml":  # S3
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
            f"<RequestId>{uuid.uuid4()}</RequestId></Error>"
        )
        return status, {"Content-Type": "application/xml"}, body
    namespace = f' xmlns="{xmlns}"' if xmlns else ""
    body = (
        f"<ErrorResponse{namespace}><Error><Type>Sender</Type>"
        f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
        f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return status, {"Content-Type": "text/xml"}, body


def build_protocol_error(response: Any, code: str, message: str, status: int):
    """An HTTPException whose body has the error shape of the service's protocol.

    moto renders its auth errors as <ErrorResponse><Errors><Error>... for every
    service.  That is the EC2 nesting under the wrong root, and XML for JSON
    services too; aws-sdk-rust then reads code() == None.
    """
    protocol, xmlns, json_version = service_protocol(response.boto3_service_name)
    if protocol is None:  # unknown model: fall back to the request's content type
        content_type = response.headers.get("Content-Type", "")
        protocol = "json" if "json" in content_type else "query"
    if protocol in ("json", "rest-json"):
        # awsJson services answer auth failures with their own codes (what
        # KMS/Organizations/DynamoDB return) and HTTP 400.
        code = {
            "InvalidClientTokenId": "UnrecognizedClientException",
            "SignatureDoesNotMatch": "InvalidSignatureException",
            "AccessDenied": "AccessDeniedException",
        }.get(code, code)
        if protocol == "json":
            status = 400
    if protocol == "rest-xml":
        protocol = "query"  # keep moto's historical shape for S3 auth errors
    status, headers, body = render_protocol_error(
        protocol, xmlns, json_version, code, message, status
    )
    return _protocol_error_class()(status, body, headers)


# IAM actions that, without UserName, act on the calling user itself.
SELF_USER_ACTIONS = {
    "CreateAccessKey", "ListAccessKeys", "GetUser", "ChangePassword",
    "ListSigningCertificates", "ListSSHPublicKeys", "ListMFADevices",
    "ListServiceSpecificCredentials",
}
# IAM actions that, without UserName, moto applies to the owner of AccessKeyId.
KEY_OWNER_ACTIONS = {"GetAccessKeyLastUsed", "UpdateAccessKey", "DeleteAccessKey"}

# Per-request values of IAM policy variables (${aws:username}, ...): the policy
# evaluator runs in the request's thread, below the auth wrapper that sets them.
_POLICY_VARIABLES = threading.local()


def iam_resource_arn(response: Any) -> str:
    """The ARN of the resource an IAM request acts on ("*" if not one resource).

    moto authorizes every IAM action against the resource "*", so a statement
    whose Resource is an ARN (`arn:aws:iam::*:user/${aws:username}`, the usual
    self-service key-rotation policy) never applies: neither its Allow nor its
    Deny.  AWS evaluates it against the user/role/group/policy acted on."""
    account_id = response.current_account
    backend = _iam(account_id)
    params = {k: v[0] for k, v in response.querystring.items() if isinstance(v, list) and v}
    if params.get("PolicyArn"):
        return params["PolicyArn"]
    for param, kind, table in (
        ("UserName", "user", backend.users),
        ("RoleName", "role", {r.name: r for r in backend.roles.values()}),
        ("GroupName", "group", backend.groups),
    ):
        name = params.get(param)
        if name:
            path = getattr(table.get(name), "path", "/") or "/"
            return f"arn:{PARTITION}:iam::{account_id}:{kind}{path}{name}"
    action = response._get_action()
    if action in KEY_OWNER_ACTIONS:
        key_id = params.get("AccessKeyId")
    elif action in SELF_USER_ACTIONS:
        key_id = response.access_key
    else:
        return "*"
    key = backend.access_keys.get(key_id)
    if key is not None and key.user_name in backend.users:
        return backend.users[key.user_name].arn
    session = STATE.sessions.get(key_id)
    if session is not None and session["user"] in backend.users:
        return backend.users[session["user"]].arn
    return "*"


def policy_variables(response: Any) -> dict[str, str]:
    account_id = response.current_account
    variables = {"aws:PrincipalAccount": account_id}
    backend = _iam(account_id)
    key = backend.access_keys.get(response.access_key)
    session = STATE.sessions.get(response.access_key)
    owner = key.user_name if key is not None else session["user"] if session else None
    if owner in backend.users:
        user = backend.users[owner]
        variables.update({"aws:username": user.name, "aws:userid": user.id})
    return variables


def patch_inactive_keys() -> None:
    """(a) A key whose status is Inactive authenticates nothing on real AWS
    (InvalidClientTokenId), while moto accepts it.  The replacement also looks the
    key up in the backend's key index instead of scanning every user's keys on
    every request (which is O(users) and slow after seeding thousands)."""
    from moto.iam import access_control

    def __init__(self, account_id, partition, access_key_id, headers):  # noqa: N807
        self.account_id = account_id
        self.partition = partition
        key = self.backend.access_keys.get(access_key_id)
        user = self.backend.users.get(key.user_name) if key and key.user_name else None
        if user is None or key not in user.access_keys or key.status != "Active":
            raise access_control.CreateAccessKeyFailure(reason="InvalidId")
        born = STATE.key_born.get(access_key_id)
        if born is not None and time.monotonic() - born < STATE.propagation_delay:
            raise access_control.CreateAccessKeyFailure(reason="InvalidId")
        self._owner_user_name = user.name
        self._access_key_id = access_key_id
        self._secret_access_key = key.secret_access_key
        if "X-Amz-Security-Token" in headers:
            raise access_control.CreateAccessKeyFailure(reason="InvalidToken")

    access_control.IAMUserAccessKey.__init__ = __init__


def patch_propagation_delay() -> None:
    """Real IAM is eventually consistent: a new access key is rejected with
    InvalidClientTokenId for some seconds (10-20 s is common) after CreateAccessKey
    returns.  moto accepts it at once, so a rotation tool's retry loop would never be
    exercised.  Record when each key is created through the API; patch_inactive_keys
    rejects keys younger than STATE.propagation_delay (0 = off, the default; set it
    with POST /_keyturn/propagation-delay).  Keys created while the delay is 0 are
    never delayed."""
    from moto.iam.models import IAMBackend

    original = IAMBackend.create_access_key

    def create_access_key(self, *args, **kwargs):
        key = original(self, *args, **kwargs)
        # Only keys created while a delay is configured are delayed, so turning the
        # delay on never locks out keys that already work (the admin's, say).
        if STATE.propagation_delay > 0:
            STATE.key_born[key.access_key_id] = time.monotonic()
        return key

    IAMBackend.create_access_key = create_access_key


def patch_auth_errors_and_last_used() -> None:
    """(b) Re-render moto's auth errors in the protocol's standard error shape,
    and make AccessDenied name the resource as AWS does.  IAM requests are
    authorized against the resource they act on (see iam_resource_arn).

    Also: moto records an access key's last use while *parsing* a request, before
    authenticating it, so a rejected request (wrong secret, Inactive key) still
    moves LastUsedDate.  AWS records only authenticated requests, and a rotation
    tool decides staleness from that date, so the recording is deferred until
    the signature has been verified."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.exceptions import (
        AccessDeniedError,
        AuthFailureError,
        InvalidClientTokenIdError,
        SignatureDoesNotMatchError,
        _RESTError,
    )
    from moto.iam import models as iam_models

    record_visit = iam_models.mark_account_as_visited
    # core/responses.py imports this name at call time, so replacing the module
    # attribute turns the early (pre-auth) recording off.
    iam_models.mark_account_as_visited = lambda **kwargs: None

    def visited(response: Any, error: tuple[str, str] | None = None) -> None:
        record_visit(
            account_id=response.current_account,
            access_key=response.access_key,
            service=response.service_name,
            region=response.region,
        )
        # The request authenticated: the middleware records its CloudTrail event.
        req = current_request()
        if req is not None:
            req.authenticated_account = response.current_account
            req.auth_error = error
            if req.protocol == "rest":
                try:
                    req.moto_action = response._get_action() or None
                except Exception:
                    req.moto_action = None

    original = ActionAuthenticatorMixin._authenticate_and_authorize_action
    auth_errors = (
        InvalidClientTokenIdError,
        SignatureDoesNotMatchError,
        AccessDeniedError,
        AuthFailureError,
    )

    def _authenticate_and_authorize_action(self, iam_request_cls, resource="*"):
        if resource == "*" and self.service_name == "iam":
            resource = iam_resource_arn(self)
        _POLICY_VARIABLES.values = policy_variables(self)
        try:
            original(self, iam_request_cls, resource)
        except _RESTError as err:
            if not isinstance(err, auth_errors):
                raise
            message = err.message
            if isinstance(err, AccessDeniedError):
                message = f"{message} on resource: {resource}"
                visited(self, ("AccessDenied", message))  # the caller did authenticate
            error = build_protocol_error(self, err.error_type, message, err.code)
            # call_action() answers auth errors with self.response_headers and
            # the exception's description/code only.
            self.response_headers.update(error.headers)
            raise error from None
        finally:
            _POLICY_VARIABLES.values = {}
        visited(self)

    ActionAuthenticatorMixin._authenticate_and_authorize_action = (
        _authenticate_and_authorize_action
    )


def patch_policy_evaluation() -> None:
    """Two policy-evaluation fixes, needed once IAM resources are real ARNs:

    * moto turns a pattern into a regex by replacing `*` only, so `.`, `$`, `{`
      ... are regex syntax and `${aws:username}` can never match.  Match like
      AWS: `*` and `?` wildcards, everything else literal, policy variables
      substituted with the caller's values.
    * moto answers an *Allow* statement whose Condition or Principal does not
      match with an explicit DENY, which overrides every other Allow.  In AWS
      such a statement just does not apply."""
    import re

    from moto.iam import access_control

    statement = access_control.IAMPolicyStatement

    def _match(pattern: str, string: str):
        values = getattr(_POLICY_VARIABLES, "values", None) or {}
        regex = []
        for part in re.split(r"(\$\{[^}]*\})", pattern):
            if part.startswith("${") and part.endswith("}"):
                name = part[2:-1]
                # An unknown variable matches nothing, as in AWS.
                regex.append(re.escape(values[name]) if name in values else "(?!)")
                continue
            regex.extend(
                ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part
            )
        return re.match("^" + "".join(regex) + "$", string)

    statement._match = staticmethod(_match)

    original_is_action_permitted = statement.is_action_permitted

    def is_action_permitted(self, *args, **kwargs):
        result = original_is_action_permitted(self, *args, **kwargs)
        if (
            result == access_control.PermissionResult.DENIED
            and self._statement.get("Effect") == "Allow"
        ):
            return access_control.PermissionResult.NEUTRAL
        return result

    statement.is_action_permitted = is_action_permitted


def patch_get_access_key_last_used() -> None:
    """GetAccessKeyLastUsed (also used by CreateAccessKey/ListAccessKeys/...
    without UserName) walks every key of every user of every account per call:
    O(keys) per request, quadratic for a rotation run over seeded accounts.  Same
    semantics (user keys of any account), via the per-account key index."""
    from moto.iam.exceptions import NotFoundException
    from moto.iam.models import IAMBackend, iam_backends

    def get_access_key_last_used(self, access_key_id):
        for account in list(iam_backends.values()):
            if self.partition not in account.keys():
                continue
            backend = account[self.partition]
            key = backend.access_keys.get(access_key_id)
            if key is not None and key.user_name in backend.users:
                return {"user_name": key.user_name, "last_used": key.last_used}
        raise NotFoundException(
            f"The Access Key with id {access_key_id} cannot be found"
        )

    IAMBackend.get_access_key_last_used = get_access_key_last_used


def patch_delete_user_with_keys() -> None:
    """AWS refuses DeleteUser while the user still has access keys
    (DeleteConflict); moto deletes the user and leaves its keys behind."""
    from moto.iam.exceptions import DeleteConflictException
    from moto.iam.models import IAMBackend

    original_delete_user = IAMBackend.delete_user

    def delete_user(self, user_name):
        if self.get_user(user_name).access_keys:
            raise DeleteConflictException(
                "Cannot delete entity, must delete access keys first."
            )
        original_delete_user(self, user_name)

    IAMBackend.delete_user = delete_user


def patch_session_tokens() -> None:
    """sts:GetSessionToken (used with MFA) returns a fixed example credential in moto
    that belongs to nobody, so with auth on every call made with it fails.  On AWS the
    session acts as the IAM user that asked for it, with that user's policies, until
    it expires; deleting or deactivating the user's access key does not revoke it.
    Issue real session credentials (ASIA key id, secret, token) owned by the calling
    user, accept them in authentication, and answer GetCallerIdentity with the user's
    ARN."""
    import secrets as pysecrets
    import string

    from moto.iam import access_control
    from moto.sts import models as sts_models
    from moto.sts.responses import TokenResponse

    def random_text(alphabet: str, n: int) -> str:
        return "".join(pysecrets.choice(alphabet) for _ in range(n))

    def get_session_token(self):
        from moto.core.responses import ActionResult

        duration = self._get_int_param("DurationSeconds", 43200)
        token = self.backend.get_session_token(duration=duration)
        caller = self.get_access_key()
        user = _iam(self.current_account).get_user_from_access_key_id(caller)
        key_id = "ASIA" + random_text(string.ascii_uppercase + string.digits, 16)
        secret = random_text(string.ascii_letters + string.digits + "/+", 40)
        session_token = random_text(string.ascii_letters + string.digits + "/+=", 120)
        if user is not None:
            STATE.sessions[key_id] = {
                "account_id": self.current_account,
                "user": user.name,
                "secret": secret,
                "token": session_token,
            }
        return ActionResult({"Credentials": {
            "AccessKeyId": key_id,
            "SecretAccessKey": secret,
            "SessionToken": session_token,
            "Expiration": token.expiration,
        }})

    TokenResponse.get_session_token = get_session_token

    class SessionUserAccessKey(access_control.IAMUserAccessKey):
        def __init__(self, account_id, partition, access_key_id, headers):  # noqa: N807
            session = STATE.sessions[access_key_id]
            self.account_id = session["account_id"]
            self.partition = partition
            if self.backend.users.get(session["user"]) is None:
                raise access_control.CreateAccessKeyFailure(reason="InvalidId")
            if headers.get("X-Amz-Security-Token") != session["token"]:
                raise access_control.CreateAccessKeyFailure(reason="InvalidToken")
            self._owner_user_name = session["user"]
            self._access_key_id = access_key_id
            self._secret_access_key = session["secret"]
            self._session_token = session["token"]

        def create_credentials(self):
            from botocore.credentials import Credentials

            return Credentials(self._access_key_id, self._secret_access_key, self._session_token)

    original_create = access_control.create_access_key

    def create_access_key(account_id, partition, access_key_id, headers):
        if access_key_id in STATE.sessions:
            return SessionUserAccessKey(account_id, partition, access_key_id, headers)
        return original_create(account_id, partition, access_key_id, headers)

    access_control.create_access_key = create_access_key

    original_identity = sts_models.STSBackend.get_caller_identity

    def get_caller_identity(self, access_key_id, region):
        session = STATE.sessions.get(access_key_id)
        if session is not None:
            user = _iam(session["account_id"]).users.get(session["user"])
            if user is not None:
                return user.id, user.arn, user.account_id
        return original_identity(self, access_key_id, region)

    sts_models.STSBackend.get_caller_identity = get_caller_identity


def patch_assume_role() -> None:
    """(e) AWS answers AssumeRole of a role that does not exist with AccessDenied;
    moto hands out credentials for any ARN.  Also check the trust policy of a
    role in another account (moto only checks roles of the caller's account),
    and let a `arn:aws:iam::ACCOUNT:root` (or bare account id) principal match
    any principal of that account, as AWS does (moto compares ARNs literally)."""
    from moto.iam import access_control
    from moto.sts.models import sts_backends
    from moto.sts.responses import TokenResponse

    original_assume_role = TokenResponse.assume_role

    def assume_role(self):
        role_arn = self._get_param("RoleArn") or ""
        if _role_by_arn(role_arn) is None:
            caller = sts_backends[self.current_account][self.partition]
            _, caller_arn, _ = caller.get_caller_identity(self.access_key, self.region)
            raise build_protocol_error(
                self,
                "AccessDenied",
                f"User: {caller_arn} is not authorized to perform: sts:AssumeRole "
                f"on resource: {role_arn}",
                403,
            )
        return original_assume_role(self)

    TokenResponse.assume_role = assume_role

    base = access_control.IAMRequestBase

    def _is_assuming_role_operation(self, resource_arn):
        return (
            ":role" in resource_arn.lower()
            and self._action in access_control.REQUIRE_RESOURCE_ACCESS_POLICIES_CHECK
            and _role_by_arn(resource_arn) is not None
        )

    def _check_role_trust_relationship(self, role_arn):
        role = _role_by_arn(role_arn)
        policy = access_control.IAMPolicy(role.assume_role_policy_document)
        result = policy.is_action_permitted(
            self._action,
            role_arn,
            self._access_key.arn,
            access_control.format_incoming_conditional_values(self._data),
        )
        return result == access_control.PermissionResult.PERMITTED

    base._is_assuming_role_operation = _is_assuming_role_operation
    base._check_role_trust_relationship = _check_role_trust_relationship

    statement = access_control.IAMPolicyStatement
    original_check_principal = statement._check_principal

    def _check_principal(self, principal):
        expected = (self._statement.get("Principal") or {}).get("AWS") or []
        expected = [expected] if isinstance(expected, str) else expected
        account_id = _arn_account(principal)
        for entry in expected:
            if account_id and entry in (
                account_id,
                f"arn:{PARTITION}:iam::{account_id}:root",
            ):
                return True
        return original_check_principal(self, principal)

    statement._check_principal = _check_principal


def patch_organizations_member_role() -> None:
    """(e) Organizations CreateAccount creates OrganizationAccountAccessRole (or
    RoleName) in the new account.  On AWS that role has AdministratorAccess; in
    moto it has no policy, so with auth on the assumed role can do nothing.
    Give it an allow-all inline policy (AWS managed policies are not loaded)."""
    from moto.organizations.models import FakeAccount

    original_init = FakeAccount.__init__

    def __init__(self, organization, **kwargs):
        original_init(self, organization, **kwargs)
        role_name = kwargs.get("RoleName") or "OrganizationAccountAccessRole"
        _iam(self.id).put_role_policy(role_name, ADMIN_POLICY_NAME, ALLOW_ALL)

    FakeAccount.__init__ = __init__


def patch_credential_report() -> None:
    """(d) Make the credential report look like AWS's: a `<root_account>` first
    row, `N/A` instead of moto's `not_supported` for password/key-usage fields,
    the key's real last-used region/service, and GeneratedTime = the time of the
    GenerateCredentialReport call instead of a constant from 2015."""
    from moto.core.responses import ActionResult
    from moto.iam.models import IAMBackend
    from moto.iam.responses import IamResponse

    def key_columns(key: Any) -> list[str]:
        if key is None:
            return ["false", "N/A", "N/A", "N/A", "N/A"]
        used = key.last_used
        return [
            "true" if key.status == "Active" else "false",
            report_time(key.create_date),
            report_time(used.timestamp if used else None),
            (used.region or "N/A") if used else "N/A",
            (used.service or "N/A") if used else "N/A",
        ]

    def cert_columns(cert: Any) -> list[str]:
        if cert is None:
            return ["false", "N/A"]
        return ["true" if cert.status == "Active" else "false", report_time(cert.upload_date)]

    def root_row(backend: Any) -> str:
        root = STATE.root_keys.get(backend.account_id)
        if root:
            used = root.get("last_used")
            key = [
                "true" if root["active"] else "false",
                report_time(root.get("last_rotated")),
                report_time(used),
                (root.get("region") or REGION) if used else "N/A",
                (root.get("service") or "iam") if used else "N/A",
            ]
        else:
            key = key_columns(None)
        return ",".join(
            ["<root_account>", f"arn:{PARTITION}:iam::{backend.account_id}:root",
             report_time(STATE.started), "not_supported", "N/A", "not_supported",
             "not_supported", "false", *key, *key_columns(None),
             *cert_columns(None), *cert_columns(None)]
        )

    def user_row(backend: Any, user: Any) -> str:
        policy = backend.account_password_policy
        if user.password:
            # AWS: N/A when never used ("no_information" only for pre-2014 use).
            last_used = report_time(user.password_last_used)
            # moto does not track password changes; creation time stands in.
            last_changed = report_time(user.create_date)
            max_age = getattr(policy, "max_password_age", 0) if policy else 0
            next_rotation = (
                report_time(user.create_date + timedelta(days=max_age)) if max_age else "N/A"
            )
        else:
            last_used = last_changed = next_rotation = "N/A"
        keys = list(user.access_keys[:2]) + [None, None]
        certs = list(user.signing_certificates.values())[:2] + [None, None]
        return ",".join(
            [user.name, user.arn, report_time(user.create_date),
             "true" if user.password else "false", last_used, last_changed,
             next_rotation, "true" if user.mfa_devices else "false",
             *key_columns(keys[0]), *key_columns(keys[1]),
             *cert_columns(certs[0]), *cert_columns(certs[1])]
        )

    original_generate = IAMBackend.generate_report

    def generate_report(self):
        if not self.credential_report:
            STATE.report_times[self.account_id] = datetime.now(timezone.utc).replace(
                tzinfo=None, microsecond=0
            )
        original_generate(self)

    def get_credential_report(self):
        from moto.iam.exceptions import ReportNotPresentException

        if not self.credential_report:
            raise ReportNotPresentException("Credential report not present")
        rows = [REPORT_COLUMNS, root_row(self)]
        rows += [user_row(self, user) for user in list(self.users.values())]
        return "\n".join(rows)

    def get_credential_report_response(self):
        report = self.backend.get_credential_report()
        generated = STATE.report_times.get(self.current_account, STATE.started)
        return ActionResult(
            {"Content": report, "ReportFormat": "text/csv", "GeneratedTime": generated}
        )

    IAMBackend.generate_report = generate_report
    IAMBackend.get_credential_report = get_credential_report
    IamResponse.get_credential_report = get_credential_report_response


def patch_account_summary_root_keys() -> None:
    """GetAccountSummary's `AccountAccessKeysPresent` is 1 when the root user has an
    access key (set with POST /_keyturn/root-access-key), as on AWS. moto always
    answered 0, so a tool reading the summary could never see a root key that the
    credential report shows."""
    from moto.iam.models import AccountSummary

    original = AccountSummary.summary_map

    def summary_map(self):
        summary = dict(original.fget(self))
        present = self._iam_backend.account_id in STATE.root_keys
        summary["AccountAccessKeysPresent"] = 1 if present else 0
        return summary

    AccountSummary.summary_map = property(summary_map)


def patch_cloudtrail_lookup_events() -> None:
    """CloudTrail LookupEvents: moto answers it with HTTP 500 (NotImplementedError).
    Answer it from the events the emulator records (record_request_event) and
    injects (POST /_keyturn/cloudtrail/events), with AWS's request validation,
    newest-first order, MaxResults/NextToken paging, the StartTime/EndTime window
    (at most the last 90 days) and the per-region split: a lookup sees only the
    events recorded in the region it was signed for."""
    import base64
    import hashlib

    from moto.cloudtrail.responses import CloudTrailResponse
    from moto.core.exceptions import JsonRESTError

    def fail(code: str, message: str):
        return JsonRESTError(code, message)

    def as_time(value: Any, field: str) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
        try:
            return parse_time(value, field)
        except EndpointError:
            raise fail("InvalidTimeRangeException", f"{field} is not a valid time.")

    def lookup_events(self):
        body = json.loads(self.body or "{}")
        attributes = body.get("LookupAttributes") or []
        if len(attributes) > 1:
            raise fail("InvalidLookupAttributesException",
                       "You can only specify one lookup attribute.")
        attribute = None
        if attributes:
            attr = attributes[0] or {}
            key, value = attr.get("AttributeKey"), attr.get("AttributeValue")
            if key not in LOOKUP_KEYS or not isinstance(value, str) or not value:
                raise fail("InvalidLookupAttributesException",
                           f"Invalid lookup attribute: {key!r}. Valid keys: {', '.join(LOOKUP_KEYS)}.")
            attribute = (key, value)
        max_results = body.get("MaxResults", 50)
        if not isinstance(max_results, int) or not 1 <= max_results <= 50:
            raise fail("InvalidMaxResultsException", "MaxResults must be between 1 and 50.")
        category = body.get("EventCategory")
        if category is not None and category != "insight":
            raise fail("InvalidEventCategoryException", f"Invalid EventCategory: {category}.")
        now = utc_now()
        start = as_time(body.get("StartTime"), "StartTime")
        end = as_time(body.get("EndTime"), "EndTime")
        if start is not None and end is not None and start > end:
            raise fail("InvalidTimeRangeException", "Start time must be before end time.")
        start = max(start or now - CLOUDTRAIL_WINDOW, now - CLOUDTRAIL_WINDOW)
        end = end or now
        query = json.dumps([attribute, body.get("StartTime"), body.get("EndTime"), category,
                            self.current_account, self.region], sort_keys=True)
        digest = hashlib.sha256(query.encode()).hexdigest()[:16]
        after = None
        token = body.get("NextToken")
        if token is not None:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (datetime.fromisoformat(decoded["t"]), int(decoded["s"]))
                if decoded["h"] != digest:
                    raise ValueError("other parameters")
            except Exception:
                raise fail("InvalidNextTokenException",
                           "Invalid NextToken: use it with the same parameters as the call "
                           "that returned it.")
        events = [] if category == "insight" else CLOUDTRAIL.events(self.current_account, self.region)
        page: list[dict[str, Any]] = []
        more = False
        for event in events:
            if not start <= event["time"] <= end:
                continue
            if after is not None and (event["time"], event["seq"]) >= after:
                continue
            if attribute is not None and not lookup_matches(event, *attribute):
                continue
            if len(page) == max_results:
                more = True
                break
            page.append(event)
        result: dict[str, Any] = {"Events": [lookup_event(e) for e in page]}
        if more:
            last = page[-1]
            result["NextToken"] = base64.urlsafe_b64encode(json.dumps(
                {"t": last["time"].isoformat(), "s": last["seq"], "h": digest}).encode()).decode()
        return json.dumps(result)

    CloudTrailResponse.lookup_events = lookup_events


def lookup_matches(event: dict[str, Any], key: str, value: str) -> bool:
    if key == "AccessKeyId":
        return event["access_key_id"] == value
    if key == "EventName":
        return event["name"] == value
    if key == "EventSource":
        return event["source"] == value
    if key == "EventId":
        return event["event_id"] == value
    if key == "Username":
        return event["username"] == value
    if key == "ReadOnly":
        return str(event["read_only"]).lower() == value.lower()
    if key == "ResourceType":
        return any(r["ResourceType"] == value for r in event["resources"])
    if key == "ResourceName":
        return any(r["ResourceName"] == value for r in event["resources"])
    return False


def lookup_event(event: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "EventId": event["event_id"],
        "EventName": event["name"],
        "ReadOnly": "true" if event["read_only"] else "false",
        "AccessKeyId": event["access_key_id"],
        "EventTime": event["time"].replace(tzinfo=timezone.utc).timestamp(),
        "EventSource": event["source"],
    }
    if event["username"]:
        out["Username"] = event["username"]
    out["Resources"] = event["resources"]
    out["CloudTrailEvent"] = json.dumps(cloudtrail_record(event))
    return out


# Regions of the aws partition as Account ListRegions reports them for a new
# account: the ones enabled by default, and the opt-in ones (DISABLED).
DEFAULT_REGIONS = (
    "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1", "ap-southeast-1",
    "ap-southeast-2", "ca-central-1", "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2",
    "eu-west-3", "sa-east-1", "us-east-1", "us-east-2", "us-west-1", "us-west-2",
)
OPT_IN_REGIONS = (
    "af-south-1", "ap-east-1", "ap-south-2", "ap-southeast-3", "ap-southeast-4",
    "ap-southeast-5", "ap-southeast-7", "ca-west-1", "eu-central-2", "eu-south-1",
    "eu-south-2", "il-central-1", "me-central-1", "me-south-1", "mx-central-1",
)


def patch_account_list_regions() -> None:
    """Account ListRegions (the light way to learn an account's enabled regions;
    ec2:DescribeRegions needs the very large EC2 SDK) is missing from moto.  Answer
    it: default regions ENABLED_BY_DEFAULT, opt-in regions DISABLED unless enabled
    with POST /_keyturn/regions; RegionOptStatusContains filters, MaxResults (1-50)
    and NextToken page as on AWS."""
    from moto.account import urls
    from moto.account.responses import AccountResponse
    from moto.core.exceptions import JsonRESTError

    urls.url_paths["{0}/listRegions$"] = AccountResponse.dispatch

    def list_regions(self):
        body = json.loads(self.body or "{}")
        account_id = body.get("AccountId") or self.current_account
        enabled = STATE.enabled_regions.get(account_id, set())
        statuses = body.get("RegionOptStatusContains")
        regions = []
        for name in sorted(DEFAULT_REGIONS + OPT_IN_REGIONS):
            status = ("ENABLED_BY_DEFAULT" if name in DEFAULT_REGIONS
                      else "ENABLED" if name in enabled else "DISABLED")
            if statuses and status not in statuses:
                continue
            regions.append({"RegionName": name, "RegionOptStatus": status})
        max_results = body.get("MaxResults", 20)
        if not isinstance(max_results, int) or not 1 <= max_results <= 50:
            raise JsonRESTError("ValidationException", "MaxResults must be between 1 and 50.")
        start = 0
        if body.get("NextToken"):
            try:
                start = int(body["NextToken"])
            except ValueError:
                raise JsonRESTError("ValidationException", "The NextToken is not valid.")
        result: dict[str, Any] = {"Regions": regions[start:start + max_results]}
        if start + max_results < len(regions):
            result["NextToken"] = str(start + max_results)
        return 200, {"Content-Type": "application/json"}, json.dumps(result)

    AccountResponse.list_regions = list_regions


def patch_secretsmanager_stages() -> None:
    """Secrets Manager, where moto differs from AWS in ways a rotation tool sees:

    * GetSecretValue without VersionId/VersionStage (and BatchGetSecretValue)
      must return the AWSCURRENT version.  moto returns an internal
      default_version_id that UpdateSecretVersionStage never moves, so after
      AWSCURRENT moves it keeps answering the old value.  The default version is
      now always the one labelled AWSCURRENT.
    * PutSecretValue with the ClientRequestToken of an existing version and a
      different value fails on AWS (ResourceExistsException: versions are
      immutable); the same token with the same value does nothing.  moto
      silently overwrote a version labelled AWSPENDING.  Only a version moto
      created without a value (RotateSecret's placeholder) may now be filled in.
    * DescribeSecret's VersionIdsToStages (and ListSecrets'
      SecretVersionsToStages) lists only versions that have staging labels;
      moto listed unlabelled versions as [].  ListSecretVersionIds omits them too
      unless IncludeDeprecated, answers the secret's ARN (moto: its name) and each
      version's own CreatedDate.
    * RotateSecret refuses while "a previous rotation is still in progress", which
      on AWS means AWSPENDING is on a version other than AWSCURRENT.  moto had it
      inverted: it refused after a finished rotation (AWSPENDING and AWSCURRENT on
      the same version) and allowed a second rotation over an unfinished one."""
    from moto.secretsmanager.exceptions import InvalidRequestException, ResourceExistsException
    from moto.secretsmanager.models import FakeSecret, SecretsManagerBackend
    from moto.secretsmanager.responses import SecretsManagerResponse

    def current_version(secret: Any) -> str | None:
        for version_id, version in secret.versions.items():
            if "AWSCURRENT" in version["version_stages"]:
                return version_id
        return None

    def get_default(self):
        return current_version(self) or self.__dict__.get("_default_version_id")

    def set_default(self, value):
        self.__dict__["_default_version_id"] = value

    FakeSecret.default_version_id = property(get_default, set_default)

    original_check = SecretsManagerBackend._check_with_existing_secrets_and_versions

    def _check_with_existing_secrets_and_versions(self, secret_name, client_request_token,
                                                  secret_string, secret_binary, on_create=False):
        secret = self.secrets.get(secret_name) if secret_name in self.secrets.keys() else None
        version = secret.versions.get(client_request_token) if (
            secret is not None and client_request_token and hasattr(secret, "versions")) else None
        if version is not None and ("secret_string" in version or "secret_binary" in version):
            if (version.get("secret_string") == secret_string
                    and version.get("secret_binary") == secret_binary):
                return secret
            raise ResourceExistsException(
                f"You can't use ClientRequestToken {client_request_token} because that value "
                f"is already in use for a version of secret {secret.arn}."
            )
        return original_check(self, secret_name, client_request_token, secret_string,
                              secret_binary, on_create)

    SecretsManagerBackend._check_with_existing_secrets_and_versions = (
        _check_with_existing_secrets_and_versions
    )

    def _form_version_ids_to_stages(self):
        return {vid: list(v["version_stages"]) for vid, v in self.versions.items()
                if v["version_stages"]}

    FakeSecret._form_version_ids_to_stages = _form_version_ids_to_stages

    def list_secret_version_ids(self):
        from moto.secretsmanager.exceptions import SecretNotFoundException

        secret_id = self._get_param("SecretId")
        include_deprecated = bool(self._get_param("IncludeDeprecated"))
        backend = self.backend
        if not backend._is_valid_identifier(secret_id):
            raise SecretNotFoundException()
        secret = backend.secrets[secret_id]
        versions = [
            {"VersionId": vid, "VersionStages": list(v["version_stages"]),
             "CreatedDate": v.get("createdate")}
            for vid, v in secret.versions.items()
            if include_deprecated or v["version_stages"]
        ]
        return json.dumps({"ARN": secret.arn, "Name": secret.name, "Versions": versions})

    SecretsManagerResponse.list_secret_version_ids = list_secret_version_ids

    original_rotate = SecretsManagerBackend.rotate_secret

    def rotate_secret(self, secret_id, *args, **kwargs):
        secret = self.secrets.get(secret_id) if self._is_valid_identifier(secret_id) else None
        relabelled = None
        if isinstance(secret, FakeSecret):
            for version_id, version in secret.versions.items():
                stages = version["version_stages"]
                if "AWSPENDING" not in stages:
                    continue
                if "AWSCURRENT" not in stages:
                    raise InvalidRequestException(
                        "A previous rotation isn't complete. That rotation will be "
                        "reattempted."
                    )
                # A finished rotation: AWS moves AWSPENDING to the new version.
                stages.remove("AWSPENDING")
                relabelled = stages
        try:
            return original_rotate(self, secret_id, *args, **kwargs)
        except Exception:
            if relabelled is not None and "AWSPENDING" not in relabelled:
                relabelled.append("AWSPENDING")
            raise

    SecretsManagerBackend.rotate_secret = rotate_secret


def apply_patches() -> None:
    patch_inactive_keys()
    patch_propagation_delay()
    patch_auth_errors_and_last_used()
    patch_policy_evaluation()
    patch_get_access_key_last_used()
    patch_delete_user_with_keys()
    patch_assume_role()
    patch_session_tokens()
    patch_organizations_member_role()
    patch_credential_report()
    patch_account_summary_root_keys()
    patch_cloudtrail_lookup_events()
    patch_account_list_regions()
    patch_secretsmanager_stages()


# --------------------------------------------------------------------------
# Backend helpers used by bootstrap and the test endpoints.
# --------------------------------------------------------------------------


def enable_auth() -> None:
    """What POST /moto-api/reset-auth with body "0" does: authenticate every
    request from now on (moto compares its request counter against the limit)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


def rekey(backend: Any, key: Any, access_key_id: str, secret: str) -> None:
    """Give an existing key a chosen id/secret, keeping the key index in step."""
    del backend.access_keys[key.access_key_id]
    key.access_key_id = access_key_id
    key.secret_access_key = secret
    backend.access_keys[access_key_id] = key


def create_admin(previous: dict[str, str] | None = None) -> dict[str, str]:
    backend = _iam(DEFAULT_ACCOUNT_ID)
    backend.create_user(REGION, ADMIN_USER, "/")
    backend.put_user_policy(ADMIN_USER, ADMIN_POLICY_NAME, ALLOW_ALL)
    key = backend.create_access_key(ADMIN_USER)
    if previous:
        rekey(backend, key, previous["access_key_id"], previous["secret_access_key"])
    return {
        "user": ADMIN_USER,
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
    }


def find_key(account_id: str, access_key_id: str) -> Any:
    backend = _iam(account_id)
    key = backend.access_keys.get(access_key_id)
    if key is None or key.user_name not in backend.users:
        raise EndpointError(
            404, f"access key {access_key_id} not found in account {account_id}"
        )
    return key


def apply_key_times(key: Any, spec: dict[str, Any]) -> None:
    """Set create_date / last_used of a key from an endpoint body."""
    from moto.iam.models import AccessKeyLastUsed

    if spec.get("create_date") is not None:
        key.create_date = parse_time(spec["create_date"], "create_date")
    if "last_used" in spec:
        if spec["last_used"] is None:
            key.last_used = None
        else:
            previous = key.last_used
            key.last_used = AccessKeyLastUsed(
                timestamp=parse_time(spec["last_used"], "last_used"),
                service=spec.get("last_used_service")
                or (previous.service if previous else "iam"),
                region=spec.get("last_used_region")
                or (previous.region if previous else REGION),
            )
    elif "last_used_service" in spec or "last_used_region" in spec:
        if key.last_used is None:
            raise EndpointError(400, "key was never used; give last_used too")
        key.last_used.service = spec.get("last_used_service") or key.last_used.service
        key.last_used.region = spec.get("last_used_region") or key.last_used.region


class Endpoints:
    """The /_keyturn/ test endpoints (JSON in, JSON out)."""

    def __init__(self, stats: RequestStats, ready: Callable[[], dict[str, Any]]):
        self.stats = stats
        self.ready = ready
        self.routes = {
            ("POST", "/_keyturn/access-key"): self.access_key,
            ("GET", "/_keyturn/stats"): self.get_stats,
            ("POST", "/_keyturn/stats/reset"): self.reset_stats,
            ("POST", "/_keyturn/reset"): self.reset,
            ("POST", "/_keyturn/seed"): self.seed,
            ("POST", "/_keyturn/root-access-key"): self.root_access_key,
            ("POST", "/_keyturn/role"): self.role,
            ("POST", "/_keyturn/propagation-delay"): self.propagation_delay,
            ("GET", "/_keyturn/faults"): self.get_faults,
            ("POST", "/_keyturn/faults"): self.set_faults,
            ("POST", "/_keyturn/source-ip"): self.source_ip,
            ("GET", "/_keyturn/cloudtrail/events"): self.get_events,
            ("POST", "/_keyturn/cloudtrail/events"): self.post_events,
            ("POST", "/_keyturn/cloudtrail/clear"): self.clear_events,
            ("POST", "/_keyturn/regions"): self.regions,
        }

    def get_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        return FAULTS.snapshot()

    def set_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        return FAULTS.configure(body)

    def source_ip(self, body: dict[str, Any]) -> dict[str, Any]:
        ip = body.get("ip")
        if ip is not None and (not isinstance(ip, str) or not ip):
            raise EndpointError(400, "ip must be a non-empty string, or null for 127.0.0.1")
        STATE.source_ip = ip
        return {"ip": ip or DEFAULT_SOURCE_IP}

    def regions(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = body.get("account_id") or DEFAULT_ACCOUNT_ID
        enabled = body.get("enabled")
        if not isinstance(enabled, list) or any(r not in OPT_IN_REGIONS for r in enabled):
            raise EndpointError(400, f"enabled must list opt-in regions ({', '.join(OPT_IN_REGIONS)})")
        STATE.enabled_regions[account_id] = set(enabled)
        return {"account_id": account_id, "enabled": sorted(enabled)}

    def get_events(self, body: dict[str, Any]) -> dict[str, Any]:
        events = CLOUDTRAIL.events(body.get("account_id"), body.get("region"))
        key = body.get("access_key_id")
        shown = [
            {"account_id": e["account"], "region": e["region"], "event_time": iso_z(e["time"]),
             "event_name": e["name"], "event_source": e["source"],
             "access_key_id": e["access_key_id"], "source_ip": e["source_ip"],
             "user_agent": e["user_agent"], "username": e["username"],
             "read_only": e["read_only"], "error_code": e["error_code"],
             "event_id": e["event_id"]}
            for e in events if not key or e["access_key_id"] == key
        ]
        return {"count": len(shown), "events": shown}

    def post_events(self, body: dict[str, Any]) -> dict[str, Any]:
        """Inject events, and/or move the events of one access key in time."""
        injected = 0
        for i, spec in enumerate(body.get("events") or []):
            injected += self.inject(i, spec, body.get("account_id"))
        shifted = 0
        if "shift_hours" in body:
            hours = body["shift_hours"]
            if not isinstance(hours, (int, float)) or not body.get("access_key_id"):
                raise EndpointError(400, "shift_hours needs a number and an access_key_id")
            shifted = CLOUDTRAIL.shift(body["access_key_id"], float(hours), body.get("account_id"))
        elif not body.get("events"):
            raise EndpointError(400, "give events to inject, or access_key_id and shift_hours")
        return {"injected": injected, "shifted": shifted}

    def inject(self, i: int, spec: Any, default_account: str | None) -> int:
        if not isinstance(spec, dict):
            raise EndpointError(400, f"event {i}: must be an object")
        key = spec.get("access_key_id")
        name = spec.get("event_name")
        if not isinstance(key, str) or not key or not isinstance(name, str) or not name:
            raise EndpointError(400, f"event {i}: access_key_id and event_name are required")
        identity = identity_of_key(key)
        account = spec.get("account_id") or default_account or (
            identity["accountId"] if identity else DEFAULT_ACCOUNT_ID)
        source = spec.get("event_source") or "iam.amazonaws.com"
        service = source.split(".", 1)[0]
        region = spec.get("aws_region") or REGION
        if spec.get("event_time") is not None:
            at = parse_time(spec["event_time"], f"event {i}: event_time").replace(microsecond=0)
        else:
            at = utc_now() - timedelta(hours=float(spec.get("hours_ago") or 0))
        count = spec.get("count", 1)
        interval = spec.get("interval_seconds", 60)
        if not isinstance(count, int) or count < 1 or not isinstance(interval, (int, float)):
            raise EndpointError(400, f"event {i}: count >= 1 and interval_seconds a number")
        for n in range(count):
            CLOUDTRAIL.add(make_event(
                account=account, region=region, service=service, name=name,
                time_=at - timedelta(seconds=interval * n), access_key_id=key,
                identity=identity, source_ip=spec.get("source_ip") or DEFAULT_SOURCE_IP,
                user_agent=spec.get("user_agent") or "", read_only=spec.get("read_only"),
                request_parameters=spec.get("request_parameters"),
                resources=spec.get("resources"), error_code=spec.get("error_code"),
                error_message=spec.get("error_message"), username=spec.get("username"),
            ))
        return count

    def clear_events(self, body: dict[str, Any]) -> dict[str, Any]:
        CLOUDTRAIL.clear()
        return {"count": 0}

    def access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = body.get("account_id") or DEFAULT_ACCOUNT_ID
        if not body.get("access_key_id"):
            raise EndpointError(400, "access_key_id is required")
        key = find_key(account_id, body["access_key_id"])
        apply_key_times(key, body)
        return describe_key(account_id, key)

    def propagation_delay(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds")
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise EndpointError(400, "seconds must be a number >= 0")
        STATE.propagation_delay = float(seconds)
        return {"seconds": STATE.propagation_delay}

    def get_stats(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.stats.snapshot()

    def reset_stats(self, body: dict[str, Any]) -> dict[str, Any]:
        self.stats.reset()
        return self.stats.snapshot()

    def reset(self, body: dict[str, Any]) -> dict[str, Any]:
        from moto.moto_api._internal.models import moto_api_backend
        from moto.organizations.models import organizations_backends

        moto_api_backend.reset()
        # Not cleared by moto's reset: member account -> master account map.
        organizations_backends.master_accounts.clear()
        STATE.clear()
        FAULTS.clear()
        CLOUDTRAIL.clear()
        if STATE.admin is not None:
            create_admin(STATE.admin)
            enable_auth()
        return self.ready()

    def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = body.get("account_id") or DEFAULT_ACCOUNT_ID
        backend = _iam(account_id)
        created = []
        for spec in body.get("users") or []:
            name = spec.get("name")
            if not name:
                raise EndpointError(400, "every user needs a name")
            if name in backend.users:
                raise EndpointError(409, f"user {name} already exists")
            user = backend.create_user(REGION, name, spec.get("path") or "/")
            if spec.get("admin"):
                backend.put_user_policy(name, ADMIN_POLICY_NAME, ALLOW_ALL)
            keys = []
            for key_spec in spec.get("keys") or []:
                key = backend.create_access_key(name, status=key_spec.get("status") or "Active")
                apply_key_times(key, key_spec)
                keys.append(
                    {
                        "access_key_id": key.access_key_id,
                        "secret_access_key": key.secret_access_key,
                        "status": key.status,
                    }
                )
            created.append({"name": name, "arn": user.arn, "keys": keys})
        return {"account_id": account_id, "users": created}

    def root_access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = body.get("account_id") or DEFAULT_ACCOUNT_ID
        active = body.get("active", True)
        if active is None:  # null = the root has no access key
            STATE.root_keys.pop(account_id, None)
            return {"account_id": account_id, "root_access_key": None}
        entry = {
            "active": bool(active),
            "last_rotated": parse_time(body["last_rotated"], "last_rotated")
            if body.get("last_rotated")
            else STATE.started,
            "last_used": parse_time(body["last_used"], "last_used")
            if body.get("last_used")
            else None,
            "service": body.get("last_used_service"),
            "region": body.get("last_used_region"),
        }
        STATE.root_keys[account_id] = entry
        shown = {k: (report_time(v) if isinstance(v, datetime) else v) for k, v in entry.items()}
        return {"account_id": account_id, "root_access_key": shown}

    def role(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = body.get("account_id")
        role_name = body.get("role_name")
        if not account_id or not role_name:
            raise EndpointError(400, "account_id and role_name are required")
        trust_account = body.get("trust_account_id") or DEFAULT_ACCOUNT_ID
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{PARTITION}:iam::{trust_account}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        backend = _iam(account_id)
        existing = {r.name: r for r in backend.roles.values()}.get(role_name)
        if existing is None:
            role = backend.create_role(
                role_name=role_name,
                assume_role_policy_document=json.dumps(trust),
                path="/",
                permissions_boundary=None,
                description="keyturn test role",
                tags=[],
                max_session_duration="3600",
            )
        else:
            role = existing
            role.assume_role_policy_document = json.dumps(trust)
        backend.put_role_policy(role_name, ADMIN_POLICY_NAME, ALLOW_ALL)
        return {"account_id": account_id, "role_name": role_name, "arn": role.arn,
                "created": existing is None}


def describe_key(account_id: str, key: Any) -> dict[str, Any]:
    used = key.last_used
    return {
        "account_id": account_id,
        "user": key.user_name,
        "access_key_id": key.access_key_id,
        "status": key.status,
        "create_date": report_time(key.create_date),
        "last_used": report_time(used.timestamp) if used else None,
        "last_used_service": used.service if used else None,
        "last_used_region": used.region if used else None,
    }


# --------------------------------------------------------------------------
# WSGI front: test endpoints + request statistics, then moto.
# --------------------------------------------------------------------------


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put it back so moto can read it again."""
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        body = stream.read(length)
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


class KeyturnMiddleware:
    PREFIX = "/_keyturn/"

    def __init__(self, app: Any, endpoints: Endpoints, stats: RequestStats):
        self.app = app
        self.endpoints = endpoints
        self.stats = stats

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.PREFIX):
            return self.handle(environ, start_response)
        if path.startswith("/moto-api") or path == "/favicon.ico":
            return self.app(environ, start_response)
        req = RequestInfo(environ)
        self.stats.record(req.name)
        before, after, rule = FAULTS.decide(req)
        if before:
            time.sleep(before)
        if rule is not None and rule.mode in ("throttle", "error"):
            # Answered before moto sees the request: the call does not take effect.
            status, headers, body = rule.error_response(req)
            if after:
                time.sleep(after)
            payload = body.encode()
            start_response(f"{status} Error", [*headers.items(),
                                               ("Content-Length", str(len(payload)))])
            return [payload]

        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            if rule is None:
                return start_response(status, headers, exc_info)
            return lambda data: None  # drop-response: nothing reaches the client

        if req.protocol != "rest" and req.access_key_id:
            req.params()  # read the body now: moto consumes the input stream
        _CURRENT.request = req
        try:
            result = self.app(environ, capture)
            try:
                chunks = list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            _CURRENT.request = None
        body = b"".join(chunks)
        try:
            status_code = int(str(captured.get("status", "500")).split(" ", 1)[0])
        except ValueError:
            status_code = 500
        try:
            record_request_event(req, status_code, body)
        except Exception as err:  # never fail the AWS call because of the trail
            print(f"keyturn emulator: CloudTrail recording failed: {err!r}", file=sys.stderr)
        if after:
            time.sleep(after)
        if rule is not None:  # drop-response: moto did the work; close, answer nothing
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # werkzeug treats ConnectionError as "client went away" and writes nothing.
            raise ConnectionResetError("keyturn fault: response dropped")
        return [body]

    def handle(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "").rstrip("/")
        handler = self.endpoints.routes.get((method, path))
        try:
            if handler is None:
                known = {p for _, p in self.endpoints.routes}
                raise EndpointError(
                    405 if path in known else 404, f"no endpoint {method} {path}"
                )
            raw = read_body(environ)
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError as err:
                raise EndpointError(400, f"body is not JSON: {err}")
            if not isinstance(body, dict):
                raise EndpointError(400, "body must be a JSON object")
            if method == "GET":  # GET endpoints take their filters from the query string
                for name, values in parse_qs(environ.get("QUERY_STRING", "")).items():
                    body.setdefault(name, values[0])
            with STATE.lock:
                status, result = 200, handler(body)
        except EndpointError as err:
            status, result = err.status, {"error": err.message}
        except Exception as err:  # report, don't kill the request thread silently
            status, result = 500, {"error": f"{type(err).__name__}: {err}"}
        payload = json.dumps(result).encode()
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}
        start_response(
            f"{status} {reasons.get(status, 'Error')}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]


# --------------------------------------------------------------------------
# Process plumbing.
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port on 127.0.0.1 (default 0: any free port)")
    parser.add_argument("--bootstrap-admin", action="store_true",
                        help=f"create {ADMIN_USER} with an access key, then turn auth on")
    parser.add_argument("--log-requests", action="store_true",
                        help="write werkzeug's access log to stderr")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when stdin reaches end of file (parent gone)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # Inherited settings that would change moto's behaviour under our feet:
    # MOTO_ACCOUNT_ID pins every request to one account (breaks routing by access
    # key); a stray AWS_PROFILE makes botocore sessions inside moto fail.
    for name in ("MOTO_ACCOUNT_ID", "INITIAL_NO_AUTH_ACTION_COUNT", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "TEST_SERVER_MODE"):
        os.environ.pop(name, None)

    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )

    apply_patches()

    class RequestHandler(MotoRequestHandler):
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            if args.log_requests:
                super().log_request(code, size)  # werkzeug's logger -> stderr

    stats = RequestStats()
    server = None

    def ready() -> dict[str, Any]:
        port = server.server_port
        return {
            "endpoint": f"http://127.0.0.1:{port}",
            "port": port,
            "account_id": DEFAULT_ACCOUNT_ID,
            "admin": dict(STATE.admin) if STATE.admin else None,
        }

    endpoints = Endpoints(stats, ready)
    app = KeyturnMiddleware(DomainDispatcherApplication(create_backend_app), endpoints, stats)
    server = make_server("127.0.0.1", args.port, app, threaded=True,
                         request_handler=RequestHandler)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.exit_on_stdin_eof:
        def watch_stdin() -> None:
            try:
                while sys.stdin.buffer.read(65536):
                    pass
            except (OSError, ValueError):
                pass
            stop.set()

        threading.Thread(target=watch_stdin, name="stdin-eof", daemon=True).start()

    if args.bootstrap_admin:
        with STATE.lock:
            STATE.admin = create_admin()
            enable_auth()

    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="serve", daemon=True
    )
    serving.start()

    out = sys.stdout
    out.write(json.dumps(ready()) + "\n")
    out.flush()
    # Keep stdout to the ready line: moto print()s diagnostics now and then.
    sys.stdout = sys.stderr

    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # os._exit, not sys.exit: the stdin watcher is a daemon thread blocked in read(),
    # and interpreter shutdown would abort on its buffer lock ("Fatal Python error:
    # _enter_buffered_busy").
    os._exit(code)
