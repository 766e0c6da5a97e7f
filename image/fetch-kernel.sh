#!/usr/bin/env bash
# Downloads Debian 12's cloud kernel for one architecture with apt (a private apt configuration, so the
# system's dpkg architectures and sources stay untouched) and unpacks the kernel image and the modules the
# appliance's init loads. Cached: a second run with the kernel present does nothing.
#
#   image/fetch-kernel.sh x86_64|aarch64 [CACHE_DIR]     (default CACHE_DIR: .cache/kernel)
#
# Prints the folder holding `vmlinuz` and `modules/` (the .ko files, flat).
set -euo pipefail

arch=${1:?usage: fetch-kernel.sh x86_64|aarch64 [CACHE_DIR]}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${2:-$root/.cache/kernel}
case "$arch" in
  x86_64) debarch=amd64 ;;
  aarch64) debarch=arm64 ;;
  *) echo "fetch-kernel.sh: unknown architecture $arch (x86_64 or aarch64)" >&2; exit 2 ;;
esac

out=$cache/$arch
if [ -s "$out/vmlinuz" ] && [ -d "$out/modules" ]; then
  echo "$out"
  exit 0
fi

apt_dir=$cache/apt-$debarch
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc}
cat >"$apt_dir/etc/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SOURCES
cat >"$apt_dir/etc/apt.conf" <<CONF
APT::Architecture "$debarch";
APT::Architectures { "$debarch"; };
Dir::State::Lists "$apt_dir/lists";
Dir::State::status "$apt_dir/etc/status";
Dir::Cache::archives "$apt_dir/archives";
Dir::Etc::SourceList "$apt_dir/etc/sources.list";
Dir::Etc::SourceParts "$apt_dir/etc/none";
Acquire::Languages "none";
APT::Sandbox::User "root";
CONF
: >"$apt_dir/etc/status"
export APT_CONFIG=$apt_dir/etc/apt.conf
apt-get -qq update >&2
# The metapackage names the current kernel package.
package=$(apt-cache depends "linux-image-cloud-$debarch" | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
[ -n "$package" ] || { echo "fetch-kernel.sh: cannot resolve linux-image-cloud-$debarch" >&2; exit 1; }
echo "fetch-kernel.sh: downloading $package" >&2
(cd "$apt_dir/archives" && apt-get -qq download "$package:$debarch" >&2)
deb=$(ls "$apt_dir/archives/${package}"_*_"$debarch".deb | head -1)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
version=${package#linux-image-}
mkdir -p "$out.tmp/modules"
cp "$tmp/boot/vmlinuz-$version" "$out.tmp/vmlinuz"
cp "$tmp/boot/config-$version" "$out.tmp/config"
# Every module the init might be asked to load, flat by name (Debian ships them uncompressed).
find "$tmp/lib/modules/$version/kernel" -name '*.ko' -exec cp {} "$out.tmp/modules/" \;
echo "$package" >"$out.tmp/package"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
