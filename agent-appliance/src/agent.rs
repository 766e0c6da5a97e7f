//! `polaredge-agent run`: wires the tunnel, forwarders, apply pipeline, Traefik supervisor, watchdog, control
//! API and admin socket together, and shuts them down on SIGTERM/SIGINT.
//!
//! Locks: the [`Applier`] is taken by uploads (one at a time, for the whole upload, its wait for Traefik
//! included) and by the watchdog (only when no upload holds it). /status and /metrics never take it: they read
//! the applier's [`View`], the health judgement and the supervisor's state, each behind a short lock.

use crate::apply::{self, Applier, View, CONFIRM_TIMEOUT};
use crate::config::AgentConfig;
use crate::forwarders::Forwarders;
use crate::http::{self, slots::Slots, Request, Response};
use crate::ports;
use crate::store::Store;
use crate::traefik::{api::Api, health::Health, static_config, supervisor::Supervisor};
use nix::sys::signal::{SigSet, Signal};
use protocol::api::{self, Transport, UploadAnswer};
use protocol::fencing::Fence;
use protocol::http::Limits;
use protocol::metrics::{Exposition, Kind::Counter, Kind::Gauge};
use routes::Policy;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, UNIX_EPOCH};
use tunnel::{
    Cidr, CoreConfig, FlowCounters, PeerConfig, PresharedKey, PrivateKey, PublicKey, StreamCounters, Tunnel,
    TunnelConfig,
};

/// Concurrent control API connections; a new one evicts the longest-idle one, so a flood cannot exhaust
/// threads and idle connections cannot lock the API out.
const MAX_API_CONNECTIONS: usize = 16;

/// The running agent, shared by the API handlers and the watchdog.
pub struct Agent {
    pub(crate) applier: Mutex<Applier>,
    /// The highest client leader term obeyed (see `protocol::fencing`); taken under the applier's lock.
    fence: Mutex<Fence>,
    pub(crate) view: Arc<Mutex<View>>,
    pub(crate) health: Mutex<Health>,
    pub(crate) supervisor: Mutex<Supervisor>,
    pub(crate) api: Api,
    /// The public entrypoint address the canary request goes to.
    pub(crate) canary: Option<SocketAddr>,
    forwarder_metrics: Arc<StreamCounters>,
    l4_metrics: Arc<StreamCounters>,
    udp_metrics: Arc<FlowCounters>,
    policy: Policy,
    tunnel: Arc<Tunnel>,
    started: Instant,
    limits: Limits,
}

