//! The control API's JSON bodies (`POST /upload`, `GET /status` at [`crate::defaults::API_PORT`] inside the
//! tunnel). The agent serializes these types and the client deserializes the same types.

use serde::{Deserialize, Serialize};

/// The answer to `POST /upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAnswer {
    /// The generation of the upload ([`crate::generation_of`]).
    pub generation: String,
    /// Whether Traefik serves it now.
    pub live: bool,
    /// It was already live, and the routes file and Traefik still had it: nothing was done.
    #[serde(default)]
    pub unchanged: bool,
    /// Upload received -> confirmed live, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_ms: Option<u64>,
    /// Errors Traefik reports for routers and services of the live file.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Why it is not live (with what to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What validation refused, each as `path: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// After a rollback: the generation the routes file holds again (`None`: no routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// `l4` ports served without: the agent keeps them for itself or may not open them. Everything else in
    /// the upload is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
    /// Refused because a newer leader holds this edge: its term (see [`crate::fencing`]). The uploader must
    /// stop serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<u64>,
}

/// An `l4` port of a snapshot that an agent does not serve, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withheld {
    /// TCP or UDP.
    pub transport: Transport,
    /// The port.
    pub port: u16,
    /// `namespace/name` of the Service that asked for it.
    pub service: String,
    /// Why, for people (names the port, the Service and what to do).
    pub reason: String,
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "l4.{}.{}: {}", self.transport, self.port, self.reason)
    }
}

impl UploadAnswer {
    /// A refusal of `generation` for `error`.
    pub fn refused(generation: &str, error: impl Into<String>) -> UploadAnswer {
        UploadAnswer { generation: generation.into(), error: Some(error.into()), ..Default::default() }
    }
}

/// The answer to `GET /status` (and `polaredge-agent status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// The generation Traefik serves, as far as the agent knows.
    pub live: Option<Live>,
    /// The routes file.
    pub routes_file: RoutesFile,
    /// The Traefik process.
    pub traefik: Traefik,
    /// The WireGuard tunnel, when the driver answered.
    pub tunnel: Option<Tunnel>,
    /// Pod -> loopback forwarder.
    pub forwarders: Vec<Forwarder>,
    /// Public TCP and UDP ports the agent serves itself (Services of type LoadBalancer).
    #[serde(default)]
    pub l4: Vec<L4Port>,
    /// The highest leader term the agent has obeyed (see [`crate::fencing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// The transport of a public port the agent serves itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Connections, each carried as a stream through the tunnel.
    #[default]
    Tcp,
    /// Datagrams; each public client address is a flow through the tunnel.
    Udp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// One public TCP or UDP port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Port {
    /// TCP or UDP (agents before UDP omit it: TCP).
    #[serde(default)]
    pub transport: Transport,
    /// The port.
    pub port: u16,
    /// `namespace/name` of its Service.
    pub service: String,
    /// Its pod endpoints.
    pub servers: Vec<String>,
    /// PROXY protocol version sent to the pods, if any.
    pub proxy_protocol: Option<u8>,
}

impl Status {
    /// The generation Traefik confirmed, if any.
    pub fn confirmed_generation(&self) -> Option<&str> {
        self.live.as_ref().filter(|l| l.confirmed).map(|l| l.generation.as_str())
    }
}

/// The live generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Its generation.
    pub generation: String,
    /// Whether Traefik showed it in this run of the agent.
    pub confirmed: bool,
    /// When it was written, seconds since the Unix epoch.
    pub applied_at_unix: u64,
    /// Upload received -> confirmed, in milliseconds.
    pub apply_ms: u64,
    /// Routers in it.
    pub routers: usize,
    /// Errors Traefik reports for it.
    pub errors: Vec<String>,
    /// Its `l4` ports that are not served, and why (see [`UploadAnswer::withheld`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<Withheld>,
}

/// The routes file Traefik reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesFile {
    /// The generation it holds (differs from the live one while an upload waits for Traefik).
    pub generation: Option<String>,
    /// Times it was found deleted or changed on disk, or not read by Traefik, and written again.
    pub repairs: u64,
}

