#!/usr/bin/env bash
# Runs the A'rosa-je API on http://127.0.0.1:8000 against local PostgreSQL and Redis, starting
# (or installing) them first and creating the `arosaje` database. Settings: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/arosaje}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
admin_url="${DATABASE_URL%/*}/postgres"
db_name="${DATABASE_URL##*/}"
db_name="${db_name%%\?*}"
if command -v psql >/dev/null 2>&1; then
  if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
    echo "[run] creating database $db_name"
    psql "$admin_url" -qc "CREATE DATABASE \"$db_name\""
  fi
fi
exec cargo run --release --locked -- serve "$@"
