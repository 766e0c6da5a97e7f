#!/usr/bin/env bash
# Builds the release artifacts into OUT (default dist/):
#   polaredge-agent-<arch>              static musl agent, x86_64 and aarch64
#   polaredge-client-<arch>             static musl client
#   polaredge-client-<version>.oci.tar  the client's OCI image (amd64 + arm64; no Docker daemon involved)
#   appliance-<arch>/                   vmlinuz, initramfs.img (no config: append yours), manifest.txt
#   SHA256SUMS
# usage: scripts/release.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' client/Cargo.toml | head -1)
scripts/install-deps.sh
mkdir -p "$out"
scripts/build-static.sh
cargo build -q --locked -p polaredge-image
for arch in x86_64 aarch64; do
  target=$arch-unknown-linux-musl
  cargo build -q --release --locked --target "$target" -p polaredge-client
  cp "target/$target/release/polaredge-agent" "$out/polaredge-agent-$arch"
  cp "target/$target/release/polaredge-client" "$out/polaredge-client-$arch"
  target/debug/polaredge-image --arch "$arch" --kernel-dir "$(image/fetch-kernel.sh "$arch")" \
    --agent "target/$target/release/polaredge-agent" --traefik "$(scripts/fetch-traefik.sh "$arch")" \
    --out "$out/appliance-$arch" >/dev/null
done
target/debug/polaredge-oci --out "$out/polaredge-client-$version.oci.tar" --version "$version" \
  --binary "amd64=$out/polaredge-client-x86_64" --binary "arm64=$out/polaredge-client-aarch64"
(cd "$out" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
echo "release $version in $out:"
(cd "$out" && cat SHA256SUMS)
