//! Operations endpoints on a kernel port, for probes and Prometheus: `/healthz`, `/readyz`, `/metrics`.

use crate::relay::RelayMetrics;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl Metrics {
    /// Ready once some agent serves our latest snapshot.
    pub fn ready(&self) -> bool {
        self.agents.lock().unwrap().values().any(|a| a.in_sync)
    }

    /// Prometheus text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP polaredge_client_snapshots_total Changed snapshots rendered.\n# TYPE polaredge_client_snapshots_total counter\npolaredge_client_snapshots_total {}", r(&self.snapshots));
        let _ = writeln!(out, "# HELP polaredge_client_render_seconds Duration of the last render.\n# TYPE polaredge_client_render_seconds gauge\npolaredge_client_render_seconds {:.6}", r(&self.render_micros) as f64 / 1e6);
        let _ = writeln!(out, "# HELP polaredge_client_routers Routers in the last snapshot.\n# TYPE polaredge_client_routers gauge\npolaredge_client_routers {}", r(&self.routers));
        let _ = writeln!(out, "# HELP polaredge_client_uploads_total Uploads to agents by outcome.\n# TYPE polaredge_client_uploads_total counter");
        let agents = self.agents.lock().unwrap().clone();
        for (name, a) in &agents {
            let _ = writeln!(out, "polaredge_client_uploads_total{{agent=\"{name}\",result=\"live\"}} {}", a.applied);
            let _ = writeln!(out, "polaredge_client_uploads_total{{agent=\"{name}\",result=\"failed\"}} {}", a.failed);
        }
        let _ = writeln!(out, "# HELP polaredge_client_agent_in_sync Whether the agent serves the latest snapshot.\n# TYPE polaredge_client_agent_in_sync gauge");
        for (name, a) in &agents {
            let _ = writeln!(out, "polaredge_client_agent_in_sync{{agent=\"{name}\"}} {}", u8::from(a.in_sync));
        }
        let _ = writeln!(out, "# HELP polaredge_client_agent_apply_seconds Apply time the agent reported for the last upload.\n# TYPE polaredge_client_agent_apply_seconds gauge");
        for (name, a) in &agents {
            let _ = writeln!(
                out,
                "polaredge_client_agent_apply_seconds{{agent=\"{name}\"}} {:.3}",
                a.last_apply_ms as f64 / 1000.0
            );
        }
        let m = &self.relay;
        let _ = writeln!(out, "# HELP polaredge_client_relay_streams_total Streams from agents by outcome.\n# TYPE polaredge_client_relay_streams_total counter");
        for (outcome, n) in [
            ("accepted", r(&m.opened)),
            ("refused", r(&m.refused)),
            ("dial_failed", r(&m.dial_failed)),
            ("failed", r(&m.failed)),
            ("completed", r(&m.completed)),
        ] {
            let _ = writeln!(out, "polaredge_client_relay_streams_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP polaredge_client_relay_bytes_total Bytes relayed.\n# TYPE polaredge_client_relay_bytes_total counter");
        let _ =
            writeln!(out, "polaredge_client_relay_bytes_total{{direction=\"to_pods\"}} {}", r(&m.bytes_from_tunnel));
        let _ =
            writeln!(out, "polaredge_client_relay_bytes_total{{direction=\"from_pods\"}} {}", r(&m.bytes_to_tunnel));
        out
    }
}

/// Serves the endpoints on `addr` (one thread; requests are tiny).
pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot serve /healthz and /metrics on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("ops".into())
        .spawn(move || {
            for mut conn in listener.incoming().map_while(Result::ok) {
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/healthz" => ("200 OK", "ok\n".to_string()),
                    "/readyz" if metrics.ready() => ("200 OK", "ready\n".to_string()),
                    "/readyz" => ("503 Service Unavailable", "no agent serves the latest snapshot yet\n".to_string()),
                    "/metrics" => ("200 OK", metrics.text()),
                    _ => ("404 Not Found", "try /healthz, /readyz or /metrics\n".to_string()),
                };
                let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
