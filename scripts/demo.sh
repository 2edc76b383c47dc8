#!/usr/bin/env bash
# `make demo`: a dev PKI, a host, an emulated phone, and a pay, an order,
# a pickup and a two-tap payment through tap-terminal (and a relayed phone
# declined), uploaded and shown from the host's ledger.
# Everything lives in target/demo (removed and made anew each run).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$PWD/target}"
bin="$CARGO_TARGET_DIR/release"
demo="$CARGO_TARGET_DIR/demo"

cargo build --release -q -p tapstack-certs -p tapstack-emulator -p tapstack-terminal -p tapstack-host

rm -rf "$demo" && mkdir -p "$demo" && cd "$demo"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. a development PKI (root, issuer, acquirer, operator) — tap-certs"
"$bin/tap-certs" init --out pki >/dev/null
"$bin/tap-certs" terminal --pki pki --name "Tea House #12" --out . >/dev/null
# Its TLS client certificate for the upload connection (its own key; the
# terminal key signs taps and records only).
"$bin/tap-certs" terminal-tls --pki pki --terminal tea-house-12.pem --out . --file tea-house-12-tls >/dev/null
# The locker operator endorses this terminal as the kiosk of LOCKER-7: phones
# release LOCKER-7 pickup credentials only to terminals it endorsed.
"$bin/tap-certs" kiosk --pki pki --terminal tea-house-12.pem --site LOCKER-7 --out tea-house-12-kiosk.pem
ls pki

say "2. a phone: a wallet profile with a pickup credential — tap-emu"
"$bin/tap-emu" wallet new --pki pki --name alice --out phone
"$bin/tap-certs" credential --pki pki --wallet phone/alice.pem --site LOCKER-7 --slot 12 --parcel SF1234567890 --out phone/parcel.cred >/dev/null
"$bin/tap-emu" wallet add-credential --wallet phone/alice.toml phone/parcel.cred
sed -i 's/^policy = .*/policy = "confirm-on-phone"/' phone/alice.toml

say "3. the phone in a reader: tap-emu as a PN532 NFC chip behind a pseudo-terminal"
"$bin/tap-emu" pn532 --wallet phone/alice.toml --link "$demo/pn532" --idle-ms 400 --gap-ms 300 2> emu.log &
pids+=($!)
for _ in $(seq 1 100); do [ -e "$demo/pn532" ] && break; sleep 0.1; done
echo "PN532 on $(readlink "$demo/pn532") (linked at $demo/pn532); the terminal uses its native PN532 driver"

say "4. the host — tap-host serve (HTTPS, mutual TLS); it gets no CA private key"
# Its TLS certificate comes from a TLS CA of its own (the payment root signs
# no TLS certificate), issued offline like everything else.
"$bin/tap-certs" tls-ca --out tls >/dev/null
"$bin/tap-certs" tls-server --ca tls --name localhost --name 127.0.0.1 --out host/tls >/dev/null
# The host's copy of the PKI: certificates and the revocation list, plus the
# issuer master key file (demo only: production keeps it in an HSM, --hsm).
mkdir -m 700 -p host/pki
cp -p pki/*.pem pki/revocations.tlv pki/issuer-master.key host/pki/
echo "host files: $(cd host && find . -type f | sort | tr '\n' ' ')"
"$bin/tap-host" serve --pki host/pki --tls host/tls --store host-store --listen 127.0.0.1:0 > host.out 2> host.log &
pids+=($!)
for _ in $(seq 1 100); do grep -qE '[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+' host.out 2>/dev/null && break; sleep 0.1; done
addr=$(grep -oE '[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+' host.out | head -1)
echo "tap-host listening on $addr"

cat > terminal.toml <<TOML
[terminal]
certificate = "tea-house-12.pem"
key = "tea-house-12.key"
currency = "CNY"
tap_timeout_secs = 20

[reader]
connection = "pn532:$demo/pn532"

[trust]
root = "pki/root.pem"
issuers = ["pki/issuer.pem"]
operators = ["pki/operator.pem"]
revocations = "pki/revocations.tlv"

[queue]
path = "queue"

[host]
url = "https://$addr"
ca = "tls/tls-ca.pem"
server_name = "localhost"
tls_certificate = "tea-house-12-tls.pem"
tls_key = "tea-house-12-tls.key"

[kiosk]
site = "LOCKER-7"
endorsement = "tea-house-12-kiosk.pem"
TOML
cat > cart.json <<'JSON'
{"currency": "CNY", "items": [
  {"sku": "TEA-01", "name": "Jasmine tea", "qty": 2, "price": "8.00"},
  {"sku": "BUN-07", "name": "Pork bun", "qty": 3, "price": "4.50"}]}
JSON

t() { "$bin/tap-terminal" --config terminal.toml "$@"; }
say "5. tap-terminal pay 12.50 CNY";        t pay 12.50 CNY
say "6. tap-terminal order --cart cart.json"; t order --cart cart.json
say "7. tap-terminal kiosk (pickup: the phone asks its user, then a second tap)"; t kiosk --taps 1
say "8. tap-terminal pay 480.00 CNY (above the phone's limit: two taps)"; t pay 480.00 CNY
say "9. a phone across town behind a relay (20 ms more per exchange): the timed exchange declines it"
"$bin/tap-emu" pn532 --wallet phone/alice.toml --link "$demo/pn532-relay" --idle-ms 400 --fault relay@1:20 2> emu-relay.log &
relay_pid=$!
for _ in $(seq 1 100); do [ -e "$demo/pn532-relay" ] && break; sleep 0.1; done
if TAPSTACK_READER_CONNECTION="pn532:$demo/pn532-relay" t pay 12.50 CNY; then
  echo "a relayed tap was approved" >&2; exit 1
fi
kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
say "10. the queue";                          t queue
say "11. tap-terminal upload";                t upload
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
say "12. what the host now holds — tap-host ledger"
"$bin/tap-host" ledger --store host-store