/// Reads a secret key file, refusing one that other users can read (as wg(8) warns about).
fn read_key<T: std::str::FromStr<Err = tunnel::KeyError>>(path: &Path, what: &str) -> Result<T, String> {
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the {what} {} is readable by other users (mode {:04o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The tunnel's configuration from the agent's.
pub fn tunnel_config(config: &AgentConfig) -> Result<TunnelConfig, String> {
    let wg = &config.wireguard;
    let private_key: PrivateKey = read_key(&wg.private_key_file, "private key")?;
    let peer: PublicKey = wg.client_public_key.parse().map_err(|e| format!("wireguard.client_public_key: {e}"))?;
    let preshared_key: Option<PresharedKey> =
        wg.preshared_key_file.as_deref().map(|p| read_key(p, "preshared key")).transpose()?;
    let address: Cidr =
        wg.address.parse().map_err(|_| format!("wireguard.address {:?} is not an address with prefix", wg.address))?;
    let host = Cidr::host;
    let mut other_peers = Vec::new();
    for (n, replica) in wg.replicas.iter().enumerate() {
        // Inside the subnet, and neither its network nor its broadcast address (10.88.0.3 in a /30).
        let inside = address.has_host(replica.address);
        let taken = wg.replicas[..n].iter().any(|r| r.address == replica.address || r.public_key == replica.public_key)
            || replica.public_key == wg.client_public_key;
        if taken {
            return Err(format!(
                "wireguard.replicas[{n}] repeats an address or key given before; each replica needs its own"
            ));
        }
        if !inside || replica.address == wg.client_address {
            return Err(format!(
                "wireguard.replicas[{n}].address {} must be inside wireguard.address {address} and differ from \
                 client_address (e.g. address 10.88.0.1/24 with replicas at 10.88.0.3, 10.88.0.4, ...)",
                replica.address
            ));
        }
        let public_key = replica.public_key.parse().map_err(|e| format!("wireguard.replicas[{n}].public_key: {e}"))?;
        other_peers.push(PeerConfig {
            public_key,
            preshared_key: preshared_key.clone(),
            persistent_keepalive: None,
            allowed_ips: vec![host(replica.address)],
            endpoint: None,
        });
    }
    let mut core = CoreConfig {
        preshared_key,
        peer_allowed_ips: vec![host(wg.client_address)],
        other_peers,
        ..CoreConfig::new(private_key, peer, vec![address])
    };
    config.streams.apply(&mut core.tcp);
    core.udp.max_flows = config.l4.udp_max_flows;
    core.udp.idle_timeout = std::time::Duration::from_secs(config.l4.udp_idle_timeout_s);
    Ok(TunnelConfig { core, listen: wg.listen })
}

/// Finds the Traefik binary: a path as given, or a bare name in PATH.
pub fn find_traefik(config: &AgentConfig) -> Result<std::path::PathBuf, String> {
    let binary = &config.traefik.binary;
    let found = if binary.components().count() > 1 {
        binary.exists().then(|| binary.clone())
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(binary))
            .find(|p| p.exists())
    };
    let path = found.ok_or_else(|| {
        format!(
            "Traefik binary {:?} not found; install it (polaredge-agent install-traefik) or set traefik.binary",
            binary.display()
        )
    })?;
    if let Some(expected) = &config.traefik.sha256 {
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let actual: String = protocol::generation::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(format!("{}: sha256 {actual} does not match traefik.sha256 {expected}", path.display()));
        }
    }
    Ok(path)
}

/// The policy uploads are checked against.
pub fn policy(config: &AgentConfig) -> Policy {
    Policy {
        entry_points: config.entrypoints.keys().cloned().collect(),
        cert_resolvers: config.acme.iter().map(|_| static_config::ACME_RESOLVER.to_string()).collect(),
        max_backends: routes::DEFAULT_MAX_BACKENDS,
        now: routes::system_now,
        l4_ports: config.l4.ranges().unwrap_or_default(),
        reserved_ports: config
            .entrypoints
            .values()
            .filter_map(|address| ports::entrypoint_addr(address).ok().map(|a| a.port()))
            .chain([config.wireguard.listen.port()])
            .collect(),
    }
}

/// The public entrypoint that carries the canary router (`web` if there is one), and where to reach it from
/// this host: an entrypoint on every address is reached on loopback.
pub fn canary_entry_point(config: &AgentConfig) -> Option<(String, SocketAddr)> {
    let (name, address) = config.entrypoints.get_key_value("web").or_else(|| config.entrypoints.iter().next())?;
    let mut addr = ports::entrypoint_addr(address).ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some((name.clone(), addr))
}

/// Runs until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<(), String> {
    // Signals are taken synchronously by the main thread; every thread spawned from here inherits the mask.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;

    let traefik_binary = find_traefik(&config)?;
    for (name, address) in &config.entrypoints {
        ports::check_public(name, address)?;
    }
    let store = Store::open(&config.state_dir).map_err(|e| e.to_string())?;
    let admin_port = ports::free_loopback_port().map_err(|e| format!("no free loopback port: {e}"))?;
    let acme = store.acme_file();
    if config.acme.is_some() && !acme.exists() {
        store.replace(&acme, b"").map_err(|e| format!("cannot create {}: {e}", acme.display()))?;
    }
    let static_yaml = static_config::render(&config, admin_port, &store.dynamic_dir, &acme);
    store.replace(&store.static_config_file(), static_yaml.as_bytes()).map_err(|e| e.to_string())?;

    tunnel::driver::raise_open_files_limit(None); // the tunnel warns if it is still below its cap
    let tunnel = Arc::new(Tunnel::start(tunnel_config(&config)?).map_err(|e| e.to_string())?);
    log::info!("WireGuard on {} (UDP), tunnel address {}", tunnel.local_addr(), config.wireguard.address);
    let relays: Vec<SocketAddr> = config
        .wireguard
        .clients()
        .into_iter()
        .map(|(_, address)| SocketAddr::new(address, config.relay_port))
        .collect();
    let forwarders = Forwarders::new(Arc::clone(&tunnel), relays.clone());
    let l4 = crate::l4::Ports::new(Arc::clone(&tunnel), relays, config.l4.address);
    let l4_metrics = Arc::clone(&l4.metrics);
    let udp_metrics = Arc::clone(&l4.udp_metrics);
    let canary = canary_entry_point(&config);
    let policy = policy(&config);
    let mut applier = Applier::new(store.clone(), forwarders, l4, canary.as_ref().map(|(name, _)| name.clone()));
    // Before Traefik starts: it must never read a routes file left by an earlier run.
    let restored = applier.start(&policy);
    let supervisor = Supervisor::start(traefik_binary, store.static_config_file(), static_config::environment(&config));
    let agent = Arc::new(Agent {
        view: applier.view(),
        forwarder_metrics: applier.forwarder_metrics(),
        l4_metrics,
        udp_metrics,
        applier: Mutex::new(applier),
        fence: Mutex::new(Fence::default()),
        health: Mutex::new(Health::default()),
        supervisor: Mutex::new(supervisor),
        api: Api { port: admin_port },
        canary: canary.map(|(_, addr)| addr),
        policy,
        tunnel: Arc::clone(&tunnel),
        started: Instant::now(),
        limits: Limits { max_head: 16 * 1024, max_body: config.max_upload_bytes },
    });
    let listener = tunnel.listen(config.api_port).map_err(|e| e.to_string())?;
    log::info!(
        "control API on {}:{} inside the tunnel only",
        config.wireguard.address.split('/').next().unwrap_or_default(),
        config.api_port
    );
    spawn_api(Arc::clone(&agent), listener);
    crate::admin::spawn(&config.admin_socket, Arc::clone(&agent))?;
    // Ready without waiting for Traefik: the tunnel and the API take uploads, and the last good routes are in
    // Traefik's folder, so it serves them from its first moment (which takes seconds on a slow machine).
    log::info!(
        "ready: tunnel listening, control API up, {}{}",
        match &restored {
            Some(generation) => format!("last good generation {generation} handed to Traefik"),
            None => "no routes yet (waiting for the client's first upload)".into(),
        },
        since_init()
    );
    crate::watchdog::spawn(Arc::clone(&agent));

    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => log::info!("SIGHUP ignored (routes come from uploads)"),
            Ok(signal) => {
                log::info!("{signal}: stopping Traefik and exiting");
                break;
            }
            Err(e) => return Err(format!("sigwait failed: {e}")),
        }
    }
    agent.supervisor.lock().unwrap().stop();
    let _ = std::fs::remove_file(&config.admin_socket);
    Ok(())
}

