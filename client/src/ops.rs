//! Operations endpoints on a kernel port, for probes and Prometheus: `/healthz`, `/readyz`, `/metrics`.

use crate::relay::{RelayMetrics, UdpRelayMetrics};
use protocol::http::{parse_head, Limits};
use protocol::metrics::{Exposition, Kind::Counter, Kind::Gauge};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-agent send state.
#[derive(Debug, Default, Clone)]
pub struct AgentState {
    /// Uploads the agent confirmed live.
    pub applied: u64,
    /// Uploads that failed or were not confirmed.
    pub failed: u64,
    /// Whether the agent serves our latest snapshot.
    pub in_sync: bool,
    /// Apply time the agent reported for the last upload, in milliseconds.
    pub last_apply_ms: u64,
}

/// Everything the endpoints report.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Snapshots rendered (changed ones).
    pub snapshots: AtomicU64,
    /// Last render's duration, in microseconds.
    pub render_micros: AtomicU64,
    /// Routers in the last snapshot.
    pub routers: AtomicU64,
    /// Per agent, by name.
    pub agents: Mutex<std::collections::BTreeMap<String, AgentState>>,
    /// Relay counters.
    pub relay: Arc<RelayMetrics>,
    /// UDP relay counters.
    pub udp_relay: Arc<UdpRelayMetrics>,
    /// A replica with a key of its own opened its relays (it carries the agents' streams, leader or not).
    pub relaying: std::sync::atomic::AtomicBool,
}

impl Metrics {
    /// Ready once some agent serves our latest snapshot, or, for a replica with a key of its own, once its
    /// relays are open: what a rolling update must wait for before stopping the next replica.
    pub fn ready(&self) -> bool {
        self.relaying.load(Ordering::Relaxed) || self.agents.lock().unwrap().values().any(|a| a.in_sync)
    }

    /// Prometheus text.
    pub fn text(&self) -> String {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut text = Exposition::new();
        text.family("polaredge_client_snapshots_total", Counter, "Changed snapshots rendered.")
            .value(r(&self.snapshots));
        text.family("polaredge_client_render_seconds", Gauge, "Duration of the last render.")
            .value(format_args!("{:.6}", r(&self.render_micros) as f64 / 1e6));
        text.family("polaredge_client_routers", Gauge, "Routers in the last snapshot.").value(r(&self.routers));
        let agents = self.agents.lock().unwrap().clone();
        let mut uploads = text.family("polaredge_client_uploads_total", Counter, "Uploads to agents by outcome.");
        for (name, a) in &agents {
            uploads.sample(&[("agent", name), ("result", "live")], a.applied);
            uploads.sample(&[("agent", name), ("result", "failed")], a.failed);
        }
        let mut in_sync =
            text.family("polaredge_client_agent_in_sync", Gauge, "Whether the agent serves the latest snapshot.");
        for (name, a) in &agents {
            in_sync.sample(&[("agent", name)], u8::from(a.in_sync));
        }
        let mut apply = text.family(
            "polaredge_client_agent_apply_seconds",
            Gauge,
            "Apply time the agent reported for the last upload.",
        );
        for (name, a) in &agents {
            apply.sample(&[("agent", name)], format_args!("{:.3}", a.last_apply_ms as f64 / 1000.0));
        }
        let m = &self.relay;
        text.family("polaredge_client_relay_streams_total", Counter, "Streams from agents by outcome.")
            .sample(&[("outcome", "accepted")], r(&m.opened))
            .sample(&[("outcome", "refused")], r(&m.refused))
            .sample(&[("outcome", "dial_failed")], r(&m.dial_failed))
            .sample(&[("outcome", "failed")], r(&m.failed))
            .sample(&[("outcome", "completed")], r(&m.completed));
        text.family("polaredge_client_relay_bytes_total", Counter, "Bytes relayed.")
            .sample(&[("direction", "to_pods")], r(&m.bytes_from_tunnel))
            .sample(&[("direction", "from_pods")], r(&m.bytes_to_tunnel));
        let u = &self.udp_relay;
        text.family(
            "polaredge_client_relay_udp_flows_total",
            Counter,
            "UDP flows from agents by outcome (refused: not an endpoint of the snapshot).",
        )
        .sample(&[("outcome", "opened")], r(&u.flows_opened))
        .sample(&[("outcome", "refused")], r(&u.flows_refused))
        .sample(&[("outcome", "over_cap")], r(&u.flows_over_cap))
        .sample(&[("outcome", "expired")], r(&u.flows_expired));
        text.family(
            "polaredge_client_relay_udp_datagrams_total",
            Counter,
            "UDP datagrams relayed (dropped: unframed, queue full, too large).",
        )
        .sample(&[("direction", "to_pods")], r(&u.datagrams_to_tunnel))
        .sample(&[("direction", "from_pods")], r(&u.datagrams_from_tunnel))
        .sample(&[("direction", "dropped")], r(&u.dropped) + r(&u.too_large));
        text.into_text()
    }
}

/// Connections served at once; more are closed at once (probes retry). Each is short: see [`REQUEST_DEADLINE`].
const MAX_CONNECTIONS: usize = 32;
/// How long a request may take to arrive, whole: a slow scraper is cut off, and never delays a probe, since
/// every connection is served on its own thread.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Serves the endpoints on `addr`, each connection on a thread of its own (at most [`MAX_CONNECTIONS`]).
pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot serve /healthz and /metrics on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ops".into())
        .spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue; // dropped: closed at once
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (metrics, done) = (Arc::clone(&metrics), Arc::clone(&active));
                let spawned = std::thread::Builder::new().name("ops-conn".into()).spawn(move || {
                    serve(conn, &metrics);
                    done.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    // The thread never ran, nor its decrement.
                    active.fetch_sub(1, Ordering::Relaxed);
                    log::warn!("ops: cannot start a thread for a connection");
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}

/// Answers one request (then closes), if it arrives whole within [`REQUEST_DEADLINE`].
fn serve(mut conn: TcpStream, metrics: &Metrics) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let limits = Limits { max_head: 8 * 1024, max_body: 0 };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head = loop {
        match parse_head(&buf, &limits) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(_) => return,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (status, body) = match head.path.as_str() {
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/readyz" if metrics.ready() => ("200 OK", "ready\n".to_string()),
        "/readyz" => ("503 Service Unavailable", "no agent serves the latest snapshot yet\n".to_string()),
        "/metrics" => ("200 OK", metrics.text()),
        _ => ("404 Not Found", "try /healthz, /readyz or /metrics\n".to_string()),
    };
    let _ = conn.set_write_timeout(Some(REQUEST_DEADLINE));
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_scraper_never_delays_a_probe() {
        let metrics = Arc::new(Metrics::default());
        let addr = spawn("127.0.0.1:0".parse().unwrap(), metrics).unwrap();
        // Drips a byte now and then, as the one that kept /healthz down for 35 s did.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /met").unwrap();
        let started = Instant::now();
        let mut probe = TcpStream::connect(addr).unwrap();
        probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
        assert!(started.elapsed() < Duration::from_millis(500), "the probe waited {:?}", started.elapsed());
        // The slow one is cut off at the request deadline.
        slow.set_read_timeout(Some(REQUEST_DEADLINE * 3)).unwrap();
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no answer to an incomplete request");
    }
}
