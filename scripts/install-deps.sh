#!/usr/bin/env bash
# Installs what building and testing POLAREDGE needs on Debian 12, and nothing twice (idempotent).
# --bench: also the benchmarks' tools.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Installs the packages given that are not installed yet; extra apt-get options come first, then "--".
install_missing() {
  local options=()
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${options[@]}" \
    "${missing[@]}" >/dev/null
}

install_missing -- clang lld llvm iproute2 wireguard-go wireguard-tools iperf3 qemu-user-static file curl cpio \
  e2fsprogs skopeo systemd debian-archive-keyring openssl pebble redis-server redis-tools dnsmasq-base \
  bind9-dnsutils nghttp2-server

# QEMU for the appliance tests comes from bookworm-backports: the machine's qemu-utils is the backports
# build, which conflicts with bookworm's own qemu-system packages.
qemu_installed=$(dpkg-query -W -f='${Status}\n' qemu-system-x86 qemu-system-arm 2>/dev/null |
  grep -c "install ok installed" || true)
if [ "$qemu_installed" -lt 2 ]; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" |
    $sudo tee /etc/apt/sources.list.d/polaredge-backports.list >/dev/null
  install_missing -t bookworm-backports -- qemu-system-x86 qemu-system-arm
fi

# The benchmarks' own tools (scripts/bench.sh): wrk drives the load, nginx is the backend.
if [ "${1:-}" = "--bench" ]; then
  install_missing -- wrk nginx-light
fi

installed_targets=$(rustup target list --installed)
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done
installed_components=$(rustup component list --installed)
for component in rustfmt clippy; do
  grep -q "^$component" <<<"$installed_components" || rustup component add "$component"
done
