#!/usr/bin/env bash
# Run every keytap test: installs what the tests need, starts the services they use
# (pcscd with a virtual reader) in the background, runs the suite, stops the services.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

cleanup() {
  if [ -x scripts/pcsc-down.sh ]; then scripts/pcsc-down.sh || true; fi
}
trap cleanup EXIT

if [ -x scripts/pcsc-up.sh ]; then
  scripts/pcsc-up.sh
  export KEYTAP_TEST_VCARD=1
fi

cargo build --locked --all-targets
log=$(mktemp)
status=0
# Examples (the virtual card, the benchmark) are built above but hold no tests.
cargo test --locked --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, g }' "$log"
rm -f "$log"
exit "$status"
