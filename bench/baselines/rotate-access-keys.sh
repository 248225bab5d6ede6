#!/usr/bin/env bash
# Baseline for keyturn's benchmarks: the rotate-access-keys contract implemented the
# way people do it today, as a shell script around the AWS CLI.
#
# It follows the contract keyturn also implements (README, `keyturn rotate --user`):
#   1. validate the user (aws iam get-user) and read its keys (list-access-keys);
#   2. with --delete-inactive-keys: delete keys that are already Inactive;
#   3. refuse (exit 2) when the user would exceed the two-key limit;
#   4. create the new key;
#   5. verify it: aws sts get-caller-identity signed with the new key must return the
#      user's ARN; failures are retried a bounded number of times (a success is not
#      retried), and an unverified key is deleted again (exit 1);
#   6. with --deactivate-old-keys: deactivate the previously Active keys;
#   7. with --delete-inactive-keys too: delete the keys this run deactivated;
#   8. print the new credentials on stdout (env|json|table); logs go to stderr.
# Exit codes: 0 success, 2 invalid input / safety guard (nothing changed), 1 AWS failure.
#
# The secret only ever travels through shell variables and the environment of the
# verification call, never through argv.
set -uo pipefail

AWS=${AWS_CLI:-aws}
USER_NAME=""
PROFILE_ARGS=()
DEACTIVATE=false
DELETE_INACTIVE=false
OUTPUT=env
YES=false
DRY_RUN=false
VERIFY_ATTEMPTS=${VERIFY_ATTEMPTS:-8}
VERIFY_SLEEP=${VERIFY_SLEEP:-2}

log() { printf 'rotate-access-keys: %s\n' "$*" >&2; }
die() { log "$2"; exit "$1"; }

usage() {
    cat >&2 <<'EOF'
usage: rotate-access-keys.sh --user NAME [--profile PROFILE] [--deactivate-old-keys]
                             [--delete-inactive-keys] [--output env|json|table]
                             [--yes] [--dry-run]
EOF
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --user) [[ $# -ge 2 ]] || usage; USER_NAME=$2; shift 2 ;;
        --profile) [[ $# -ge 2 ]] || usage; PROFILE_ARGS=(--profile "$2"); shift 2 ;;
        --deactivate-old-keys) DEACTIVATE=true; shift ;;
        --delete-inactive-keys) DELETE_INACTIVE=true; shift ;;
        --output) [[ $# -ge 2 ]] || usage; OUTPUT=$2; shift 2 ;;
        --yes|-y) YES=true; shift ;;
        --dry-run) DRY_RUN=true; shift ;;
        -h|--help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done

[[ -n "$USER_NAME" ]] || die 2 "--user is required"
case "$OUTPUT" in env|json|table) ;; *) die 2 "--output must be env, json or table" ;; esac
if { $DEACTIVATE || $DELETE_INACTIVE; } && ! $YES && ! $DRY_RUN; then
    die 2 "--deactivate-old-keys/--delete-inactive-keys change key state: add --yes"
fi
command -v "$AWS" >/dev/null 2>&1 || die 2 "the AWS CLI ($AWS) is not installed"

# Run an AWS CLI command; on failure print its error and exit 2 for a missing entity,
# 1 for anything else. Inside $(...) the exit leaves only the subshell, so callers
# that capture output add `|| exit $?`.
ERR=$(mktemp)
trap 'rm -f "$ERR"' EXIT
awsc() {
    local out
    if ! out=$("$AWS" "${PROFILE_ARGS[@]}" "$@" 2>"$ERR"); then
        cat "$ERR" >&2
        if grep -q 'NoSuchEntity' "$ERR"; then exit 2; fi
        exit 1
    fi
    printf '%s' "$out"
}

# 1. Validate the user and read its keys.
USER_ARN=$(awsc iam get-user --user-name "$USER_NAME" --query 'User.Arn' --output text) || exit $?
KEYS=$(awsc iam list-access-keys --user-name "$USER_NAME" \
    --query 'AccessKeyMetadata[].[AccessKeyId,Status]' --output text) || exit $?
ACTIVE=()
INACTIVE=()
while read -r id status; do
    [[ -n "${id:-}" ]] || continue
    if [[ "$status" == Active ]]; then ACTIVE+=("$id"); else INACTIVE+=("$id"); fi
done <<<"$KEYS"

