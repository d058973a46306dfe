#!/usr/bin/env bash
# Fault drill (issue #20, goal 4). Starts a PRIVATE PostgreSQL (initdb in /var/tmp/faults-pg,
# port 55432) and a PRIVATE Redis (port 56379, append-only file in /var/tmp/faults-redis), builds
# the `arosaje` binary and runs two `arosaje serve` instances (ports 58001, 58002) on them; then
# scripts/faults.py drives a create-plant + read load with Idempotency-Keys (retrying 503, 409
# `request_in_progress`, 401 and connection errors with the same key, moving to the other
# instance) while, in turn: kill -9 of one instance (restarted after half a phase), a PostgreSQL
# restart (`pg_ctl restart -m fast`), a Redis restart. It checks the event log (every
# acknowledged create exactly once, no key with two plants, no 500) and prints the fault table.
# The shared servers on 5432/6379 are never touched.
#
#   ./scripts/faults.sh                  the drill (FAULTS_PHASE_SECS per phase, 20)
#   FAULTS_SOAK_SECS=600 ./scripts/faults.sh    a soak instead: steady load, RSS every 10 s
# Settings: FAULTS_CLIENTS (8), FAULTS_ROUNDS (1), FAULTS_PROFILE (debug or release; debug by
# default), FAULTS_BIN (a binary to run instead of building one),
# REQUEST_TIMEOUT_SECS (10 here: a claim left by a killed instance counts as abandoned 15 s on).
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN="${FAULTS_PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}"
PGDATA=/var/tmp/faults-pg
PGPORT=55432
REDIS_PORT=56379
REDIS_DIR=/var/tmp/faults-redis
LOG_DIR=/var/tmp/faults-logs
PROFILE="${FAULTS_PROFILE:-debug}"
mkdir -p "$LOG_DIR" "$REDIS_DIR"
# PostgreSQL refuses to run as root: then its commands run as the `postgres` user.
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=(runuser -u postgres --)
  mkdir -p "$PGDATA" && chown postgres: "$PGDATA" && chmod 700 "$PGDATA"
  touch "$LOG_DIR/postgres.log" && chown postgres: "$LOG_DIR/postgres.log"
fi

if [ -n "${FAULTS_BIN:-}" ]; then
  BIN="$FAULTS_BIN"
  PROFILE="given"
else
  if [ "$PROFILE" = release ]; then
    cargo build --release --bin arosaje
  else
    cargo build --bin arosaje
  fi
  BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/arosaje"
fi

if [ ! -f "$PGDATA/PG_VERSION" ]; then
  "${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust >/dev/null
fi
if ! "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -w -l "$LOG_DIR/postgres.log" -o "-p $PGPORT -k /tmp" start >/dev/null
fi
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  redis-server --port "$REDIS_PORT" --dir "$REDIS_DIR" --appendonly yes --save '' \
    --daemonize yes --logfile "$LOG_DIR/redis.log"
fi
cleanup() {
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

db=faults
psql "postgres://postgres@127.0.0.1:$PGPORT/postgres" -qc "DROP DATABASE IF EXISTS $db" \
  -c "CREATE DATABASE $db" >/dev/null
redis-cli -p "$REDIS_PORT" flushall >/dev/null

export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$db"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n=')"
export EMAIL_PEPPER="$(head -c 48 /dev/urandom | base64 | tr -d '\n=')"
export REQUEST_TIMEOUT_SECS="${REQUEST_TIMEOUT_SECS:-10}"
export RATE_LIMIT_API=1000000 RATE_LIMIT_AUTH=1000000 RATE_LIMIT_AUTH_PER_EMAIL=1000000
export PASSWORD_ATTEMPTS_PER_ACCOUNT=1000000
export STORAGE_DIR="$LOG_DIR/photos" RUST_LOG="${RUST_LOG:-warn}"
export FAULTS_BIN="$BIN" FAULTS_PGDATA="$PGDATA" FAULTS_PGBIN="$PGBIN" FAULTS_PGPORT="$PGPORT"
export FAULTS_AS_PG="${AS_PG[*]}"
export FAULTS_REDIS_PORT="$REDIS_PORT" FAULTS_REDIS_DIR="$REDIS_DIR" FAULTS_LOG_DIR="$LOG_DIR"
echo "[faults] binary: $BIN ($PROFILE); logs in $LOG_DIR"
python3 scripts/faults.py
