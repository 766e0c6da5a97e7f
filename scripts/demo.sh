#!/usr/bin/env bash
# The main job: the whole POLAREDGE system on this machine, unprivileged, on loopback ports.
#   the agent (userspace WireGuard, control API inside the tunnel) + Traefik on 127.0.0.1:18080
#   the client reading examples/ (Ingresses, Services, EndpointSlices) as if they came from a cluster
#   two demo backends ("pods") on 127.0.0.1:18081 and :18082
# Edit examples/*.yaml while it runs (a host, a path) and watch the route change. Ctrl-C stops everything.
# `scripts/demo.sh --check` runs it non-interactively on a copy of examples/: checks the routes, edits a host,
# checks the change, and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[ "${1:-}" = "--check" ] && check=1

scripts/install-deps.sh
traefik=$(scripts/fetch-traefik.sh "$(uname -m)")
cargo build -q -p polaredge-agent -p polaredge-client
agent=target/debug/polaredge-agent
client=target/debug/polaredge-client

state=$(mktemp -d /tmp/polaredge-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

manifests=examples
if [ $check = 1 ]; then
  mkdir "$state/examples" && cp examples/*.yaml "$state/examples/"
  manifests="$state/examples"
fi

# Keys and configs: the agent listens for WireGuard on 127.0.0.1:51821, Traefik on 18080/18443.
$agent genkey > "$state/agent.key"
$agent genkey > "$state/client.key"
chmod 600 "$state"/*.key
cat > "$state/agent.yaml" <<YAML
state_dir: $state/agent-state
admin_socket: $state/agent.sock
wireguard:
  listen: "127.0.0.1:51821"
  private_key_file: $state/agent.key
  client_public_key: "$($agent pubkey < "$state/client.key")"
entrypoints:
  web: "127.0.0.1:18080"
  websecure: "127.0.0.1:18443"
traefik:
  binary: $traefik
YAML
cat > "$state/client.yaml" <<YAML
private_key_file: $state/client.key
cert_resolver: ""
ops_listen: "127.0.0.1:19090"
agents:
  - name: local-edge
    endpoint: "127.0.0.1:51821"
    public_key: "$($agent pubkey < "$state/agent.key")"
    public_address: 127.0.0.1
YAML

# Two "pods": static pages served by Python's http.server.
mkdir -p "$state/storefront" "$state/api/api"
echo "storefront: hello from the cluster" > "$state/storefront/index.html"
echo '{"api": "hello from the cluster"}' > "$state/api/api/index.html"
python3 -m http.server --bind 127.0.0.1 18081 --directory "$state/storefront" >/dev/null 2>&1 & pids+=($!)
python3 -m http.server --bind 127.0.0.1 18082 --directory "$state/api" >/dev/null 2>&1 & pids+=($!)

$agent run --config "$state/agent.yaml" 2>"$state/agent.log" & pids+=($!)
$client run --config "$state/client.yaml" --manifests "$manifests" 2>"$state/client.log" & pids+=($!)

get() { curl -s --max-time 5 -H "Host: $1" "http://127.0.0.1:18080$2" || true; }
wait_for() { # host path expected
  for _ in $(seq 1 150); do
    case "$(get "$1" "$2")" in *"$3"*) return 0 ;; esac
    sleep 0.2
  done
  echo "demo: http://$1$2 did not answer with \"$3\"" >&2
  echo "--- agent log"; cat "$state/agent.log"; echo "--- client log"; cat "$state/client.log"
  return 1
}

wait_for shop.localhost / "storefront"
if [ $check = 1 ]; then
  wait_for shop.localhost /api/ '"api"'
  wait_for gw.localhost / "storefront"   # the Gateway API's HTTPRoute (examples/gateway.yaml)
  wait_for gw.localhost /api/ '"api"'
  sed -i 's/host: shop.localhost/host: store.localhost/' "$manifests/ingress.yaml"
  wait_for store.localhost / "storefront"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: shop.localhost' http://127.0.0.1:18080/)" = 404 ]
  echo "demo check: routes served, edit followed"
  exit 0
fi

cat <<TEXT

POLAREDGE is running locally (agent + Traefik + client over a userspace WireGuard tunnel).

  curl -H 'Host: shop.localhost' http://127.0.0.1:18080/        # storefront pod
  curl -H 'Host: shop.localhost' http://127.0.0.1:18080/api/    # api pod
  curl -i -H 'Host: gw.localhost' http://127.0.0.1:18080/       # the same pods through a Gateway API HTTPRoute
  curl http://127.0.0.1:19090/metrics                           # client metrics

Edit examples/ingress.yaml (a host or a path) and the route changes within a fraction of a second.
Snapshots as they go live:
TEXT
tail -n +1 -f "$state/client.log" | grep --line-buffered -E "snapshot|live|WARN|ERROR" &
pids+=($!)
wait "${pids[2]}"
