//! The relay: accepts the streams an agent forwards through the tunnel, reads which pod each is for (relay
//! preamble), refuses any target that is not an endpoint of the current snapshot, dials the pod with kernel
//! TCP and splices both ways (inside the tunnel driver).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tunnel::Tunnel;

/// How long a forwarded stream may take to name its target.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialing a pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoints the relay may dial: those of the last rendered snapshot.
pub type AllowList = Arc<RwLock<BTreeSet<SocketAddr>>>;

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Streams accepted from agents.
    pub accepted: AtomicU64,
    /// Streams refused: target not in the snapshot, or no valid preamble.
    pub refused: AtomicU64,
    /// Pods that could not be dialed.
    pub dial_failed: AtomicU64,
    /// Streams spliced to a pod and finished.
    pub completed: AtomicU64,
    /// Bytes from the edge to pods.
    pub bytes_to_pods: AtomicU64,
    /// Bytes from pods to the edge.
    pub bytes_from_pods: AtomicU64,
}

/// Decides whether a stream may go to `target`. Pure: the allow-list is the whole policy.
pub fn permitted(allowed: &BTreeSet<SocketAddr>, target: SocketAddr) -> bool {
    allowed.contains(&target)
}

/// Serves the relay port of one agent's tunnel until the tunnel stops.
pub fn spawn(tunnel: &Tunnel, port: u16, allowed: AllowList, metrics: Arc<RelayMetrics>) -> std::io::Result<()> {
    let listener = tunnel.listen(port)?;
    std::thread::Builder::new().name("relay".into()).spawn(move || {
        while let Ok(mut stream) = listener.accept() {
            metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let (allowed, metrics) = (Arc::clone(&allowed), Arc::clone(&metrics));
            // Reading the preamble and dialing block; a thread per pending stream keeps slow pods from
            // holding up the others.
            let _ = std::thread::Builder::new().name("relay-dial".into()).spawn(move || {
                let target = match stream.read_preamble(PREAMBLE_TIMEOUT) {
                    Ok(target) => target,
                    Err(e) => {
                        log::warn!("relay: refused a stream without a valid preamble: {e}");
                        metrics.refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                if !permitted(&allowed.read().unwrap(), target) {
                    log::warn!("relay: refused {target}: not an endpoint of the current snapshot");
                    metrics.refused.fetch_add(1, Ordering::Relaxed);
                    return; // dropping the stream resets it
                }
                let pod = match TcpStream::connect_timeout(&target, DIAL_TIMEOUT) {
                    Ok(pod) => pod,
                    Err(e) => {
                        log::warn!("relay: cannot reach pod {target}: {e}");
                        metrics.dial_failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                if let Ok(done) = stream.splice(pod) {
                    if let Ok(outcome) = done.recv() {
                        metrics.completed.fetch_add(1, Ordering::Relaxed);
                        metrics.bytes_to_pods.fetch_add(outcome.from_tunnel, Ordering::Relaxed);
                        metrics.bytes_from_pods.fetch_add(outcome.to_tunnel, Ordering::Relaxed);
                    }
                }
            });
        }
    })?;
    Ok(())
}
