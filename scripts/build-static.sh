#!/usr/bin/env bash
# Builds the agent as a fully static musl binary for x86_64 and aarch64 and checks that it is static and runs.
set -euo pipefail
cd "$(dirname "$0")/.."
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  cargo build --release --locked --target "$target" -p polaredge-agent
  bin="target/$target/release/polaredge-agent"
  desc=$(file -b "$bin")
  case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "$bin is not static: $desc" >&2; exit 1 ;;
  esac
  case "$target" in
    aarch64*) runner=(qemu-aarch64-static) ;;
    *) runner=() ;;
  esac
  key=$("${runner[@]}" "$bin" genkey)
  pub=$(printf '%s' "$key" | "${runner[@]}" "$bin" pubkey)
  [ ${#pub} -eq 44 ] || { echo "$bin pubkey printed '$pub'" >&2; exit 1; }
  printf '%-28s %8d bytes  %s\n' "$target" "$(stat -c %s "$bin")" "$desc"
done
