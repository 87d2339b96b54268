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
cargo test --locked --all-targets "$@"
# Doc tests are not in --all-targets.
cargo test --locked --doc