/// On the appliance, how long after /init started the agent became ready (the init passes its start time).
pub(crate) fn since_init() -> String {
    let Some(started) = std::env::var(init::STARTED_ENV).ok().and_then(|v| v.parse::<u128>().ok()) else {
        return String::new();
    };
    format!(", {} ms after /init", init::monotonic_ns().saturating_sub(started) / 1_000_000)
}

fn spawn_api(agent: Arc<Agent>, listener: tunnel::Listener) {
    let slots = Slots::new(MAX_API_CONNECTIONS);
    std::thread::Builder::new()
        .name("api-accept".into())
        .spawn(move || {
            while let Ok(stream) = listener.accept() {
                let peer = stream.peer_addr();
                let Ok(mut io) = stream.into_io() else { continue };
                let Ok(handle) = io.try_clone() else { continue };
                let close = Box::new(move || {
                    let _ = handle.shutdown(std::net::Shutdown::Both);
                });
                let Some(slot) = slots.take(close) else {
                    log::warn!("control API: {MAX_API_CONNECTIONS} connections busy with requests; refusing {peer}");
                    continue; // dropping the stream resets it
                };
                let agent = Arc::clone(&agent);
                let _ = std::thread::Builder::new().name("api".into()).spawn(move || {
                    let limits = agent.limits;
                    if let Err(e) =
                        http::serve(&mut io, limits, &|request| agent.handle(request), &|idle| slot.idle(idle))
                    {
                        log::debug!("control API connection ended: {e}");
                    }
                });
            }
        })
        .expect("spawning a thread");
}

