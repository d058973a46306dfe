#!/usr/bin/env bash
# Fuzzes the API from its own contract: schemathesis (pinned, in a virtualenv) reads the served
# `/openapi.json` and sends generated requests, valid and invalid, as a USER, a BOTANIST, an
# ADMIN and an AUDITOR, for a bounded time. It fails on any server error (5xx), on any request the
# document forbids that the server accepts (2xx), on any answer whose status, content type or
# body the document does not describe, and on any request the document allows that the server
# refuses (other than with a documented domain refusal).
#
# The API runs from this checkout on a free port with a fresh database (real PostgreSQL and
# Redis, started by scripts/services.sh), rate limits raised so the run is not throttled into
# 429s, and the four accounts are made as an operator would: `arosaje admin create`, then
# registration and role changes through the API.
#
# Environment: FUZZ_MAX_EXAMPLES (cases per operation and phase, default 12), FUZZ_SEED (default
# random, printed), FUZZ_WORKERS (default 1: with 2, hypothesis describes its filters from two
# threads at once and CPython's ast module fails, "AST constructor recursion depth mismatch",
# a Runtime Error of the fuzzer's own, seen once in CI), FUZZ_VENV (where schemathesis lives, default
# /var/tmp/arosaje-fuzz-venv), FUZZ_REPORT_DIR (reports kept there; default a temporary dir).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV="${FUZZ_VENV:-/var/tmp/arosaje-fuzz-venv}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-12}"
WORKERS="${FUZZ_WORKERS:-1}"
SEED="${FUZZ_SEED:-$RANDOM$RANDOM}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/arosaje-ci-target}"
ADMIN_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

started=$(date +%s)
log() { echo "[fuzz] $*"; }

./scripts/services.sh

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

DB="arosaje_fuzz_$$_$(date +%s)"
REPORTS="${FUZZ_REPORT_DIR:-$(mktemp -d /tmp/arosaje-fuzz.XXXXXX)}"
mkdir -p "$REPORTS"
WORK="$(mktemp -d /tmp/arosaje-fuzz-run.XXXXXX)"

log "building the API"
cargo build --locked --quiet --bin arosaje
# A copy, so another checkout building into a shared target directory cannot swap it mid-run.
BIN="$WORK/arosaje"
cp "$CARGO_TARGET_DIR/debug/arosaje" "$BIN"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE \"$DB\"" >/dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"

# The service's settings for this run: fresh secrets, a free port, limits out of the way.
export DATABASE_URL="${ADMIN_URL%/*}/$DB"
export BIND_ADDR="127.0.0.1:$PORT"
export PUBLIC_URL="$BASE"
export JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
export EMAIL_PEPPER="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
export STORAGE_DIR="$WORK/photos"
export ADMIN_MFA=optional
export REQUIRE_EMAIL_VERIFICATION=false
export RATE_LIMIT_API=1000000
export RATE_LIMIT_AUTH=1000000
export RATE_LIMIT_AUTH_PER_EMAIL=1000000
export PASSWORD_ATTEMPTS_PER_ACCOUNT=1000000
export MFA_MAX_FAILURES=1000000
export PROJECTION_POLL_MS=100
export RUST_LOG="${FUZZ_RUST_LOG:-warn}"
unset SMTP_URL INFLUX_URL STORAGE_URL METRICS_TOKEN

log "serving on $BASE (database $DB; log in $REPORTS/server.log)"
"$BIN" serve >"$REPORTS/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
    if curl -fsS "$BASE/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        tail -n 30 "$REPORTS/server.log" >&2
        exit 1
    fi
    sleep 0.5
done
curl -fsS "$BASE/health" >/dev/null

PASSWORD="Fuzz-the-contract-2026"
json() { curl -sS -X "$1" "$BASE$2" -H 'content-type: application/json' "${@:4}" -d "$3"; }
login() {
    json POST /api/auth/login "{\"email\":\"$1\",\"password\":\"$PASSWORD\"}" | jq -er .access_token
}
register() {
    json POST /api/auth/register \
        "{\"email\":\"$1\",\"password\":\"$PASSWORD\",\"display_name\":\"$2\"}" | jq -er .id
}

log "making the accounts"
ADMIN_PASSWORD="$PASSWORD" "$BIN" admin create --email admin@fuzz.arosaje.test \
    --display-name "Fuzz Admin" >/dev/null
