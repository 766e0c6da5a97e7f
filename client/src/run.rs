//! `polaredge-client run`: cluster state in, snapshots out to every agent, relays up.
//!
//! One thread watches the source and renders; one thread per agent sends (policy in [`crate::sender`]);
//! relays run inside each agent's tunnel. Changes are coalesced: a render waits [`DEBOUNCE`] after the first
//! change for more to arrive, but never longer than [`MAX_DELAY`].

use crate::config::{self, ClientConfig};
use crate::kube_api::KubeApi;
use crate::leader::{Elected, Ended, Term};
use crate::ops::Metrics;
use crate::relay::{self, AllowList, RelayMetrics, UdpRelayMetrics};
use crate::render::{self, Cluster, Settings};
use crate::sender::{self, Action, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tunnel::{Cidr, CoreConfig, Tunnel, TunnelConfig};

/// Quiet time after a change before rendering.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// Longest a change waits for quiet.
pub const MAX_DELAY: Duration = Duration::from_millis(250);
const SOURCE_POLL: Duration = Duration::from_millis(200);

/// Where cluster state comes from.
pub enum Source {
    /// A folder of manifests, re-read when a file changes (dry runs, the local demo, tests).
    Manifests(PathBuf),
    /// The Kubernetes API (in-cluster service account, or KUBECONFIG).
    Kubernetes,
}

/// What the send loops and the leader election tell the watch loop (which owns the cluster writes and the
/// process's life): the `l4` ports each agent last reported withheld (turned into Warning Events on their
/// Services), and a reason to stop serving (leadership lost). Either wakes the watch loop.
#[derive(Default)]
struct Feedback {
    withheld: Mutex<BTreeMap<String, Vec<protocol::api::Withheld>>>,
    /// Agents whose last upload or check got no answer.
    down: Mutex<std::collections::BTreeSet<String>>,
    stop: Mutex<Option<String>>,
    /// SIGTERM: stop, and drain the relays first.
    terminating: std::sync::atomic::AtomicBool,
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

impl Feedback {
    fn wake(&self) {
        if let Some(wake) = self.wake.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = wake.send(());
        }
    }

    /// Records agent `name`'s latest answer; wakes the watch loop if what it withholds changed.
    fn report(&self, name: &str, withheld: &[protocol::api::Withheld]) {
        let mut by_agent = self.withheld.lock().unwrap_or_else(|p| p.into_inner());
        if by_agent.get(name).map(Vec::as_slice).unwrap_or_default() == withheld {
            return;
        }
        by_agent.insert(name.to_string(), withheld.to_vec());
        drop(by_agent);
        self.wake();
    }

    fn notices(&self) -> Vec<render::Notice> {
        crate::status::withheld_notices(&self.withheld.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records whether agent `name` answered its last upload or check; wakes the watch loop (which rewrites the
    /// status addresses) when that changes.
    fn answered(&self, name: &str, answered: bool) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if answered { down.remove(name) } else { down.insert(name.to_string()) };
        drop(down);
        if changed {
            log::warn!(
                "agent {name}: {}",
                if answered { "answers again" } else { "does not answer: left out of the status" }
            );
            self.wake();
        }
    }

    fn down(&self) -> std::collections::BTreeSet<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the process to stop serving (the first reason wins).
    fn stop(&self, reason: String) {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
        self.wake();
    }

    fn stopped(&self) -> Option<String> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGTERM: stop serving, draining the relays first.
    fn terminate(&self) {
        self.terminating.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop("SIGTERM".into());
    }

    fn terminating(&self) -> bool {
        self.terminating.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Calls `changed` with the stores' state after each burst of watch events (or a change in what the agents
/// withhold, or which answer), then, while `leading`, writes Ingress and Service status (the addresses of the
/// `edges`, name and address, that answer) and Events for new notices.
fn watch_kubernetes(
    api: &KubeApi,
    mut changed: impl FnMut(Cluster) -> render::Rendered,
    edges: Vec<(String, String)>,
    feedback: Arc<Feedback>,
    leading: &AtomicBool,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    *feedback.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
    let (stores, writer) = crate::watch::start(api, tx);
    let mut reported = crate::status::Reported::default();
    while rx.recv().is_ok() {
        if let Some(reason) = feedback.stopped() {
            return Err(reason);
        }
        let first = Instant::now();
        let mut last = first;
        // Coalesce: wait for quiet, but not longer than MAX_DELAY.
        while last.elapsed() < DEBOUNCE && first.elapsed() < MAX_DELAY {
            match rx.recv_timeout(DEBOUNCE.saturating_sub(last.elapsed())) {
                Ok(()) => last = Instant::now(),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err("the Kubernetes watch stopped".into()),
            }
        }
        if !stores.synced() {
            continue; // woken by the agents or the election before every store listed: nothing whole to render
        }
        let cluster = stores.cluster();
        let rendered = changed(cluster.clone());
        if !leading.load(SeqCst) {
            continue; // a hot standby renders for its relays' allow-lists; only the leader writes to the cluster
        }
        let addresses = crate::status::serving_addresses(&edges, &feedback.down());
        writer.write_status(crate::status::status_changes(
            &cluster,
            &rendered.served,
            &rendered.served_services,
            &addresses,
        ));
        let now = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map_or_else(|_| String::new(), |t| t.to_string());
        writer.patch_gateway_status(crate::status::gateway::patches(
            &cluster,
            &rendered.gateway,
            &addresses,
            crate::render::gateway::CONTROLLER,
            &now,
        ));
        let mut notices = rendered.notices;
        notices.extend(feedback.notices());
        for notice in reported.fresh(&notices) {
            writer.post_event(notice, cluster.uid_of(notice.kind, &notice.namespace, &notice.name));
        }
    }
    Err("the Kubernetes watch stopped".into())
}

fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.modified().ok()?, m.len()))
        })
        .collect();
    files.sort();
    files
}

