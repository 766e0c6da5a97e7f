#!/usr/bin/env bash
# Benchmarks the tunnel against its anchors in one run (root: it creates and removes network namespaces).
# Prints throughput (both directions), CPU, peak RSS, idle wake-ups, memory per connection, the agent's
# upload -> live latency, idle RSS and binary sizes, and public load through the whole edge (wrk, bursts)
# against nginx and Traefik direct.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --bench
command -v onetun >/dev/null || cargo install --locked onetun --version 0.3.10
# rathole's own lock file pins a `time` crate that current Rust refuses, so it is installed without --locked.
command -v rathole >/dev/null || cargo install rathole --version 0.5.0
cargo build --release --locked -p polaredge-tunnel --features testing --bin polaredge-tunnel-bench
target/release/polaredge-tunnel-bench all
target/release/polaredge-tunnel-bench connmem
# WAN: the issue's profiles in virtual time (deterministic), then on real processes through the impairment relay.
cargo bench --locked -p polaredge-tunnel --bench wan_sim
target/release/polaredge-tunnel-bench wan
# The agent: upload -> live latency with real Traefik, idle RSS and size of the static binary.
export POLAREDGE_TRAEFIK="$(scripts/fetch-traefik.sh x86_64)"
scripts/build-static.sh
cargo bench --locked -p polaredge-agent --bench apply
# The client: rendering at scale, and Ingress change -> live at the edge (real agent and Traefik).
cargo build --release --locked -p polaredge-agent
cargo bench --locked -p polaredge-client --bench render
cargo bench --locked -p polaredge-client --bench watch_to_live
# Public load through the edge: wrk at 100, 1,000 and 10,000 connections and bursts, against nginx direct and
# Traefik direct in the same run.
cargo bench --locked -p polaredge-client --bench load
# Layer 4: TCP and UDP (iperf3) through a LoadBalancer Service's port at the edge against the pod directly.
cargo bench --locked -p polaredge-client --bench l4
# Fuzzing (never in CI): each cargo-fuzz target for 60 s from its seeds; prints runs, speed, coverage and peak
# memory. A crash stops the script with the reproducer in fuzz/artifacts/.
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
for target in datagram flow_frame http_head upload; do
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("seeds/$target")
  echo "== fuzz $target, 60 s"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time=60 -print_final_stats=1 2>&1 | grep -E '^(Done|stat::)|(INITED|DONE) cov:')
done
