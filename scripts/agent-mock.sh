#!/usr/bin/env bash
# Start keytap in the foreground on the mock TEST token (software keys on disk, PIN 123456).
# The token is created on first use in $XDG_STATE_HOME/keytap/mock; the socket path is printed
# as SSH_AUTH_SOCK=... for another terminal. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --locked --release --quiet
exec target/release/keytap agent --token mock --foreground "$@"
