#!/usr/bin/env bash
# Runs every test against a real PostgreSQL and Redis, starting (or installing) them first.
# Each integration test gets a fresh database created by `#[sqlx::test]` next to DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
cargo test --locked "$@"
# With no filter given (the whole suite): a TypeScript client generated from the document must
# type-check too, and the web app passes its tests in a real browser against the real API.
if [ "$#" -eq 0 ]; then
    ./scripts/check-client.sh
    ./scripts/test-web.sh
fi
