#!/usr/bin/env python3
"""Local AWS emulator for keyturn's tests.

Serves moto's WSGI app on 127.0.0.1 with a few start-up monkeypatches that make
moto behave like real AWS where keyturn depends on it, plus JSON test endpoints
under /_keyturn/.  README.md next to this file documents the contract.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
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

    def clear(self) -> None:
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


def build_protocol_error(response: Any, code: str, message: str, status: int):
    """An HTTPException whose body has the error shape of the service's protocol.

    moto renders its auth errors as <ErrorResponse><Errors><Error>... for every
    service.  That is the EC2 nesting under the wrong root, and XML for JSON
    services too; aws-sdk-rust then reads code() == None.
    """
    from werkzeug.exceptions import HTTPException

    from moto.core.utils import get_service_model

    class _ProtocolError(HTTPException):
        def __init__(self, status: int, body: str, headers: dict[str, str]):
            super().__init__(description=body)
            self.code = status
            self.headers = headers

        def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
            return list(self.headers.items())

        def get_body(self, *args: Any, **kwargs: Any) -> str:
            return self.description or ""

    try:
        model = get_service_model(response.boto3_service_name)
        protocol = model.protocol
        xmlns = model.metadata.get("xmlNamespace")
        json_version = model.metadata.get("jsonVersion", "1.1")
    except Exception:  # unknown model: fall back to the request's content type
        content_type = response.headers.get("Content-Type", "")
        protocol = "json" if "json" in content_type else "query"
        xmlns, json_version = None, "1.1"

    if protocol in ("json", "rest-json"):
        # awsJson services answer auth failures with their own codes (what
        # KMS/Organizations/DynamoDB return) and HTTP 400.
        json_code = {
            "InvalidClientTokenId": "UnrecognizedClientException",
            "SignatureDoesNotMatch": "InvalidSignatureException",
            "AccessDenied": "AccessDeniedException",
        }.get(code, code)
        body = json.dumps({"__type": json_code, "message": message})
        content_type = (
            f"application/x-amz-json-{json_version}"
            if protocol == "json"
            else "application/json"
        )
        headers = {"Content-Type": content_type, "x-amzn-ErrorType": json_code}
        return _ProtocolError(400 if protocol == "json" else status, body, headers)
    if protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
            f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
        )
        return _ProtocolError(status, body, {"Content-Type": "text/xml"})
    namespace = f' xmlns="{xmlns}"' if xmlns else ""
    body = (
        f"<ErrorResponse{namespace}><Error><Type>Sender</Type>"
        f"<Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
        f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return _ProtocolError(status, body, {"Content-Type": "text/xml"})


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

    def visited(response: Any) -> None:
        record_visit(
            account_id=response.current_account,
            access_key=response.access_key,
            service=response.service_name,
            region=response.region,
        )

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
                visited(self)  # the caller did authenticate
                message = f"{message} on resource: {resource}"
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
        }

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


def describe_request(environ: dict[str, Any]) -> str:
    """service:Action of an AWS API request (service from the SigV4 scope)."""
    service = "unknown"
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    action = parse_qs(environ.get("QUERY_STRING", "")).get("Action", [None])[0]
    content_type = environ.get("CONTENT_TYPE", "")
    if not action and content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(read_body(environ).decode("utf-8", "replace"))
        action = form.get("Action", [None])[0]
    return f"{service}:{action or environ.get('REQUEST_METHOD', 'UNKNOWN')}"


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
        if not path.startswith("/moto-api") and path != "/favicon.ico":
            self.stats.record(describe_request(environ))
        return self.app(environ, start_response)

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