ADMIN_TOKEN=$(login admin@fuzz.arosaje.test)
declare -A TOKENS=([ADMIN]="$ADMIN_TOKEN")
for role in USER BOTANIST AUDITOR; do
    email="$(echo "$role" | tr '[:upper:]' '[:lower:]')@fuzz.arosaje.test"
    id=$(register "$email" "Fuzz $role")
    if [ "$role" != USER ]; then
        json PUT "/api/admin/users/$id/role" "{\"role\":\"$role\"}" \
            -H "authorization: Bearer $ADMIN_TOKEN" | jq -e ".role == \"$role\"" >/dev/null
    fi
    TOKENS[$role]=$(login "$email")
done
# A second user, so conversations and sittings have someone to involve.
register other@fuzz.arosaje.test "Fuzz Other" >/dev/null

curl -fsS "$BASE/openapi.json" -o "$WORK/openapi.json"

# Operations that end the caller's session or account would turn the rest of a run into 401s:
# they are fuzzed last, each role with an account of its own made for that.
FINAL='^(POST /api/auth/logout|DELETE /api/me|DELETE /api/me/sessions(/\{sid\})?)$'

status=0
summary=()
run() {
    local name=$1 token=$2
    shift 2
    log "== $name"
    local out="$REPORTS/${name%% *}"
    mkdir -p "$out"
    set +e
    "$VENV/bin/st" --config-file scripts/fuzz.toml run "$WORK/openapi.json" --url "$BASE" \
        --header "Authorization: Bearer $token" \
        --checks all \
        --exclude-checks ignored_auth,use_after_free,ensure_resource_availability,object_level_authorization \
        --max-examples "$MAX_EXAMPLES" --workers "$WORKERS" --seed "$SEED" \
        --generation-database none --no-color --request-timeout 30 \
        --report junit,ndjson --report-dir "$out" \
        "$@" >"$out/output.txt" 2>&1
    set -e
    sed -n '/^=* SUMMARY/,$p' "$out/output.txt" | sed -n '/^Failures:/,/^Test cases:/p' | sed '/^Reports:/,$d'
    local cases failures rejected fatal
    cases=$(grep -Eo '[0-9]+ generated' "$out/output.txt" | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
    # Failure lines read `  ❌ ST201 Schema-violating request accepted: 3`; error lines
    # `  🚫 Runtime Error: 1`.
    failures=$(sed -n '/^Failures:/,/^$/p' "$out/output.txt" | grep -Eo 'ST[0-9]+ [^:]*: [0-9]+' || true)
    rejected=$(echo "$failures" | grep -E '^ST202 ' | grep -Eo '[0-9]+$' || echo 0)
    fatal=$(echo "$failures" | grep -Ev '^(ST202 |$)' || true)
    local errors
    errors=$(sed -n '/^Errors:/,/^$/p' "$out/output.txt" | grep -E '🚫' || true)
    summary+=("$name: $cases test cases; server errors or accepted invalid requests: ${fatal:-none}; valid requests refused beyond fuzz.toml: $rejected; errors: ${errors:-none}")
    if [ -n "$fatal" ] || [ -n "$errors" ] || [ "$cases" -eq 0 ]; then
        status=1
        log "$name: see $out/output.txt"
    fi
}

for role in USER BOTANIST ADMIN AUDITOR; do
    run "$role" "${TOKENS[$role]}" --exclude-name-regex "$FINAL"
done
register leaving@fuzz.arosaje.test "Fuzz Leaving" >/dev/null
# No stateful phase here: no link leads among these four operations.
run "session-ending (USER)" "$(login leaving@fuzz.arosaje.test)" --include-name-regex "$FINAL" \
    --phases examples,coverage,fuzzing

elapsed=$(($(date +%s) - started))
log "summary (seed $SEED, $MAX_EXAMPLES examples per operation and phase, ${elapsed}s in all):"
for line in "${summary[@]}"; do log "  $line"; done
if grep -q 'panicked' "$REPORTS/server.log"; then
    log "the server log holds a panic"
    status=1
fi
if [ "$status" -ne 0 ]; then
    log "FAILED (reports in $REPORTS; replay one case with FUZZ_SEED=$SEED)"
fi
exit "$status"