/// Calls `changed` with the new cluster state each time the source changes (and once at start), until the
/// feedback says stop.
fn watch_manifests(
    dir: PathBuf,
    mut changed: impl FnMut(Cluster) -> render::Rendered,
    feedback: &Feedback,
) -> Result<(), String> {
    let mut seen = None;
    let mut pending_since: Option<Instant> = None;
    let mut last_change = Instant::now();
    loop {
        if let Some(reason) = feedback.stopped() {
            return Err(reason);
        }
        let now_seen = fingerprint(&dir);
        if seen.as_ref() != Some(&now_seen) {
            seen = Some(now_seen);
            last_change = Instant::now();
            pending_since.get_or_insert(last_change);
        }
        if let Some(since) = pending_since {
            if last_change.elapsed() >= DEBOUNCE || since.elapsed() >= MAX_DELAY {
                match crate::manifests::load_dir(&dir) {
                    Ok(cluster) => {
                        changed(cluster);
                    }
                    Err(e) => log::error!("manifests: {e}; keeping the previous snapshot"),
                }
                pending_since = None;
                continue;
            }
            std::thread::sleep(DEBOUNCE / 3);
        } else {
            std::thread::sleep(SOURCE_POLL);
        }
    }
}

/// Whether this process runs a leader election (a cluster, and `POLAREDGE_LEADER_ELECTION` not `false`).
fn elects(source: &Source) -> bool {
    matches!(source, Source::Kubernetes) && std::env::var("POLAREDGE_LEADER_ELECTION").as_deref() != Ok("false")
}

