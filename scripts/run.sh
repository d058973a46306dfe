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
exec cargo run --release --locked -- "$@"
