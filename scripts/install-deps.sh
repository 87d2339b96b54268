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
  python3-paramiko                    # a non-OpenSSH client relaying through a forwarded agent
  systemd udev                        # systemd-socket-activate, systemd-analyze, udevadm in tests
  jq                                  # docs/static-worker.md's register-worker (tests/doc_snippets.rs)
  man-db                              # `man -l docs/man/keytap.1` in tests/cli_docs.rs
  tmux pinentry-curses                # the PIN prompt drawn on a terminal, typed into in tests
  yubico-piv-tool                     # provisions PIV slots as other tools do, in the PIV tests
  libfido2-dev libssl-dev zlib1g-dev  # FIDO keys: libfido2-sys links libfido2 (openssl-sys, libz-sys)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The independent Buildkite signature checker in tests/buildkite.rs (tests/support/
# buildkite_jws.py) canonicalises JSON with rfc8785 (PyPI only) and reads YAML with PyYAML, in
# whichever python3 is first on PATH (which may not be Debian's).
for pair in rfc8785:rfc8785 yaml:pyyaml cryptography:cryptography; do
  module=${pair%%:*} package=${pair#*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    echo "install-deps: installing $package (PyPI)" >&2
    python3 -m pip install --quiet "$package" 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages "$package"
  fi
done