/// The Traefik process and its health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traefik {
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Seconds the current process has run.
    pub uptime_s: Option<u64>,
    /// Restarts after it exited.
    pub restarts: u64,
    /// How the last process ended.
    pub last_exit: Option<String>,
    /// Whether the last probe found it answering and serving the routes file's generation.
    pub healthy: bool,
    /// What the last probe found.
    pub health: String,
    /// Processes the watchdog killed (not answering, or serving another generation).
    pub health_restarts: u64,
    /// Routes files written again because Traefik served another generation.
    pub file_rewrites: u64,
}

/// The WireGuard tunnel to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// The client's outer address, once it handshook.
    pub peer_endpoint: Option<String>,
    /// Seconds since the last handshake.
    pub last_handshake_s: Option<u64>,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// Open TCP connections inside the tunnel.
    pub connections: usize,
    /// Datagrams dropped as invalid.
    pub dropped_invalid: u64,
    /// Datagrams dropped as replays.
    pub dropped_replay: u64,
    /// Every client replica's tunnel (the first is the one above), when the agent serves several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaTunnel>,
}

/// One client replica's tunnel, as the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaTunnel {
    /// The replica's outer address, once it handshook.
    pub endpoint: Option<String>,
    /// Seconds since the last handshake.
    pub last_handshake_s: Option<u64>,
    /// Seconds since anything authentic came from it (keepalives included).
    pub last_received_s: Option<u64>,
}

/// One forwarder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarder {
    /// The pod endpoint.
    pub pod: String,
    /// The loopback listener Traefik connects to.
    pub listen: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(value: T) {
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<T>(&text).unwrap(), value, "{text}");
    }

    #[test]
    fn every_body_round_trips() {
        round_trip(UploadAnswer {
            generation: "0123456789abcdef".into(),
            live: true,
            apply_ms: Some(42),
            errors: vec!["http/routers a: bad rule".into()],
            ..Default::default()
        });
        round_trip(UploadAnswer { fenced_by: Some(9), ..UploadAnswer::refused("0123456789abcdef", "fenced") });
        round_trip(UploadAnswer {
            problems: vec!["http.routers.a.rule: empty rule".into()],
            serving: Some("fedcba9876543210".into()),
            ..UploadAnswer::refused("0123456789abcdef", "upload refused")
        });
        round_trip(Status {
            uptime_s: 5,
            live: Some(Live { generation: "g".into(), confirmed: true, routers: 3, ..Default::default() }),
            routes_file: RoutesFile { generation: Some("g".into()), repairs: 1 },
            traefik: Traefik { pid: Some(7), healthy: true, health: "ok".into(), ..Default::default() },
            tunnel: Some(Tunnel { peer_endpoint: Some("192.0.2.1:4000".into()), ..Default::default() }),
            forwarders: vec![Forwarder { pod: "10.1.0.1:80".into(), listen: "127.0.0.1:40000".into() }],
            l4: vec![
                L4Port {
                    transport: Transport::Tcp,
                    port: 5432,
                    service: "db/pg".into(),
                    servers: vec!["10.1.0.5:5432".into()],
                    proxy_protocol: Some(2),
                },
                L4Port { transport: Transport::Udp, port: 53, service: "dns/coredns".into(), ..Default::default() },
            ],
            term: Some(4),
        });
        // An agent from before UDP sends no transport: its ports are TCP.
        let old: L4Port = serde_json::from_str(r#"{"port": 22, "service": "a/b", "servers": []}"#).unwrap();
        assert_eq!(old.transport, Transport::Tcp);
    }

    #[test]
    fn only_a_confirmed_generation_counts() {
        let mut status =
            Status { live: Some(Live { generation: "g".into(), ..Default::default() }), ..Default::default() };
        assert_eq!(status.confirmed_generation(), None);
        status.live.as_mut().unwrap().confirmed = true;
        assert_eq!(status.confirmed_generation(), Some("g"));
    }
}