# 3. Two-key limit.
REMAINING=${#ACTIVE[@]}
$DELETE_INACTIVE || REMAINING=$((REMAINING + ${#INACTIVE[@]}))
if ((REMAINING >= 2)); then
    if ((${#INACTIVE[@]} > 0)); then
        die 2 "$USER_NAME has 2 keys; ${INACTIVE[*]} is Inactive: add --delete-inactive-keys --yes"
    fi
    die 2 "$USER_NAME has 2 Active keys (${ACTIVE[*]}); delete one that is not in use first"
fi

if $DRY_RUN; then
    if $DELETE_INACTIVE; then
        for id in "${INACTIVE[@]}"; do
            echo "# aws iam delete-access-key --user-name $USER_NAME --access-key-id $id"
        done
    fi
    echo "# aws iam create-access-key --user-name $USER_NAME"
    echo "# aws sts get-caller-identity   (with the new key)"
    if $DEACTIVATE; then
        for id in "${ACTIVE[@]}"; do
            echo "# aws iam update-access-key --user-name $USER_NAME --access-key-id $id --status Inactive"
            if $DELETE_INACTIVE; then
                echo "# aws iam delete-access-key --user-name $USER_NAME --access-key-id $id"
            fi
        done
    fi
    exit 0
fi

# 2. Free slots.
if $DELETE_INACTIVE; then
    for id in "${INACTIVE[@]}"; do
        awsc iam delete-access-key --user-name "$USER_NAME" --access-key-id "$id" >/dev/null
        log "deleted Inactive key $id"
    done
fi

# 4. Create.
NEW=$(awsc iam create-access-key --user-name "$USER_NAME" \
    --query 'AccessKey.[AccessKeyId,SecretAccessKey,CreateDate]' --output text) || exit $?
read -r NEW_ID NEW_SECRET NEW_DATE <<<"$NEW"
unset NEW
[[ -n "${NEW_ID:-}" && -n "${NEW_SECRET:-}" ]] || die 1 "create-access-key returned no key"
log "created $NEW_ID"

# 5. Verify with the new key; retry only on failure, a bounded number of times.
verified=false
for ((attempt = 1; attempt <= VERIFY_ATTEMPTS; attempt++)); do
    if ARN=$(env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN \
        AWS_ACCESS_KEY_ID="$NEW_ID" AWS_SECRET_ACCESS_KEY="$NEW_SECRET" \
        "$AWS" sts get-caller-identity --query Arn --output text 2>"$ERR"); then
        if [[ "$ARN" == "$USER_ARN" ]]; then verified=true; break; fi
        log "the new key authenticated as $ARN, not $USER_ARN"
        break
    fi
    ((attempt < VERIFY_ATTEMPTS)) && sleep "$VERIFY_SLEEP"
done
if ! $verified; then
    cat "$ERR" >&2
    "$AWS" "${PROFILE_ARGS[@]}" iam delete-access-key --user-name "$USER_NAME" \
        --access-key-id "$NEW_ID" >/dev/null || log "could not delete unverified key $NEW_ID"
    die 1 "the new key $NEW_ID did not verify; deleted it, old keys untouched"
fi
log "verified $NEW_ID"

# 6./7. Retire the old keys.
if $DEACTIVATE; then
    for id in "${ACTIVE[@]}"; do
        awsc iam update-access-key --user-name "$USER_NAME" --access-key-id "$id" \
            --status Inactive >/dev/null
        log "deactivated $id"
        if $DELETE_INACTIVE; then
            awsc iam delete-access-key --user-name "$USER_NAME" --access-key-id "$id" >/dev/null
            log "deleted $id"
        fi
    done
fi

# 8. Emit the new credentials, once.
case "$OUTPUT" in
    env)
        printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\n' "$NEW_ID" "$NEW_SECRET"
        ;;
    json)
        printf '{"UserName": "%s", "AccessKeyId": "%s", "SecretAccessKey": "%s", "CreateDate": "%s", "Status": "Active"}\n' \
            "$USER_NAME" "$NEW_ID" "$NEW_SECRET" "$NEW_DATE"
        ;;
    table)
        printf '%-18s %s\n' UserName "$USER_NAME" AccessKeyId "$NEW_ID" \
            SecretAccessKey "$NEW_SECRET" CreateDate "$NEW_DATE" Status Active
        ;;
esac
exit 0
