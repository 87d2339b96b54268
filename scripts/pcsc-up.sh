#!/usr/bin/env bash
# Start pcscd in the background (no systemd needed) with vsmartcard's vpcd driver loaded, for the
# virtual PIV card (`cargo run --example vcard`). Records the PID so pcsc-down.sh stops exactly it.
#
#   scripts/pcsc-up.sh        # idempotent: a pcscd we started earlier is reused
#
# Needs root (pcscd creates /run/pcscd). Env: KEYTAP_PCSC_STATE (default /tmp/keytap-pcsc) holds
# pcscd.pid and pcscd.log. vpcd listens on 127.0.0.1:35963 (reader "Virtual PCD 00 00") and
# 35964 ("Virtual PCD 00 01").
set -euo pipefail

STATE="${KEYTAP_PCSC_STATE:-/tmp/keytap-pcsc}"
PIDFILE="$STATE/pcscd.pid"
LOG="$STATE/pcscd.log"
mkdir -p "$STATE"

vpcd_listening() {
  # 35963 = 0x8C7B; state 0A = LISTEN. Reading /proc avoids connecting (vpcd would take a
  # connection for a card).
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '$2 ~ /:8C7B$/ && $4 == "0A" {found=1} END {exit !found}'
}

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "pcsc-up: pcscd already running (pid $(cat "$PIDFILE"))"
  exit 0
fi
if ! command -v pcscd >/dev/null; then
  echo "pcsc-up: pcscd is not installed; run scripts/install-deps.sh" >&2
  exit 1
fi
if [ ! -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ] && ! ls /etc/reader.conf.d/*vpcd* >/dev/null 2>&1; then
  echo "pcsc-up: vsmartcard-vpcd is not installed; run scripts/install-deps.sh" >&2
  exit 1
fi
if pgrep -x pcscd >/dev/null; then
  echo "pcsc-up: another pcscd is running (pid $(pgrep -x pcscd | tr '\n' ' ')), not started by this script;" >&2
  echo "         stop it (systemctl stop pcscd.socket pcscd) or use it if it has vpcd loaded" >&2
  if vpcd_listening; then exit 0; fi
  exit 1
fi

mkdir -p /run/pcscd
nohup pcscd -f -a -i >"$LOG" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 1 100); do
  if [ -S /run/pcscd/pcscd.comm ] && vpcd_listening; then
    echo "pcsc-up: pcscd running (pid $(cat "$PIDFILE")), vpcd on 127.0.0.1:35963; log $LOG"
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "pcsc-up: pcscd exited; see $LOG" >&2
    tail -n 20 "$LOG" >&2 || true
    rm -f "$PIDFILE"
    exit 1
  fi
  sleep 0.1
done
echo "pcsc-up: pcscd started but vpcd is not listening on port 35963 after 10 s; see $LOG" >&2
exit 1