impl Agent {
    /// Routes one control API request.
    pub fn handle(&self, request: &Request) -> Response {
        let (path, term) = match protocol::fencing::split_target(&request.path) {
            Ok(target) => target,
            Err(e) => return Response::text(400, format!("{}: {e}\n", request.path)),
        };
        match (request.method.as_str(), path) {
            ("POST", "/upload") => {
                // Parsed before any lock: a slow or hostile body costs only this connection's thread.
                let prepared = apply::prepare(&request.body, &self.policy);
                let mut applier = self.applier.lock().unwrap();
                if let Err(newer) = self.fence.lock().unwrap().admit(term) {
                    let generation = protocol::generation_of(&request.body);
                    let message = format!(
                        "fenced: this edge follows a newer client leader (term {newer}; this upload's is {}); \
                         stop serving",
                        term.unwrap_or_default()
                    );
                    log::warn!("upload of generation {generation} refused: {message}");
                    let answer = UploadAnswer { fenced_by: Some(newer), ..UploadAnswer::refused(&generation, message) };
                    return Response::json(409, &answer);
                }
                let (status, answer) = applier.apply(&request.body, prepared, &self.api, CONFIRM_TIMEOUT);
                Response::json(status, &answer)
            }
            ("GET", "/healthz") => Response::text(200, "ok\n"),
            ("GET", "/status") => Response::json(200, &self.status()),
            ("GET", "/metrics") => {
                Response { status: 200, content_type: "text/plain; version=0.0.4", body: self.metrics().into_bytes() }
            }
            (_, "/upload" | "/healthz" | "/status" | "/metrics") => {
                Response::text(405, format!("{} is not allowed on {path}\n", request.method))
            }
            _ => Response::text(404, format!("no such endpoint {path}; try /status\n")),
        }
    }

    /// The live state as JSON (`GET /status`, `polaredge-agent status`).
    pub fn status(&self) -> api::Status {
        let view = self.view.lock().unwrap().clone();
        let health = self.health.lock().unwrap().clone();
        let traefik = self.supervisor.lock().unwrap().state();
        let tunnel = self.tunnel.status().ok();
        api::Status {
            uptime_s: self.started.elapsed().as_secs(),
            live: view.live.as_ref().map(|l| api::Live {
                generation: l.generation.clone(),
                confirmed: l.confirmed,
                applied_at_unix: l.applied_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                apply_ms: l.apply_ms,
                routers: l.routers,
                errors: l.errors.clone(),
                withheld: l.withheld.clone(),
            }),
            routes_file: api::RoutesFile { generation: view.written.clone(), repairs: view.counters.repairs },
            traefik: api::Traefik {
                pid: traefik.pid,
                uptime_s: traefik.started.filter(|_| traefik.pid.is_some()).map(|s| s.elapsed().as_secs()),
                restarts: traefik.restarts,
                last_exit: traefik.last_exit,
                healthy: health.healthy,
                health: health.state,
                health_restarts: health.restarts,
                file_rewrites: health.rewrites,
            },
            tunnel: tunnel.map(|t| api::Tunnel {
                peer_endpoint: t.peer.endpoint.map(|e| e.to_string()),
                last_handshake_s: t.peer.last_handshake.map(|d| d.as_secs()),
                rx_bytes: t.peer.rx_bytes,
                tx_bytes: t.peer.tx_bytes,
                connections: t.connections,
                dropped_invalid: t.stats.dropped_invalid,
                dropped_replay: t.stats.dropped_replay,
                replicas: if t.peers.len() < 2 {
                    Vec::new()
                } else {
                    t.peers
                        .iter()
                        .map(|p| api::ReplicaTunnel {
                            endpoint: p.endpoint.map(|e| e.to_string()),
                            last_handshake_s: p.last_handshake.map(|d| d.as_secs()),
                            last_received_s: p.last_received.map(|d| d.as_secs()),
                        })
                        .collect()
                },
            }),
            forwarders: view
                .forwarders
                .iter()
                .map(|(pod, local)| api::Forwarder { pod: pod.to_string(), listen: local.to_string() })
                .collect(),
            l4: view
                .l4
                .iter()
                .map(|((transport, port), plan)| api::L4Port {
                    transport: *transport,
                    port: *port,
                    service: plan.service.clone(),
                    servers: plan.servers.iter().map(ToString::to_string).collect(),
                    proxy_protocol: plan.proxy_protocol,
                })
                .collect(),
            term: self.fence.lock().unwrap().highest(),
        }
    }

