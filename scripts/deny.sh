#!/usr/bin/env bash
# Supply chain: `cargo deny check licenses bans sources` against deny.toml, offline. Installs
# cargo-deny (pinned) into a tools directory outside the clone the first time (a few minutes of
# compiling); later runs reuse it. With a network, also run `cargo deny check advisories`.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${AROSAJE_TOOLS_DIR:-/var/tmp/arosaje-tools}"
VERSION=0.20.2
DENY="$TOOLS/bin/cargo-deny"
if ! [ -x "$DENY" ] || ! "$DENY" --version | grep -q "$VERSION"; then
    echo "== installing cargo-deny $VERSION into $TOOLS"
    cargo install cargo-deny --version "$VERSION" --locked --root "$TOOLS" \
        --target-dir "$TOOLS/target" --quiet
fi
# cargo-deny reads `cargo metadata` of every platform: fetch the crates of all of them first
# (from the registry, or the local cache when offline).
cargo fetch --locked --quiet 2>/dev/null || cargo fetch --locked --offline --quiet
# Errors only (duplicate versions are warnings: see deny.toml).
exec "$DENY" --offline --log-level error check licenses bans sources
