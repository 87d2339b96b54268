#!/usr/bin/env bash
# Benchmark: `keytap buildkite sign` on a 500-step pipeline: time per command step outside the
# token (parse, canonicalise, encode, write back) against the agent's signing round trip on the
# mock token. A measurement, never a test.
#
#   scripts/bench-buildkite.sh [-- ARGS for examples/buildkite_bench.rs, e.g. --key 9a --steps 500]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
[ "${1:-}" = "--" ] && shift

cargo build --release --quiet --bin keytap --example buildkite_bench
KEYTAP="$TARGET/release/keytap"

. scripts/mock-agent.sh
# A mock-token agent on a private socket, PIN from a 0600 file, audit log on (as deployed).
start_mock_agent --audit-log "$WORK/audit.jsonl"

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$TARGET/release/examples/buildkite_bench" "$@"