/// Waits until this replica leads (Lease `polaredge-client` in `POD_NAMESPACE`, identity `POD_NAME`) and sets
/// its term in `term`, or until SIGTERM comes first. Afterwards `on_end` says how the leadership ended: lost
/// (another replica holds the Lease) or SIGTERM (the Lease was released first).
fn lead(api: &KubeApi, term: Arc<Term>, on_end: impl FnOnce(Ended) + Send + 'static) -> Result<Elected, String> {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "polaredge".into());
    let me = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let seconds = std::env::var("POLAREDGE_LEASE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15u64);
    let (done_tx, done_rx) = mpsc::channel();
    let client = api.client();
    api.handle().spawn(async move {
        let lease = crate::leader::LeaseName { namespace: &namespace, name: "polaredge-client" };
        let result = crate::leader::elect(client, lease, me, Duration::from_secs(seconds), term, on_end).await;
        let _ = done_tx.send(result);
    });
    done_rx.recv().map_err(|_| "leader election stopped".to_string())?
}

/// With one key shared by all replicas: what ends a leadership ends the process (it comes back as a standby,
/// which holds no tunnels), after draining on SIGTERM.
fn on_end_exit(feedback: Arc<Feedback>) -> impl FnOnce(Ended) + Send + 'static {
    move |ended| match ended {
        Ended::Lost(reason) => feedback.stop(format!("leadership lost ({reason})")),
        Ended::Terminated => feedback.terminate(),
    }
}

/// A hot standby (a key of its own) holds its tunnels and relays from the start; the election runs beside it,
/// and `leading` is on while it leads, which lets the send loops upload and the watch loop write status. A
/// leadership lost (fenced, or the Lease taken over) turns it back into a standby that still relays, and it
/// stands for election again; SIGTERM drains and exits.
fn lead_in_background(
    api: &Arc<KubeApi>,
    term: Arc<Term>,
    feedback: Arc<Feedback>,
    leading: Arc<AtomicBool>,
) -> Result<(), String> {
    let api = Arc::clone(api);
    let elections = move || loop {
        let (lost_tx, lost_rx) = mpsc::channel();
        let on_terminate = Arc::clone(&feedback);
        let on_end = move |ended| match ended {
            Ended::Lost(reason) => {
                let _ = lost_tx.send(reason);
            }
            Ended::Terminated => on_terminate.terminate(),
        };
        match lead(&api, Arc::clone(&term), on_end) {
            Ok(Elected::Leading) => {
                leading.store(true, SeqCst);
                feedback.wake();
                // Until the leadership ends: lost (back to standing by) or SIGTERM (the sender is dropped).
                let Ok(reason) = lost_rx.recv() else { return };
                leading.store(false, SeqCst);
                log::warn!("leadership lost ({reason}); standing by again, still relaying");
            }
            Ok(Elected::Terminated) => return feedback.terminate(),
            Err(e) => return feedback.stop(e),
        }
    };
    std::thread::Builder::new()
        .name("election".into())
        .spawn(elections)
        .map(drop)
        .map_err(|e| format!("cannot start the leader election: {e}"))
}

/// The relays' allow-lists: the endpoints of the latest snapshot plus those of the one before, since
/// connections Traefik opens while it still runs the previous generation go to the previous endpoints (a change
/// must not refuse requests in flight).
#[derive(Default)]
struct AllowLists {
    tcp: AllowList,
    udp: AllowList,
    previous_tcp: BTreeSet<std::net::SocketAddr>,
    previous_udp: BTreeSet<std::net::SocketAddr>,
}

impl AllowLists {
    /// Allows what `rendered` routes to, and what the previous snapshot did.
    fn update(&mut self, rendered: &render::Rendered) {
        for (list, previous, current) in [
            (&self.tcp, &mut self.previous_tcp, &rendered.endpoints),
            (&self.udp, &mut self.previous_udp, &rendered.udp_endpoints),
        ] {
            let mut next = current.clone();
            next.extend(previous.iter().copied());
            *list.write().unwrap_or_else(|p| p.into_inner()) = next;
            previous.clone_from(current);
        }
    }
}

/// What the process shares with every agent's tunnel and send loop.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    relay_metrics: Arc<RelayMetrics>,
    udp_relay_metrics: Arc<UdpRelayMetrics>,
    feedback: Arc<Feedback>,
    term: Arc<Term>,
    /// This replica leads (or runs without an election): its send loops upload, its watch loop writes status.
    leading: Arc<AtomicBool>,
}

/// One agent's tunnel with its relays (alive as long as this is) and the channel its send loop reads snapshots
/// from.
struct AgentLink {
    name: String,
    snapshots: mpsc::Sender<Arc<String>>,
    tunnel: Arc<Tunnel>,
    /// Dropped to drain: new streams are refused (the agent moves them to another replica), streams under way
    /// go on.
    relays: Option<(tunnel::RelayPort, tunnel::UdpRelayPort)>,
}

