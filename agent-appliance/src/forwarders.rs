//! Forwarders: one loopback listener per pod endpoint in the live config. Traefik connects to the listener
//! as if it were the pod; each connection becomes a tunnel stream to the client's relay, led by the relay
//! preamble naming the pod, and spliced both ways inside the tunnel driver.
//!
//! Listeners for endpoints that left the config stop accepting at once; their open connections keep going
//! until either side closes them (they live in the driver, not here).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use tunnel::driver::SpliceOutcome;
use tunnel::Tunnel;

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    /// Connections Traefik opened to forwarders.
    pub accepted: AtomicU64,
    /// Connections that ended, cleanly or not.
    pub closed: AtomicU64,
    /// Connections that ended with a reset or a refused tunnel connection.
    pub failed: AtomicU64,
    /// Bytes from Traefik to the cluster.
    pub bytes_to_cluster: AtomicU64,
    /// Bytes from the cluster to Traefik.
    pub bytes_from_cluster: AtomicU64,
}

struct Forwarder {
    local: SocketAddr,
    listener: Arc<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket wakes the blocked accept with an error: the thread ends.
        let _ = rustix::net::shutdown(self.listener.as_fd(), rustix::net::Shutdown::Read);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The set of forwarders.
pub struct Forwarders {
    tunnel: Arc<Tunnel>,
    relay: SocketAddr,
    active: BTreeMap<SocketAddr, Forwarder>,
    done: Sender<SpliceOutcome>,
    /// Shared counters.
    pub metrics: Arc<ForwardMetrics>,
}

impl Forwarders {
    /// Forwarders that reach the client's relay at `relay` through `tunnel`.
    pub fn new(tunnel: Arc<Tunnel>, relay: SocketAddr) -> Forwarders {
        let metrics = Arc::new(ForwardMetrics::default());
        let (done, outcomes) = mpsc::channel::<SpliceOutcome>();
        let counters = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("forward-metrics".into())
            .spawn(move || {
                for outcome in outcomes {
                    counters.closed.fetch_add(1, Ordering::Relaxed);
                    if !outcome.clean {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.bytes_to_cluster.fetch_add(outcome.to_tunnel, Ordering::Relaxed);
                    counters.bytes_from_cluster.fetch_add(outcome.from_tunnel, Ordering::Relaxed);
                }
            })
            .expect("spawning a thread");
        Forwarders { tunnel, relay, active: BTreeMap::new(), done, metrics }
    }

    /// Makes sure every pod in `pods` has a forwarder; returns pod -> local listener address for all of them.
    pub fn ensure(&mut self, pods: &BTreeSet<SocketAddr>) -> io::Result<BTreeMap<SocketAddr, SocketAddr>> {
        for &pod in pods {
            if self.active.contains_key(&pod) {
                continue;
            }
            let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
            let local = listener.local_addr()?;
            let (tunnel, relay, done, metrics) =
                (Arc::clone(&self.tunnel), self.relay, self.done.clone(), Arc::clone(&self.metrics));
            let accepting = Arc::clone(&listener);
            let thread = std::thread::Builder::new().name(format!("fwd-{pod}")).spawn(move || {
                for conn in accepting.incoming() {
                    let Ok(conn) = conn else { break };
                    metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = tunnel.forward(conn, relay, tunnel::relay::encode(pod), done.clone()) {
                        log::error!("forwarder for {pod}: the tunnel is gone ({e})");
                        break;
                    }
                }
            })?;
            self.active.insert(pod, Forwarder { local, listener, thread: Some(thread) });
        }
        Ok(pods.iter().map(|pod| (*pod, self.active[pod].local)).collect())
    }

    /// Closes the listeners of pods not in `pods`.
    pub fn retain(&mut self, pods: &BTreeSet<SocketAddr>) {
        self.active.retain(|pod, _| pods.contains(pod));
    }

    /// Pod -> local listener, for /status.
    pub fn listeners(&self) -> BTreeMap<SocketAddr, SocketAddr> {
        self.active.iter().map(|(pod, f)| (*pod, f.local)).collect()
    }
}
