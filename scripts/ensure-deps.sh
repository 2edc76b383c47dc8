#!/usr/bin/env bash
# Install the Debian packages tapstack's build, tests and demo need.
# As root: installs what is missing (apt-get). Otherwise: lists the command.
# Usage: scripts/ensure-deps.sh [test|demo|fuzz]
set -euo pipefail

purpose="${1:-test}"
# pcscd + vsmartcard-vpcd: the real PC/SC daemon and virtual reader the
# emulator plugs into; libpcsclite-dev: what the pcsc crate links.
# libnfc-dev + libclang-dev: the reader's libnfc driver (nfc1 links
# libnfc.so.6 and runs bindgen, which needs libclang).
packages=(openssl pkg-config pcscd vsmartcard-vpcd libpcsclite-dev libclang-dev libnfc-dev)
case "$purpose" in
  # pcsc-tools: scriptor, the independent PC/SC client of the tests;
  # libnfc-bin: nfc-list, the independent libnfc client of the PN532 emulator tests;
  # softhsm2: the PKCS#11 token holding the issuer master key in the tests and
  # `make bench` (libsofthsm2.so + softhsm2-util).
  # postgresql: the shared host store of the scaled-host tests (each test
  # runs its own server: initdb into a temp dir; no system service);
  # haproxy: the balancer in front of several host instances (TCP mode).
  test) packages+=(pcsc-tools libnfc-bin softhsm2 postgresql haproxy) ;;
  demo) ;;
  fuzz) packages+=(g++) ;;
  *) echo "unknown purpose: $purpose" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
