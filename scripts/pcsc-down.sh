#!/usr/bin/env bash
# Stop the pcscd that pcsc-up.sh started (by its recorded PID only).
set -euo pipefail
STATE="${KEYTAP_PCSC_STATE:-/tmp/keytap-pcsc}"
PIDFILE="$STATE/pcscd.pid"
if [ ! -f "$PIDFILE" ]; then
  echo "pcsc-down: no $PIDFILE; nothing to stop"
  exit 0
fi
pid="$(cat "$PIDFILE")"
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
  echo "pcsc-down: stopped pcscd (pid $pid)"
else
  echo "pcsc-down: pcscd (pid $pid) was not running"
fi
rm -f "$PIDFILE"
