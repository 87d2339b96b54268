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

WORK=$(mktemp -d)
chmod 700 "$WORK"
AGENT_PID=
cleanup() {
    if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# A mock-token agent on a private socket, PIN from a 0600 file, audit log on (as deployed).
"$KEYTAP" mock init --state-dir "$WORK/mock" >/dev/null
printf '123456\n' >"$WORK/pin"
chmod 600 "$WORK/pin"
KEYTAP_LOG=warn "$KEYTAP" agent --token mock --foreground --state-dir "$WORK/mock" \
    --socket "$WORK/agent.sock" --pin-file "$WORK/pin" --audit-log "$WORK/audit.jsonl" >/dev/null 2>&1 &
AGENT_PID=$!
export SSH_AUTH_SOCK="$WORK/agent.sock"
for _ in $(seq 200); do
    if [ -S "$SSH_AUTH_SOCK" ] && [ "$(ssh-add -L 2>/dev/null | wc -l)" -ge 1 ]; then break; fi
    sleep 0.05
done

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$TARGET/release/examples/buildkite_bench" "$@"
