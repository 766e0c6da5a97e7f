//! The relay: the streams an agent forwards through the tunnel each start with a relay preamble naming the pod
//! they are for, and the UDP flows it sends each name theirs in every datagram's frame (`tunnel::flow`); any
//! target that is not an endpoint of the current snapshot is refused. The tunnel driver does the work in its
//! event loop (preamble, policy, non-blocking dial, splice; a kernel UDP socket per flow: no thread per stream
//! or flow); this module is the policy and its wiring.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tunnel::{FlowCounters, RelayPolicy, RelayPort, StreamCounters, Tunnel, UdpRelayPort};

/// The endpoints the relay may dial: those of the last rendered snapshot.
pub type AllowList = Arc<RwLock<BTreeSet<SocketAddr>>>;

/// Counters for /metrics, kept by the tunnel drivers (one set for every agent's relay).
pub type RelayMetrics = StreamCounters;

/// Counters of the UDP relays for /metrics, kept by the tunnel drivers (one set for every agent's).
pub type UdpRelayMetrics = FlowCounters;

/// Decides whether a stream may go to `target`. Pure: the allow-list is the whole policy.
pub fn permitted(allowed: &BTreeSet<SocketAddr>, target: SocketAddr) -> bool {
    allowed.contains(&target)
}

struct SnapshotEndpoints(AllowList);

impl RelayPolicy for SnapshotEndpoints {
    fn max_header(&self) -> usize {
        protocol::relay::MAX_LEN
    }

    fn route(&self, head: &[u8]) -> Result<Option<(SocketAddr, usize)>, String> {
        let Some((target, len)) = protocol::relay::decode(head).map_err(|e| e.to_string())? else { return Ok(None) };
        if !permitted(&self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()), target) {
            return Err(format!("{target} is not an endpoint of the current snapshot"));
        }
        Ok(Some((target, len)))
    }
}

/// Serves the relay port of one agent's tunnel, inside its driver, until the returned handle is dropped.
pub fn serve(tunnel: &Tunnel, port: u16, allowed: AllowList, metrics: Arc<RelayMetrics>) -> std::io::Result<RelayPort> {
    tunnel.relay(port, Arc::new(SnapshotEndpoints(allowed)), metrics)
}

/// Serves the UDP relay port of one agent's tunnel (the same number as the TCP relay's), inside its driver,
/// until the returned handle is dropped. `allowed`: the UDP ports' endpoints.
pub fn serve_udp(
    tunnel: &Tunnel,
    port: u16,
    allowed: AllowList,
    metrics: Arc<UdpRelayMetrics>,
) -> std::io::Result<UdpRelayPort> {
    let resolve = move |target| permitted(&allowed.read().unwrap_or_else(|p| p.into_inner()), target).then_some(target);
    tunnel.relay_udp(port, Arc::new(resolve), metrics)
}
