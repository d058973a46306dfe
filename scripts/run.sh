#!/usr/bin/env bash
# Runs the A'rosa-je API on http://127.0.0.1:8000 against local PostgreSQL and Redis, starting
# (or installing) them first and creating the `arosaje` database. Settings: see README.
#
# Secrets: JWT_SECRET and EMAIL_PEPPER are generated once per checkout into `.secrets.env`
# (git-ignored, readable by you alone) and reused, unless they are already in the environment.
# Keep that file: a new EMAIL_PEPPER makes existing accounts unreachable by e-mail.
#
#   ./scripts/run.sh                      serve (flags after it go to `arosaje serve`)
#   ./scripts/run.sh admin create ...     any other `arosaje` command, with the same settings
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/arosaje}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

secrets=.secrets.env
if [ ! -f "$secrets" ]; then
  echo "[run] generating JWT_SECRET and EMAIL_PEPPER into $secrets (keep it; it is git-ignored)"
  ( umask 077
    printf 'JWT_SECRET=%s\nEMAIL_PEPPER=%s\n' \
      "$(head -c 48 /dev/urandom | base64 | tr -d '\n=')" \
      "$(head -c 48 /dev/urandom | base64 | tr -d '\n=')" > "$secrets" )
fi
while IFS='=' read -r name value; do
  case "$name" in
    JWT_SECRET|EMAIL_PEPPER) [ -n "${!name:-}" ] || export "$name=$value" ;;
  esac
done < "$secrets"

admin_url="${DATABASE_URL%/*}/postgres"
db_name="${DATABASE_URL##*/}"
db_name="${db_name%%\?*}"
if command -v psql >/dev/null 2>&1; then
  if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
    echo "[run] creating database $db_name"
    psql "$admin_url" -qc "CREATE DATABASE \"$db_name\""
  fi
fi
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- serve "$@"
fi

# The web app (web/), which `serve` then offers at / (WEB_DIR, default web/.output/public):
# built when npm is there and its sources changed since the last build; skipped without npm.
if [ "$1" = serve ] && [ -f web/package.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[run] npm not found: serving the API without the web app (install Node.js to get it)"
  elif [ ! -f web/.output/public/index.html ] \
      || [ -n "$(find web/app web/i18n web/public web/nuxt.config.ts web/package-lock.json \
                 -newer web/.output/public/index.html -print -quit)" ]; then
    echo "[run] building the web app (web/)"
    ( cd web
      if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
        npm ci --no-audit --no-fund --loglevel=error
      fi
      npm run --silent generate >/dev/null ) \
      || echo "[run] the web app did not build; serving the API alone" >&2
  fi
fi
exec cargo run --release --locked -- "$@"
