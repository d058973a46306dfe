#!/usr/bin/env bash
# The write path's ratio check (issue #20, goal 6): builds the benches in release mode and runs
# `benches/ratio.rs` once: create-plant over HTTP (commands/s, p50, p99), plain single-row
# INSERTs and the cqrs-es demo-style peer, alternated for BENCH_ROUNDS rounds, with the ratios
# create/plain and create/peer; then GET /api/me and GET /api/plants against /health.
# Run it before and after every change that touches the write path. Not a timed test.
# Settings: BENCH_SECS (per phase, 5), BENCH_ROUNDS (3), BENCH_CLIENTS (32), BENCH_READS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh >/dev/null
cargo bench --bench ratio --no-run
cargo bench --bench ratio