    /// Prometheus text (`GET /metrics`).
    pub fn metrics(&self) -> String {
        let view = self.view.lock().unwrap().clone();
        let mut text = Exposition::new();
        upload_metrics(&mut text, &view);
        self.traefik_metrics(&mut text);
        if let Ok(status) = self.tunnel.status() {
            tunnel_metrics(&mut text, &status);
        }
        self.l4_metrics(&mut text, &view);
        let m = &self.forwarder_metrics;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        text.family("polaredge_forwarders", Gauge, "Loopback forwarders (one per pod endpoint).")
            .value(view.forwarders.len());
        text.family("polaredge_forwarder_connections_total", Counter, "Connections from Traefik to forwarders.")
            .value(n(&m.opened));
        text.family(
            "polaredge_forwarder_failed_total",
            Counter,
            "Forwarded connections that ended in a reset, a timeout or a refusal.",
        )
        .value(n(&m.failed) + n(&m.refused));
        text.family("polaredge_forwarder_bytes_total", Counter, "Bytes carried by forwarders.")
            .sample(&[("direction", "to_cluster")], n(&m.bytes_to_tunnel))
            .sample(&[("direction", "from_cluster")], n(&m.bytes_from_tunnel));
        text.into_text()
    }

    fn traefik_metrics(&self, text: &mut Exposition) {
        let health = self.health.lock().unwrap().clone();
        let traefik = self.supervisor.lock().unwrap().state();
        text.family("polaredge_agent_traefik_up", Gauge, "Whether Traefik is running.")
            .value(u8::from(traefik.pid.is_some()));
        text.family("polaredge_agent_traefik_restarts_total", Counter, "Traefik restarts after crashes.")
            .value(traefik.restarts);
        text.family(
            "polaredge_agent_traefik_healthy",
            Gauge,
            "Whether Traefik answered the last ping and canary with the generation of the routes file.",
        )
        .value(u8::from(health.healthy));
        text.family(
            "polaredge_agent_traefik_health_restarts_total",
            Counter,
            "Traefik processes killed by the watchdog (not answering, or serving the wrong generation).",
        )
        .value(health.restarts);
    }