/// Starts the tunnel to `agent` and its send loop (the relays open with the first snapshot).
fn connect_agent(
    config: &ClientConfig,
    agent: &config::AgentPeer,
    me: &config::Identity,
    shared: &Shared,
) -> Result<AgentLink, String> {
    let address: Cidr =
        me.address.parse().map_err(|_| format!("address {:?} is not an address with prefix", me.address))?;
    let peer: tunnel::PublicKey =
        agent.public_key.parse().map_err(|e| format!("agent {}: public_key: {e}", agent.name))?;
    let mut core = CoreConfig {
        endpoint: Some(agent.endpoint),
        persistent_keepalive: Some(config.keepalive),
        peer_allowed_ips: vec![Cidr::host(agent.api.ip())],
        ..CoreConfig::new(me.key.clone(), peer, vec![address])
    };
    core.tcp.max_connections = config.max_connections;
    core.tcp.connect_timeout = Duration::from_millis(config.dial_timeout_ms);
    let listen = std::net::SocketAddr::from(([0, 0, 0, 0], config.listen_port));
    let tunnel =
        Arc::new(Tunnel::start(TunnelConfig { core, listen }).map_err(|e| format!("agent {}: {e}", agent.name))?);
    let (tx, rx) = mpsc::channel::<Arc<String>>();
    let (name, api) = (agent.name.clone(), agent.api);
    let (sending, shared) = (Arc::clone(&tunnel), shared.clone());
    std::thread::Builder::new()
        .name(format!("send-{name}"))
        .spawn(move || send_loop(&name, &sending, api, rx, &shared))
        .map_err(|e| e.to_string())?;
    log::info!("agent {}: tunnel to {} (WireGuard), API {}", agent.name, agent.endpoint, agent.api);
    Ok(AgentLink { name: agent.name.clone(), snapshots: tx, tunnel, relays: None })
}

impl AgentLink {
    /// Opens the relays once the allow-lists hold a whole snapshot (the first render comes after every store
    /// listed once). Until then a stream the agent sends here is refused before it opens, and the agent moves
    /// it to another replica: a replica that just started never refuses a stream it should carry.
    fn open_relays(&mut self, port: u16, allow: &AllowLists, shared: &Shared) -> Result<(), String> {
        if self.relays.is_some() {
            return Ok(());
        }
        let tcp = relay::serve(&self.tunnel, port, Arc::clone(&allow.tcp), Arc::clone(&shared.relay_metrics))
            .map_err(|e| format!("agent {}: relay: {e}", self.name))?;
        let udp = relay::serve_udp(&self.tunnel, port, Arc::clone(&allow.udp), Arc::clone(&shared.udp_relay_metrics))
            .map_err(|e| format!("agent {}: UDP relay: {e}", self.name))?;
        self.relays = Some((tcp, udp));
        Ok(())
    }
}

/// Longest a terminating replica waits for the streams it relays to end (within Kubernetes' default 30 s
/// grace period).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// A stream quiet this long while draining is between requests (an idle HTTP keep-alive connection), and is
/// closed.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// SIGTERM: refuses new streams (with several replicas the agents move them to another one at once), closes
/// the streams that are quiet, and waits for the rest to end or go quiet, up to [`DRAIN_LIMIT`].
fn drain(links: &mut [AgentLink]) {
    for link in links.iter_mut() {
        link.relays = None;
    }
    let started = Instant::now();
    let close_quiet =
        |links: &[AgentLink]| -> usize { links.iter().filter_map(|l| l.tunnel.close_quiet(DRAIN_QUIET).ok()).sum() };
    let mut left = close_quiet(links);
    log::info!("SIGTERM: relays closed to new streams; {left} streams carrying data");
    while left > 0 && started.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(Duration::from_millis(100));
        left = close_quiet(links);
    }
    log::info!("SIGTERM: drained in {:?} ({left} streams left); exiting", started.elapsed());
}

