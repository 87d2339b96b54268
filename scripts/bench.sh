#!/usr/bin/env bash
# Benchmark keytap against OpenSSH's ssh-agent (not part of the test suite):
#  1. keytap on the mock token vs ssh-agent with software keys (list, P-256, Ed25519 signing at
#     1/8/64 clients, RSS, start-up time);
#  2. the PIV path: `keytap agent --token piv` vs `ssh-agent` + OpenSC's PKCS#11 module
#     (`ssh-add -s opensc-pkcs11.so`), both on the same key of the same virtual PIV card.
#
#   scripts/bench.sh                              # print the tables
#   scripts/bench.sh --write docs/performance.md  # and put them in the doc
#   scripts/bench.sh --no-piv                     # skip the PIV path
#   scripts/bench.sh fido                         # only the FIDO path on the virtual FIDO2 key
set -euo pipefail
cd "$(dirname "$0")/.."

piv=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-piv" ]; then piv=0; else args+=("$a"); fi
done

scripts/install-deps.sh

# `scripts/bench.sh fido`: sk signatures on the virtual FIDO2 key (CTAP exchanges per signature
# and keytap's overhead per signature).
if [ "${1:-}" = "fido" ]; then
  cargo build --locked --release --bin keytap --example vfido --example fido_bench
  exec target/release/examples/fido_bench --keytap target/release/keytap --vfido target/release/examples/vfido "${@:2}"
fi
cargo build --locked --release --bin keytap --example agent_bench --example vcard

if [ "$piv" = 0 ]; then
  exec target/release/examples/agent_bench --keytap target/release/keytap "${args[@]}"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pcsc-down.sh >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

scripts/pcsc-up.sh
target/release/examples/vcard --state "$work/card" >"$work/vcard.log" 2>&1 &
pids+=($!)
printf '123456\n' >"$work/pin"
chmod 600 "$work/pin"
for _ in $(seq 1 100); do
  if target/release/keytap list --token piv >/dev/null 2>&1; then break; fi
  sleep 0.2
done
env -u SSH_AUTH_SOCK target/release/keytap setup --token piv --slot 9a --alg p256 --touch never \
  --pin-policy once --force --pin-file "$work/pin" >/dev/null

mkdir -m 700 "$work/k"
KEYTAP_LOG=warn target/release/keytap agent --foreground --token piv --socket "$work/k/agent.sock" \
  --pin-file "$work/pin" --audit-log "$work/audit.jsonl" >/dev/null 2>"$work/keytap.log" &
pids+=($!)
ssh-agent -D -a "$work/ssh-agent.sock" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if [ -S "$work/ssh-agent.sock" ] && SSH_AUTH_SOCK="$work/k/agent.sock" ssh-add -l >/dev/null 2>&1; then break; fi
  sleep 0.2
done

pkcs11=$(ls /usr/lib/*/opensc-pkcs11.so 2>/dev/null | head -n 1)
printf '#!/bin/sh\necho 123456\n' >"$work/askpass"
chmod 700 "$work/askpass"
SSH_AUTH_SOCK="$work/ssh-agent.sock" SSH_ASKPASS="$work/askpass" SSH_ASKPASS_REQUIRE=force \
  ssh-add -s "$pkcs11" </dev/null

target/release/examples/agent_bench --keytap target/release/keytap \
  --piv-socket "$work/k/agent.sock" --baseline-piv-socket "$work/ssh-agent.sock" "${args[@]}"
