#!/usr/bin/env bash
# Benchmark keytap against OpenSSH's ssh-agent (not part of the test suite).
#   scripts/bench.sh                 # print the table
#   scripts/bench.sh --write docs/performance.md
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --locked --release --bin keytap --example agent_bench
exec target/release/examples/agent_bench --keytap target/release/keytap "$@"