/// Records a new snapshot in the metrics and the log.
fn count_snapshot(metrics: &Metrics, rendered: &render::Rendered, started: Instant) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics.snapshots.fetch_add(1, Relaxed);
    metrics.render_micros.store(started.elapsed().as_micros() as u64, Relaxed);
    metrics.routers.store(rendered.routers as u64, Relaxed);
    log::info!(
        "snapshot {}: {} routers, {} endpoints, {} ingresses (rendered in {:?})",
        sender::generation_of(&rendered.document),
        rendered.routers,
        rendered.endpoints.len(),
        rendered.served.len(),
        started.elapsed()
    );
}

/// Runs until the process is stopped, or until it must stop serving (leadership lost, or SIGTERM: then the
/// relays drain first and it returns `Ok`).
pub fn run(config: ClientConfig, source: Source) -> Result<(), String> {
    let replica_keys = std::env::var("POLAREDGE_REPLICA_KEYS").ok();
    let pod_name = std::env::var("POD_NAME").ok();
    let me = config::identity(&config, replica_keys.as_deref(), pod_name.as_deref())?;
    let relay_metrics = Arc::new(RelayMetrics::default());
    let udp_relay_metrics = Arc::new(UdpRelayMetrics::default());
    let metrics = Arc::new(Metrics {
        relay: Arc::clone(&relay_metrics),
        udp_relay: Arc::clone(&udp_relay_metrics),
        ..Default::default()
    });
    let shared = Shared {
        metrics,
        relay_metrics,
        udp_relay_metrics,
        feedback: Arc::default(),
        term: Arc::default(),
        leading: Arc::new(AtomicBool::new(!elects(&source))),
    };
    // Probes answer from the start, also on a replica that waits to lead.
    let ops = crate::ops::spawn(config.ops_listen, Arc::clone(&shared.metrics))?;
    log::info!("/healthz, /readyz and /metrics on {ops}");
    tunnel::driver::raise_open_files_limit(None); // each tunnel warns if it is still below its cap
    let api = match source {
        Source::Kubernetes => Some(Arc::new(KubeApi::connect()?)),
        Source::Manifests(_) => None,
    };
    if let Some(api) = api.as_ref().filter(|_| elects(&source) && !me.own_key) {
        // One key for all replicas: only the leader may hold tunnels (a second session of the key would take
        // the agents' answers away from the first).
        if lead(api, Arc::clone(&shared.term), on_end_exit(Arc::clone(&shared.feedback)))? == Elected::Terminated {
            return Ok(());
        }
        shared.leading.store(true, SeqCst);
    }
    let mut allow = AllowLists::default();
    let mut links = Vec::new();
    for agent in &config.agents {
        links.push(connect_agent(&config, agent, &me, &shared)?);
    }
    if let Some(api) = api.as_ref().filter(|_| elects(&source) && me.own_key) {
        log::info!("replica {}: tunnels and relays up; uploads wait for leadership", me.address);
        lead_in_background(api, Arc::clone(&shared.term), Arc::clone(&shared.feedback), Arc::clone(&shared.leading))?;
    }
    let settings = Settings {
        cert_resolver: (!config.cert_resolver.is_empty()).then(|| config.cert_resolver.clone()),
        ..Settings::default()
    };
    let mut renderer = render::Renderer::new(settings);
    let mut last_yaml = String::new();
    let on_change = |cluster: Cluster| -> render::Rendered {
        let started = Instant::now();
        let rendered = renderer.render(&cluster);
        for notice in &rendered.notices {
            log::warn!("{}/{}: {}: {}", notice.namespace, notice.name, notice.reason, notice.message);
        }
        if rendered.document == last_yaml {
            return rendered;
        }
        allow.update(&rendered);
        count_snapshot(&shared.metrics, &rendered, started);
        last_yaml.clone_from(&rendered.document);
        let yaml = Arc::new(rendered.document.clone());
        for link in &mut links {
            if let Err(e) = link.open_relays(config.relay_port, &allow, &shared) {
                log::error!("{e}; streams go to other replicas");
            }
            let _ = link.snapshots.send(Arc::clone(&yaml));
        }
        if me.own_key && links.iter().all(|l| l.relays.is_some()) {
            shared.metrics.relaying.store(true, SeqCst);
        }
        rendered
    };
    let result = match source {
        Source::Manifests(dir) => watch_manifests(dir, on_change, &shared.feedback),
        Source::Kubernetes => {
            let edges: Vec<(String, String)> = config
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.public_address.clone().unwrap_or_else(|| a.endpoint.ip().to_string())))
                .collect();
            let api = api.as_ref().expect("connected above for a cluster");
            watch_kubernetes(api, on_change, edges, Arc::clone(&shared.feedback), &shared.leading)
        }
    };
    if shared.feedback.terminating() {
        drain(&mut links);
        return Ok(());
    }
    drop(links);
    result
}

