#!/usr/bin/env bash
# Generates TypeScript types from the OpenAPI document (openapi-typescript) and type-checks a
# small client written against them (clients/typescript/src/client.ts): a document a client
# generator cannot use, or a change that breaks what clients rely on, fails here.
# Needs Node.js and npm (installed from Debian's packages when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Node.js and npm"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "check-client: npm is missing; install Node.js to run this check" >&2
        exit 1
    fi
fi
cargo run --quiet --locked -- openapi > clients/typescript/openapi.json
cd clients/typescript
npm ci --no-audit --no-fund --loglevel=error
npm run --silent generate
npm run --silent check
echo "check-client: the TypeScript client type-checks against the OpenAPI document"
