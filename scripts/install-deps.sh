#!/usr/bin/env bash
# Install the Debian packages keytap needs to build and test. Idempotent; apt-get update runs
# once, and only when something is missing.
set -euo pipefail

PACKAGES=(
  pkg-config libpcsclite-dev          # pcsc-sys links libpcsclite
  openssh-client openssh-server git   # real ssh, ssh-add, ssh-keygen, sshd and git in tests
  pcscd vsmartcard-vpcd libclang-dev  # a real PC/SC daemon with a virtual reader for the PIV tests
  opensc                              # PKCS#11 baseline for the PIV benchmark
  python3 python3-cryptography        # an independent Ed25519 / X.509 implementation in tests
  systemd udev                        # systemd-socket-activate, systemd-analyze, udevadm in tests
  libfido2-dev libssl-dev zlib1g-dev  # FIDO keys: libfido2-sys links libfido2 (openssl-sys, libz-sys)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
