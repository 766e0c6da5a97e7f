#!/usr/bin/env bash
# Benchmarks the tunnel against its anchors in one run (root: it creates and removes network namespaces).
# Prints throughput (both directions), CPU, peak RSS, idle wake-ups, and memory per connection.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
command -v onetun >/dev/null || cargo install --locked onetun --version 0.3.10
cargo build --release --locked -p polaredge-tunnel --bin polaredge-tunnel-bench
target/release/polaredge-tunnel-bench all
target/release/polaredge-tunnel-bench connmem
