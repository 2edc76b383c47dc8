#!/usr/bin/env bash
# Run every cargo-fuzz target for FUZZ_SECONDS (default 20) and summarise.
# Uses the nightly toolchain when rustup has one, otherwise the stable
# toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)"
  cargo install --locked cargo-fuzz
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
cargo "${toolchain[@]}" fuzz build
summary=()
for target in $(cargo "${toolchain[@]}" fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  log="$(mktemp)"
  if cargo "${toolchain[@]}" fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096 >"$log" 2>&1; then
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
    summary+=("$target: ok, $runs executions in ${seconds}s")
  else
    summary+=("$target: FAILED (see fuzz/artifacts/$target)")
    tail -40 "$log"
  fi
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
if printf '%s\n' "${summary[@]}" | grep -q FAILED; then exit 1; fi
