#!/usr/bin/env bash
# Installs what building and testing POLAREDGE needs on Debian 12, and nothing twice (idempotent).
set -euo pipefail

packages=(clang lld llvm iproute2 wireguard-go wireguard-tools iperf3 qemu-user-static file curl cpio e2fsprogs skopeo systemd
  debian-archive-keyring)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU for the appliance tests comes from bookworm-backports: the machine's qemu-utils is the backports
# build, which conflicts with bookworm's own qemu-system packages.
qemu=(qemu-system-x86 qemu-system-arm)
missing=()
for pkg in "${qemu[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from bookworm-backports: ${missing[*]}"
  echo "deb http://deb.debian.org/debian bookworm-backports main" |
    $sudo tee /etc/apt/sources.list.d/polaredge-backports.list >/dev/null
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    "${missing[@]}" >/dev/null
fi

installed_targets=$(rustup target list --installed)
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
installed_components=$(rustup component list --installed)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed_components" || rustup component add "$component"
done