    fn l4_metrics(&self, text: &mut Exposition, view: &View) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut ports = text.family(
            "polaredge_l4_ports",
            Gauge,
            "Public TCP and UDP ports served for Services of type LoadBalancer.",
        );
        for transport in [Transport::Tcp, Transport::Udp] {
            let count = view.l4.iter().filter(|((t, _), _)| *t == transport).count();
            ports.sample(&[("transport", &transport.to_string())], count);
        }
        let l4 = &self.l4_metrics;
        text.family(
            "polaredge_l4_connections_total",
            Counter,
            "Connections to those ports, by outcome (refused: no pod, or no tunnel).",
        )
        .sample(&[("outcome", "opened")], n(&l4.opened))
        .sample(&[("outcome", "refused")], n(&l4.refused))
        .sample(&[("outcome", "failed")], n(&l4.failed))
        .sample(&[("outcome", "completed")], n(&l4.completed));
        let u = &self.udp_metrics;
        text.family(
            "polaredge_l4_udp_flows_total",
            Counter,
            "UDP flows (public client addresses) on those ports, by outcome (refused: no pod; over_cap: \
             udp.max_flows reached).",
        )
        .sample(&[("outcome", "opened")], n(&u.flows_opened))
        .sample(&[("outcome", "refused")], n(&u.flows_refused))
        .sample(&[("outcome", "over_cap")], n(&u.flows_over_cap))
        .sample(&[("outcome", "expired")], n(&u.flows_expired));
        text.family(
            "polaredge_l4_udp_datagrams_total",
            Counter,
            "UDP datagrams on those ports: in from public clients, out to them, dropped (too large for the tunnel, \
             queue full, flow ended).",
        )
        .sample(&[("direction", "in")], n(&u.datagrams_to_tunnel))
        .sample(&[("direction", "out")], n(&u.datagrams_from_tunnel))
        .sample(&[("direction", "dropped")], n(&u.dropped) + n(&u.too_large));
    }
}

/// Uploads by outcome, file repairs, and the live generation.
fn upload_metrics(text: &mut Exposition, view: &View) {
    let c = &view.counters;
    text.family("polaredge_agent_uploads_total", Counter, "Uploads by outcome.")
        .sample(&[("result", "applied")], c.applied)
        .sample(&[("result", "unchanged")], c.unchanged)
        .sample(&[("result", "rejected")], c.rejected)
        .sample(&[("result", "rolled_back")], c.rolled_back);
    text.family(
        "polaredge_agent_routes_file_repairs_total",
        Counter,
        "Routes files found deleted or changed on disk (or not read by Traefik) and written again.",
    )
    .value(c.repairs);
    if let Some(live) = &view.live {
        text.family(
            "polaredge_agent_live_generation",
            Gauge,
            "The generation last given to Traefik (1 = confirmed live).",
        )
        .sample(&[("generation", &live.generation)], u8::from(live.confirmed));
        text.family("polaredge_agent_apply_seconds", Gauge, "Upload received to live, last upload.")
            .value(format_args!("{:.3}", live.apply_ms as f64 / 1000.0));
        text.family("polaredge_agent_traefik_router_errors", Gauge, "Errors Traefik reports for the live routes.")
            .value(live.errors.len());
    }
}

/// Bytes, handshake age, dropped datagrams and connections of the tunnel.
fn tunnel_metrics(text: &mut Exposition, t: &tunnel::driver::TunnelStatus) {
    text.family("polaredge_tunnel_bytes_total", Counter, "Payload bytes through the tunnel.")
        .sample(&[("direction", "rx")], t.peer.rx_bytes)
        .sample(&[("direction", "tx")], t.peer.tx_bytes);
    if let Some(age) = t.peer.last_handshake {
        text.family("polaredge_tunnel_handshake_age_seconds", Gauge, "Time since the last WireGuard handshake.")
            .value(age.as_secs());
    }
    text.family("polaredge_tunnel_dropped_datagrams_total", Counter, "Datagrams dropped, by reason.")
        .sample(&[("reason", "invalid")], t.stats.dropped_invalid)
        .sample(&[("reason", "replay")], t.stats.dropped_replay)
        .sample(&[("reason", "source")], t.stats.dropped_source);
    text.family("polaredge_tunnel_connections", Gauge, "Open TCP connections inside the tunnel.").value(t.connections);
    text.family(
        "polaredge_tunnel_refused_over_cap_total",
        Counter,
        "Connection requests refused at the connection cap (streams.max_connections).",
    )
    .value(t.stats.refused_over_cap);
}
