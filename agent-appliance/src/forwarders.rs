//! Forwarders: one loopback listener per pod endpoint in the live config. Traefik connects to the listener
//! as if it were the pod; the tunnel driver accepts each connection itself and carries it as a tunnel stream
//! to the client's relay, led by the relay preamble naming the pod, spliced both ways. No thread per
//! forwarder or per connection: everything runs in the driver's event loop.
//!
//! Listeners for endpoints that left the config stop accepting at once; their open connections keep going
//! until either side closes them (they live in the driver, not here).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tunnel::driver::Forwarding;
use tunnel::{StreamCounters, Tunnel};

/// The set of forwarders.
pub struct Forwarders {
    tunnel: Arc<Tunnel>,
    /// The relay of every client replica (streams take the live ones in turn).
    relays: Vec<SocketAddr>,
    active: BTreeMap<SocketAddr, Forwarding>,
    /// Counters of every forwarded stream, kept by the driver (for /metrics).
    pub metrics: Arc<StreamCounters>,
}

impl Forwarders {
    /// Forwarders that reach the client's relays at `relays` (one per replica) through `tunnel`.
    pub fn new(tunnel: Arc<Tunnel>, relays: Vec<SocketAddr>) -> Forwarders {
        Forwarders { tunnel, relays, active: BTreeMap::new(), metrics: Arc::new(StreamCounters::default()) }
    }

    /// Makes sure every pod in `pods` has a forwarder; returns pod -> local listener address for all of them.
    /// All or nothing: if one cannot be opened (e.g. out of file descriptors), the ones opened by this call are
    /// closed again and the set is as before.
    pub fn ensure(&mut self, pods: &BTreeSet<SocketAddr>) -> io::Result<BTreeMap<SocketAddr, SocketAddr>> {
        let mut opened = BTreeMap::new();
        for &pod in pods.iter().filter(|pod| !self.active.contains_key(pod)) {
            let forwarding = tunnel::driver::listen(SocketAddr::from(([127, 0, 0, 1], 0)))
                .and_then(|listener| {
                    self.tunnel.forward_from(
                        listener,
                        self.relays.clone(),
                        protocol::relay::encode(pod),
                        Arc::clone(&self.metrics),
                    )
                })
                .map_err(|e| {
                    let message = format!(
                        "cannot open a loopback forwarder for pod {pod}: {e} (the {} opened for this config so far \
                         are closed again; raise the open-files limit if it is exhausted)",
                        opened.len()
                    );
                    io::Error::new(e.kind(), message)
                })?;
            opened.insert(pod, forwarding);
        }
        self.active.append(&mut opened);
        Ok(pods.iter().map(|pod| (*pod, self.active[pod].local_addr())).collect())
    }

    /// Closes the listeners of pods not in `pods`.
    pub fn retain(&mut self, pods: &BTreeSet<SocketAddr>) {
        self.active.retain(|pod, _| pods.contains(pod));
    }

    /// Pod -> local listener, for /status.
    pub fn listeners(&self) -> BTreeMap<SocketAddr, SocketAddr> {
        self.active.iter().map(|(pod, f)| (*pod, f.local_addr())).collect()
    }
}