/// How often the sender looks at the tunnel for a new WireGuard session (an agent that came back).
const SESSION_CHECK: Duration = Duration::from_secs(1);

fn send_loop(
    name: &str,
    tunnel: &Tunnel,
    api: std::net::SocketAddr,
    snapshots: Receiver<Arc<String>>,
    shared: &Shared,
) {
    let Shared { metrics, leading, .. } = shared;
    let mut policy = Sender::new(Instant::now());
    let mut handshake_age: Option<Duration> = None;
    loop {
        if !leading.load(SeqCst) {
            // A hot standby keeps the latest snapshot for the moment it leads, and sends nothing.
            match snapshots.recv_timeout(SESSION_CHECK) {
                Ok(yaml) => policy.snapshot(Instant::now(), snapshots.try_iter().last().unwrap_or(yaml)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        // A handshake younger than the last one seen is a new session: the agent may have restarted with other
        // routes, so compare at once rather than at the next periodic check.
        if let Ok(status) = tunnel.status() {
            let age = status.peer.last_handshake;
            if let Some(age) = age {
                if handshake_age.is_none_or(|previous| age < previous) {
                    policy.reconnected(Instant::now());
                }
            }
            handshake_age = age;
        }
        {
            let mut agents = metrics.agents.lock().unwrap();
            agents.entry(name.to_string()).or_default().in_sync = policy.in_sync();
        }
        let now = Instant::now();
        match policy.poll(now) {
            Action::Upload(yaml) => {
                let live = upload(name, tunnel, api, &yaml, shared);
                policy.uploaded(Instant::now(), live);
            }
            Action::Check => {
                let live = check(name, tunnel, api, shared);
                policy.checked(Instant::now(), live);
            }
            Action::Wait(until) => {
                match snapshots.recv_timeout(until.saturating_duration_since(now).min(SESSION_CHECK)) {
                    Ok(yaml) => {
                        // Only the latest of a burst matters.
                        let latest = snapshots.try_iter().last().unwrap_or(yaml);
                        policy.snapshot(Instant::now(), latest);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}

/// Sends one snapshot to agent `name` and records the answer (log, metrics, feedback to the cluster, fencing).
/// Returns the snapshot's generation if it is live.
fn upload(name: &str, tunnel: &Tunnel, api: std::net::SocketAddr, yaml: &str, shared: &Shared) -> Option<String> {
    let Shared { metrics, feedback, term, .. } = shared;
    let generation = sender::generation_of(yaml);
    let answer = match sender::upload(tunnel, api, yaml, term.current()) {
        Ok(answer) => answer,
        Err(e) => {
            log::warn!("agent {name}: upload failed: {e}");
            feedback.answered(name, false);
            metrics.agents.lock().unwrap().entry(name.to_string()).or_default().failed += 1;
            return None;
        }
    };
    let outcome = answer.outcome(&generation);
    log_outcome(name, &generation, &answer, &outcome, term.current());
    for reason in &answer.body.withheld {
        log::warn!("agent {name}: generation {generation} is served without {reason}");
    }
    feedback.report(name, &answer.body.withheld);
    feedback.answered(name, true);
    if let sender::Outcome::Fenced(by) = &outcome {
        term.fenced(*by);
    }
    let live = (outcome == sender::Outcome::Live).then_some(generation);
    let mut agents = metrics.agents.lock().unwrap();
    let state = agents.entry(name.to_string()).or_default();
    if live.is_some() {
        state.applied += 1;
        state.last_apply_ms = answer.body.apply_ms.unwrap_or(0);
    } else {
        state.failed += 1;
    }
    live
}

/// Says what the agent made of an upload.
fn log_outcome(name: &str, generation: &str, answer: &sender::Answer, outcome: &sender::Outcome, term: Option<u64>) {
    match outcome {
        sender::Outcome::Live => log::info!(
            "agent {name}: generation {generation} live in {} ms{}",
            answer.body.apply_ms.unwrap_or(0),
            if answer.body.errors.is_empty() {
                String::new()
            } else {
                format!("; Traefik reports {:?}", answer.body.errors)
            }
        ),
        sender::Outcome::Fenced(by) => log::warn!(
            "agent {name}: generation {generation} refused: the agent obeys client leader term {by}, newer than \
             ours ({term:?}); asking the Lease who leads"
        ),
        sender::Outcome::OtherGeneration(other) => {
            log::warn!("agent {name}: the answer names generation {other} live, not ours ({generation}); sending again")
        }
        sender::Outcome::NotLive => log::warn!(
            "agent {name}: generation {generation} not live: {} {}{}",
            answer.status,
            answer.body.error.as_deref().unwrap_or("no reason given"),
            if answer.body.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", answer.body.problems.join("; "))
            }
        ),
    }
}

/// Asks agent `name` which generation is live (and which leader term it obeys: a newer one fences us).
/// `Err` when the agent did not answer.
fn check(name: &str, tunnel: &Tunnel, api: std::net::SocketAddr, shared: &Shared) -> Result<Option<String>, ()> {
    let Shared { feedback, term, .. } = shared;
    let live = sender::live_generation(tunnel, api);
    feedback.answered(name, live.is_ok());
    match live {
        Err(e) => {
            log::warn!("agent {name}: status check failed: {e}");
            // The agent may answer only a newer session of our key (another replica's): a new handshake now,
            // rather than WireGuard's own after 15 s of silence.
            let _ = tunnel.rehandshake();
            Err(())
        }
        Ok((generation, agent_term)) => {
            if let Some(by) = sender::fenced(term.current(), agent_term) {
                log::warn!("agent {name} obeys client leader term {by}, newer than ours");
                term.fenced(by);
            }
            Ok(generation)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(tcp: &[&str], udp: &[&str]) -> render::Rendered {
        render::Rendered {
            routers: 0,
            document: String::new(),
            endpoints: tcp.iter().map(|a| a.parse().unwrap()).collect(),
            udp_endpoints: udp.iter().map(|a| a.parse().unwrap()).collect(),
            served: Default::default(),
            served_services: Default::default(),
            notices: Vec::new(),
            gateway: Default::default(),
        }
    }

    #[test]
    fn the_relays_allow_this_snapshot_and_the_one_before_each_for_its_own_transport() {
        let mut allow = AllowLists::default();
        let listed = |list: &AllowList| list.read().unwrap().iter().map(ToString::to_string).collect::<Vec<_>>();
        allow.update(&rendered(&["10.0.0.1:80"], &["10.0.0.9:53"]));
        assert_eq!(listed(&allow.tcp), ["10.0.0.1:80"]);
        assert_eq!(listed(&allow.udp), ["10.0.0.9:53"], "a UDP endpoint is not a TCP one");
        allow.update(&rendered(&["10.0.0.2:80"], &[]));
        assert_eq!(listed(&allow.tcp), ["10.0.0.1:80", "10.0.0.2:80"], "the previous generation's in-flight requests");
        assert_eq!(listed(&allow.udp), ["10.0.0.9:53"]);
        allow.update(&rendered(&["10.0.0.2:80"], &[]));
        assert_eq!(listed(&allow.tcp), ["10.0.0.2:80"]);
        assert!(listed(&allow.udp).is_empty());
    }
}
