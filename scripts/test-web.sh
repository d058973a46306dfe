#!/usr/bin/env bash
# The web app's tests (web/): the client regenerated from the API's OpenAPI document and
# type-checked, Vitest unit and component tests, the static build and its size budget, then
# Playwright in Debian's Chromium against the real API (this checkout's binary, real PostgreSQL
# and Redis, a fresh database) serving that build. Screenshots, timings and the API's log go to
# web/test-results/ (git-ignored).
#   ./scripts/test-web.sh            everything
#   ./scripts/test-web.sh -g owner   Playwright arguments after the others
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
./scripts/services.sh

install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing $*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
    else
        echo "test-web: $* missing; install it to run the web tests" >&2
        exit 1
    fi
}
command -v npm >/dev/null 2>&1 || install nodejs npm
chromium="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || install chromium
command -v psql >/dev/null 2>&1 || install postgresql-client

# AROSAJE_BIN=<path>: an `arosaje` binary built already (else this checkout's, built here).
if [ -n "${AROSAJE_BIN:-}" ]; then
    bin="$AROSAJE_BIN"
else
    echo "== building the API"
    cargo build --locked --quiet --bin arosaje
    bin="${CARGO_TARGET_DIR:-target}/debug/arosaje"
fi
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac

cd web
echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== client from the OpenAPI document, type-checked"
AROSAJE_BIN="$bin" npm run --silent gen:api
npm run --silent typecheck
echo "== unit and component tests (Vitest)"
npx vitest run
echo "== static build, size budget"
npm run --silent generate >/dev/null
npm run --silent size

echo "== end to end (Playwright, Chromium) against the real API"
mkdir -p test-results
db="arosaje_web_e2e_$$"
base="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
psql "$base" -qc "CREATE DATABASE $db"
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
log="$root/web/test-results/api.log"
admin_password="e2e-admin-$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
export DATABASE_URL="${base%/*}/$db" REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}" \
    AROSAJE_DEV=1 WEB_DIR="$root/web/.output/public" BIND_ADDR="127.0.0.1:$port" \
    PUBLIC_URL="http://127.0.0.1:$port" ADMIN_MFA=optional RATE_LIMIT_AUTH=10000 \
    RATE_LIMIT_AUTH_PER_EMAIL=1000 RATE_LIMIT_API=100000 \
    STORAGE_DIR="$(mktemp -d)" RUST_LOG=info,arosaje::projections::runner=warn
api=""
cleanup() {
    [ -n "$api" ] && kill "$api" 2>/dev/null && wait "$api" 2>/dev/null || true
    psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$STORAGE_DIR"
}
trap cleanup EXIT
"$bin" migrate >"$log" 2>&1
ADMIN_PASSWORD="$admin_password" "$bin" admin create --email admin@e2e.arosaje.test \
    --display-name "Admin E2E" >>"$log" 2>&1
"$bin" serve >>"$log" 2>&1 &
api=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 "$api" 2>/dev/null || { tail -20 "$log"; echo "test-web: the API did not start" >&2; exit 1; }
    sleep 0.2
done
E2E_BASE_URL="http://127.0.0.1:$port" E2E_API_LOG="$log" E2E_ADMIN_EMAIL=admin@e2e.arosaje.test \
    E2E_ADMIN_PASSWORD="$admin_password" CHROMIUM="$chromium" npx playwright test "$@"
echo "test-web: the web app passes (screenshots and timings in web/test-results/)"
