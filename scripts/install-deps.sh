#!/usr/bin/env bash
# System packages keytap needs to build and test on Debian 12 / Ubuntu.
# Runs `apt-get update` once, then installs what is missing; does nothing when all are present.
set -euo pipefail

PACKAGES=(
  pkg-config libpcsclite-dev   # pcsc-sys links libpcsclite
  openssh-client openssh-server git
  pcscd vsmartcard-vpcd        # the PC/SC stack the virtual PIV card plugs into (tests/piv.rs)
  libclang-dev                 # bindgen for littlefs2-sys (the virtual card's storage)
  opensc                       # opensc-tool / pkcs15 tools to inspect the virtual card
  python3-cryptography
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
