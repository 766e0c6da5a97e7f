#!/usr/bin/env bash
# The test command: installs what it needs, then runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export POLAREDGE_TRAEFIK="$(scripts/fetch-traefik.sh x86_64)"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (the wireguard-go interop test needs root: it creates and removes its own network namespaces;"
echo "   qemu-tests boot the appliance for x86_64 and aarch64 under QEMU TCG, fetching kernels with apt)"
cargo test --workspace --locked

echo "== the patched smoltcp's TCP tests, ours among them (third_party/smoltcp/PATCHES.md)"
cargo test --manifest-path third_party/smoltcp/Cargo.toml --locked --lib --features socket-tcp-cubic -- socket::tcp \
  iface::interface::tests::tcp_

echo "== the main command, non-interactively (scripts/demo.sh --check)"
scripts/demo.sh --check

echo "== static release builds"
scripts/build-static.sh
