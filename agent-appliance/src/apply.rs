//! The apply pipeline: an upload becomes the live Traefik config, or is refused with reasons while the last
//! good config keeps serving. The edge serves exactly what Traefik confirmed.
//!
//! [`prepare`] (parse + validate, pure, run before any lock) -> forwarders for its pods -> rewrite backends, add
//! the generation marker and the canary -> atomic write -> wait (bounded) until Traefik shows the marker ->
//! commit as last good, or roll the file back to the last good one. [`Applier`] is owned by the upload path
//! alone (one upload at a time, the wait included); what /status and /metrics read is a [`View`] behind its own
//! short lock, so they answer at once while an upload waits for Traefik.
//!
//! The routes file is also repaired: [`Applier::verify_file`] rewrites it when it was deleted or changed on
//! disk (the watchdog calls it every few seconds, and every upload does, unchanged ones included).

use crate::forwarders::Forwarders;
use crate::l4::{PortKey, PortPlan, Ports};
use crate::store::Store;
use protocol::api::{Transport, UploadAnswer, Withheld};
use routes::model::DynamicConfig;
use routes::{Marker, Policy, Problem};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long an upload waits for Traefik to show the new generation.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The document written when nothing valid is known (first start, or a last good upload that no longer
/// validates): no routes, so Traefik never reads a file whose forwarders are not the agent's own.
pub const NOTHING: &[u8] = b"{\"http\": {}}";

/// What the agent asks of Traefik while applying; the real one talks to its API ([`crate::traefik::api`]).
pub trait Confirm {
    /// Waits until Traefik shows the write `marker` names live, at most `timeout` (zero: look once).
    fn shows(&self, marker: Marker<'_>, timeout: Duration) -> bool;
    /// Errors Traefik reports for routers and services of the routes file.
    fn errors(&self) -> Vec<String>;
}

/// The generation Traefik serves (or was last given).
#[derive(Debug, Clone)]
pub struct Live {
    /// First 16 hex digits of the upload's SHA-256.
    pub generation: String,
    /// The number of the write of the routes file that serves it (see [`Marker`]).
    pub write: u64,
    /// Whether Traefik's API showed it (in this run of the agent).
    pub confirmed: bool,
    /// When it was written.
    pub applied_at: SystemTime,
    /// Upload received -> confirmed (or gave up), in milliseconds.
    pub apply_ms: u64,
    /// Errors Traefik reported for routers and services of this file.
    pub errors: Vec<String>,
    /// Routers in the document.
    pub routers: usize,
    /// Its `l4` ports not served, and why.
    pub withheld: Vec<Withheld>,
}

/// Upload and repair counters for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Made live and confirmed.
    pub applied: u64,
    /// Same as the live generation: nothing done.
    pub unchanged: u64,
    /// Refused by validation.
    pub rejected: u64,
    /// Written, but Traefik did not confirm in time: the file was rolled back.
    pub rolled_back: u64,
    /// Routes files found deleted or changed on disk and rewritten.
    pub repairs: u64,
}

/// What /status and /metrics show; updated by the applier under a short lock of its own.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// The generation Traefik serves, as far as the agent knows; `None` before the first good config.
    pub live: Option<Live>,
    /// The generation the routes file holds now (differs from `live` while an upload waits for Traefik).
    pub written: Option<String>,
    /// Counters.
    pub counters: Counters,
    /// Pod -> local forwarder.
    pub forwarders: Vec<(SocketAddr, SocketAddr)>,
    /// Public TCP port -> where it goes.
    pub l4: Vec<(PortKey, PortPlan)>,
}

impl View {
    /// Marks `generation` confirmed live if it is still the live one and was not yet; returns whether it did.
    pub fn mark_confirmed(&mut self, generation: &str) -> bool {
        match self.live.as_mut().filter(|l| l.generation == generation && !l.confirmed) {
            Some(live) => {
                live.confirmed = true;
                true
            }
            None => false,
        }
    }
}

/// A validated upload, ready to apply.
#[derive(Debug)]
pub struct Prepared {
    generation: String,
    config: DynamicConfig,
    upload: Vec<u8>,
    /// `l4` ports left out (the policy refuses them), and why.
    withheld: Vec<Withheld>,
}

pub use protocol::generation_of;

/// Parses and validates an upload. Pure and lock-free: a slow or hostile upload costs only its own thread.
/// `l4` ports the policy refuses are left out and reported; the rest of the upload is served.
pub fn prepare(upload: &[u8], policy: &Policy) -> Result<Prepared, Vec<Problem>> {
    let text = std::str::from_utf8(upload)
        .map_err(|e| vec![Problem { path: String::new(), message: format!("body is not UTF-8 ({e})") }])?;
    let accepted = routes::accept(text, policy)?;
    Ok(Prepared {
        generation: generation_of(upload),
        config: accepted.config,
        upload: upload.to_vec(),
        withheld: accepted
            .withheld
            .into_iter()
            .map(|w| Withheld {
                transport: if w.protocol == "udp" { Transport::Udp } else { Transport::Tcp },
                port: w.port,
                service: w.service,
                reason: w.problem.message,
            })
            .collect(),
    })
}

/// A routes file as written: what it serves and the text Traefik reads.
#[derive(Debug, Clone)]
struct Written {
    generation: String,
    /// The number of this write, in the file's marker.
    write: u64,
    text: String,
    pods: BTreeSet<SocketAddr>,
    routers: usize,
    /// The public TCP ports it opens, and where they go.
    l4: BTreeMap<PortKey, PortPlan>,
}

impl Written {
    fn marker(&self) -> Marker<'_> {
        Marker { generation: &self.generation, write: self.write }
    }

    fn empty() -> Written {
        Written {
            generation: String::new(),
            write: 0,
            text: String::new(),
            pods: BTreeSet::new(),
            routers: 0,
            l4: BTreeMap::new(),
        }
    }
}

/// An answer to the client: status code and JSON body.
pub type Answer = (u16, UploadAnswer);

/// Owns the routes file, the forwarders and the record of what is live.
pub struct Applier {
    store: Store,
    forwarders: Forwarders,
    ports: Ports,
    canary_entry_point: Option<String>,
    /// What the routes file holds (or must hold) now.
    written: Option<Written>,
    /// Inode, size and modification time of the file as last written: an unchanged stamp spares the watchdog
    /// reading a large file every round.
    stamp: Option<(u64, u64, SystemTime)>,
    /// The last config Traefik confirmed (or the last good one restored at start): what the file returns to
    /// when an upload is not confirmed.
    good: Option<Written>,
    /// The number of the last write of the file (see [`Marker`]). It starts at the clock's nanoseconds, so a
    /// restarted agent does not reuse a number a still-running Traefik holds.
    writes: u64,
    view: Arc<Mutex<View>>,
}

fn routers(config: &DynamicConfig) -> usize {
    config.http.as_ref().map_or(0, |h| h.routers.len()) + config.tcp.as_ref().map_or(0, |t| t.routers.len())
}

impl Applier {
    /// An applier writing through `store`; `canary_entry_point` is the public entrypoint the canary router
    /// listens on (see [`routes::CANARY_HOST`]).
    pub fn new(store: Store, forwarders: Forwarders, ports: Ports, canary_entry_point: Option<String>) -> Applier {
        Applier {
            store,
            forwarders,
            ports,
            canary_entry_point,
            written: None,
            stamp: None,
            good: None,
            writes: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            view: Arc::default(),
        }
    }

    /// The view /status and /metrics read.
    pub fn view(&self) -> Arc<Mutex<View>> {
        Arc::clone(&self.view)
    }

    /// The forwarders' stream counters.
    pub fn forwarder_metrics(&self) -> Arc<tunnel::StreamCounters> {
        Arc::clone(&self.forwarders.metrics)
    }

    /// The generation the routes file holds now.
    pub fn written_generation(&self) -> Option<String> {
        self.written.as_ref().map(|w| w.generation.clone())
    }

    /// Run before Traefik starts: writes the last good upload (with forwarders of this run) or, when there is
    /// none or it no longer validates, a file with no routes. Either way Traefik never reads a file left by an
    /// earlier run, whose forwarder ports may now belong to someone else. Returns the generation restored.
    pub fn start(&mut self, policy: &Policy) -> Option<String> {
        let restored = self.store.last_good().and_then(|upload| match prepare(&upload, policy) {
            Ok(prepared) => Some(prepared),
            Err(problems) => {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                log::warn!(
                    "the last good config {} no longer validates ({}); serving no routes until the client uploads",
                    self.store.last_good_file().display(),
                    list.join("; ")
                );
                None
            }
        });
        let generation = restored.as_ref().map(|p| p.generation.clone());
        let withheld = restored.as_ref().map(|p| p.withheld.clone()).unwrap_or_default();
        let written = match restored.map(|p| self.write(&p)) {
            Some(Ok(written)) => Some(written),
            Some(Err((_, message))) => {
                log::warn!(
                    "cannot restore the last good config: {message}; serving no routes until the client uploads"
                );
                None
            }
            None => None,
        };
        match written {
            Some(written) => {
                let mut view = self.view.lock().unwrap();
                view.live = Some(Live {
                    generation: written.generation.clone(),
                    write: written.write,
                    confirmed: false, // not yet seen by Traefik
                    applied_at: SystemTime::now(),
                    apply_ms: 0,
                    errors: Vec::new(),
                    routers: written.routers,
                    withheld: withheld.clone(),
                });
                drop(view);
                self.good = Some(written);
                generation
            }
            None => {
                if let Err(message) = self.write_nothing() {
                    log::error!("{message}");
                }
                None
            }
        }
    }

    /// Applies an upload (already prepared by [`prepare`], or refused by it) and answers for the client.
    pub fn apply(
        &mut self,
        upload: &[u8],
        prepared: Result<Prepared, Vec<Problem>>,
        traefik: &dyn Confirm,
        timeout: Duration,
    ) -> Answer {
        let received = Instant::now();
        let generation = generation_of(upload);
        if let Some(write) = self.written.as_ref().map(|w| w.write).filter(|_| self.is_live(&generation)) {
            // Unchanged, but only if the file is intact and Traefik shows it; otherwise fall through and apply
            // it again under a new write number (a deleted file or a Traefik that lost it is repaired by the
            // client's next upload, and the answer waits until Traefik read the repair, not the deletion).
            let intact = !self.verify_file();
            if intact && traefik.shows(Marker { generation: &generation, write }, Duration::ZERO) {
                let mut view = self.view.lock().unwrap();
                view.counters.unchanged += 1;
                let errors = view.live.as_ref().map(|l| l.errors.clone()).unwrap_or_default();
                let withheld = view.live.as_ref().map(|l| l.withheld.clone()).unwrap_or_default();
                let answer =
                    UploadAnswer { generation, live: true, unchanged: true, errors, withheld, ..Default::default() };
                return (200, answer);
            }
        }
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(problems) => {
                self.view.lock().unwrap().counters.rejected += 1;
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let refused = "upload refused; the previous config keeps serving";
                return (400, UploadAnswer { problems: list, ..UploadAnswer::refused(&generation, refused) });
            }
        };
        let written = match self.write(&prepared) {
            Ok(written) => written,
            Err((status, message)) => return (status, UploadAnswer::refused(&generation, message)),
        };
        let confirmed = traefik.shows(written.marker(), timeout);
        let apply_ms = received.elapsed().as_millis() as u64;
        if !confirmed {
            return self.roll_back(&generation, timeout);
        }
        let errors = traefik.errors();
        self.keep_only(&written);
        if let Err(e) = self.store.save_last_good(&prepared.upload) {
            log::warn!("cannot record the last good config: {e}");
        }
        log::info!(
            "generation {generation}: {} routers, {} backends, live in {apply_ms} ms",
            written.routers,
            written.pods.len()
        );
        for reason in &prepared.withheld {
            log::warn!("generation {generation} is served without {reason}");
        }
        {
            let mut view = self.view.lock().unwrap();
            view.counters.applied += 1;
            view.live = Some(Live {
                generation: generation.clone(),
                write: written.write,
                confirmed: true,
                applied_at: SystemTime::now(),
                apply_ms,
                errors: errors.clone(),
                routers: written.routers,
                withheld: prepared.withheld.clone(),
            });
        }
        self.good = Some(written);
        let withheld = prepared.withheld;
        (200, UploadAnswer { generation, live: true, apply_ms: Some(apply_ms), errors, withheld, ..Default::default() })
    }

    /// Traefik did not show `generation`: the file goes back to the last good config (or to no routes), so no
    /// restart of Traefik can ever load what it did not confirm, and the new forwarders close.
    fn roll_back(&mut self, generation: &str, timeout: Duration) -> Answer {
        let back = match self.good.clone() {
            Some(good) => {
                if let Err(e) = self.write_file(&good.text) {
                    log::error!("cannot roll the routes file back to generation {}: {e}", good.generation);
                }
                self.set_written(good.clone());
                if let Err(e) = self.ports.ensure(&good.l4) {
                    log::error!("cannot reopen the TCP ports of generation {}: {e}", good.generation);
                }
                self.keep_only(&good);
                Some(good.generation)
            }
            None => {
                if let Err(message) = self.write_nothing() {
                    log::error!("{message}");
                }
                None
            }
        };
        let serving = back.as_deref().unwrap_or("none (no routes)");
        log::warn!(
            "generation {generation}: Traefik did not show it within {timeout:?}; the routes file is back at \
             generation {serving}"
        );
        let mut view = self.view.lock().unwrap();
        view.counters.rolled_back += 1;
        (
            503,
            UploadAnswer {
                serving: back.clone(),
                ..UploadAnswer::refused(
                    generation,
                    format!(
                        "Traefik did not show generation {generation} within {timeout:?} (see the agent's status: \
                         traefik); the routes file was rolled back to generation {serving}, which keeps serving; \
                         retry later"
                    ),
                )
            },
        )
    }

    /// Rewrites the routes file if it is missing or differs from what the agent wrote. Returns whether it did.
    pub fn verify_file(&mut self) -> bool {
        let Some(written) = self.written.clone() else { return false };
        if self.stamp.is_some() && self.stamp == self.stamp_on_disk() {
            return false;
        }
        let on_disk = std::fs::read(self.store.routes_file());
        if on_disk.as_deref().is_ok_and(|bytes| bytes == written.text.as_bytes()) {
            self.stamp = self.stamp_on_disk();
            return false;
        }
        let what = match &on_disk {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was deleted".to_string(),
            Err(e) => format!("cannot be read ({e})"),
            Ok(_) => "was changed on disk".to_string(),
        };
        match self.write_file(&written.text) {
            Ok(()) => log::warn!(
                "the routes file {} {what}: rewrote generation {}",
                self.store.routes_file().display(),
                written.generation
            ),
            Err(e) => log::error!(
                "the routes file {} {what} and cannot be rewritten: {e}",
                self.store.routes_file().display()
            ),
        }
        self.view.lock().unwrap().counters.repairs += 1;
        true
    }

    /// Rewrites the routes file with the same content, so that Traefik reads it again (it serves another
    /// generation than the file holds: it missed an event).
    pub fn touch_file(&mut self) {
        let Some(written) = self.written.clone() else { return };
        if let Err(e) = self.write_file(&written.text) {
            log::error!("cannot rewrite the routes file: {e}");
        }
        self.view.lock().unwrap().counters.repairs += 1;
    }

    fn is_live(&self, generation: &str) -> bool {
        self.written.as_ref().is_some_and(|w| w.generation == generation)
            && self.view.lock().unwrap().live.as_ref().is_some_and(|l| l.generation == generation && l.confirmed)
    }

    /// Opens forwarders for the pods, renders and writes the file. On failure the file and the forwarders are
    /// as before.
    fn write(&mut self, prepared: &Prepared) -> Result<Written, (u16, String)> {
        let pods = routes::backends(&prepared.config);
        let map = self.forwarders.ensure(&pods).map_err(|e| (500, format!("cannot open forwarders: {e}")))?;
        let l4 = crate::l4::plan(&prepared.config);
        if let Err(e) = self.ports.ensure(&l4) {
            self.close_unused();
            return Err((409, e.to_string()));
        }
        self.writes += 1;
        let marker = Marker { generation: &prepared.generation, write: self.writes };
        let rewritten = routes::rewrite(&prepared.config, &map, marker, self.canary_entry_point.as_deref());
        let written = Written {
            generation: prepared.generation.clone(),
            write: self.writes,
            text: render(&rewritten),
            pods,
            routers: routers(&prepared.config),
            l4,
        };
        if let Err(e) = self.write_file(&written.text) {
            self.close_unused();
            return Err((500, format!("cannot write the routes file {}: {e}", self.store.routes_file().display())));
        }
        self.set_written(written.clone());
        Ok(written)
    }

    /// Writes the no-routes document.
    fn write_nothing(&mut self) -> Result<(), String> {
        let generation = generation_of(NOTHING);
        let config: DynamicConfig = serde_json::from_slice(NOTHING).expect("NOTHING is a valid document");
        self.writes += 1;
        let marker = Marker { generation: &generation, write: self.writes };
        let rewritten = routes::rewrite(&config, &Default::default(), marker, self.canary_entry_point.as_deref());
        let written = Written { text: render(&rewritten), write: self.writes, generation, ..Written::empty() };
        self.keep_only(&written);
        self.set_written(written.clone());
        self.write_file(&written.text)
            .map_err(|e| format!("cannot write the routes file {}: {e}", self.store.routes_file().display()))
    }

    /// Writes the routes file and records its stamp.
    fn write_file(&mut self, text: &str) -> std::io::Result<()> {
        self.stamp = None;
        self.store.write_routes(text)?;
        self.stamp = self.stamp_on_disk();
        Ok(())
    }

    fn stamp_on_disk(&self) -> Option<(u64, u64, SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.store.routes_file()).ok()?;
        Some((meta.ino(), meta.len(), meta.modified().ok()?))
    }

    /// Records what the routes file holds, here and in the view the watchdog compares Traefik with (a
    /// restored file the view did not know had Traefik killed over and over as "serving another generation").
    fn set_written(&mut self, written: Written) {
        self.view.lock().unwrap().written = Some(written.generation.clone());
        self.written = Some(written);
    }

    /// Back to what the file on disk serves: forwarders and TCP ports of another config close, port plans
    /// return.
    fn close_unused(&mut self) {
        let current = self.written.clone().unwrap_or_else(Written::empty);
        let _ = self.ports.ensure(&current.l4);
        self.keep_only(&current);
    }

    /// Closes the forwarders and TCP ports `written` does not use, and shows what is open in the view.
    fn keep_only(&mut self, written: &Written) {
        self.forwarders.retain(&written.pods);
        self.ports.retain(&written.l4.keys().copied().collect());
        let mut view = self.view.lock().unwrap();
        view.forwarders = self.forwarders.listeners().into_iter().collect();
        view.l4 = self.ports.listening();
    }
}

/// The text Traefik reads. JSON is YAML too (YAML 1.2), and serializes 20x faster than serde_yaml for large
/// configs. Validation refused every `{{` in strings and JSON never writes two braces in a row of its own, so
/// the text holds no template action; checked again here because a template in the file would run.
fn render(config: &DynamicConfig) -> String {
    let text = serde_json::to_string_pretty(config).expect("the model always serializes") + "\n";
    assert!(!text.contains("{{"), "a validated document rendered a template action");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy() -> Policy {
        Policy {
            entry_points: ["web".to_string()].into(),
            cert_resolvers: BTreeSet::new(),
            max_backends: 100,
            ..Policy::default()
        }
    }

    /// Traefik as the applier sees it: shows a generation or not, as the test says.
    struct FakeTraefik {
        accepts: Cell<bool>,
    }

    impl Confirm for FakeTraefik {
        fn shows(&self, _marker: Marker<'_>, _timeout: Duration) -> bool {
            self.accepts.get()
        }
        fn errors(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn doc(pod: &str) -> Vec<u8> {
        format!(
            "{{\"http\": {{\"routers\": {{\"a\": {{\"rule\": \"Host(`a.test`)\", \"service\": \"s\"}}}}, \"services\": {{\"s\": {{\"loadBalancer\": {{\"servers\": [{{\"url\": \"http://{pod}\"}}]}}}}}}}}}}"
        )
        .into_bytes()
    }

    struct Fixture {
        root: std::path::PathBuf,
        applier: Applier,
        tunnel: Arc<tunnel::Tunnel>,
    }

    fn fixture(name: &str) -> Fixture {
        let root = std::env::temp_dir().join(format!("pe-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = Store::open(&root).unwrap();
        let tunnel = Arc::new(
            tunnel::Tunnel::start(tunnel::TunnelConfig {
                core: tunnel::CoreConfig::new(
                    tunnel::PrivateKey::generate(),
                    tunnel::PrivateKey::generate().public_key(),
                    vec!["10.88.0.1/30".parse().unwrap()],
                ),
                listen: "127.0.0.1:0".parse().unwrap(),
            })
            .unwrap(),
        );
        let forwarders = Forwarders::new(Arc::clone(&tunnel), vec!["10.88.0.2:7000".parse().unwrap()]);
        let ports = Ports::new(Arc::clone(&tunnel), vec!["10.88.0.2:7000".parse().unwrap()], [127, 0, 0, 1].into());
        Fixture { root, applier: Applier::new(store, forwarders, ports, Some("web".into())), tunnel }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn apply(f: &mut Fixture, upload: &[u8], traefik: &FakeTraefik) -> Answer {
        let prepared = prepare(upload, &policy());
        f.applier.apply(upload, prepared, traefik, Duration::from_millis(10))
    }

    fn routes_file(f: &Fixture) -> String {
        std::fs::read_to_string(f.root.join("dynamic/routes.yaml")).unwrap()
    }

    /// The file with the write number of its marker left out.
    fn without_write(text: &str) -> String {
        text.lines().filter(|l| !l.contains(routes::backend::WRITE_HEADER)).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn an_unconfirmed_upload_is_rolled_back_to_the_last_good_file_and_its_forwarders_close() {
        let mut f = fixture("rollback");
        let traefik = FakeTraefik { accepts: Cell::new(true) };
        assert_eq!(apply(&mut f, &doc("10.1.0.1:80"), &traefik).0, 200);
        let good = routes_file(&f);
        traefik.accepts.set(false);
        let (status, body) = apply(&mut f, &doc("10.1.0.2:80"), &traefik);
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(body.serving, Some(generation_of(&doc("10.1.0.1:80"))));
        assert_eq!(routes_file(&f), good, "the file is the last confirmed one again");
        assert_eq!(f.applier.written_generation(), Some(generation_of(&doc("10.1.0.1:80"))));
        let view = f.applier.view();
        let view = view.lock().unwrap();
        let pods: Vec<String> = view.forwarders.iter().map(|(pod, _)| pod.to_string()).collect();
        assert_eq!(pods, ["10.1.0.1:80"], "the new pod's forwarder closed");
        assert_eq!(view.counters.rolled_back, 1);
        assert_eq!(view.live.as_ref().unwrap().generation, generation_of(&doc("10.1.0.1:80")));
        drop(f.tunnel.clone());
    }

    #[test]
    fn without_a_good_config_an_unconfirmed_upload_leaves_a_file_with_no_routes() {
        let mut f = fixture("rollback-nothing");
        let traefik = FakeTraefik { accepts: Cell::new(false) };
        let (status, body) = apply(&mut f, &doc("10.1.0.1:80"), &traefik);
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(body.serving, None);
        let file = routes_file(&f);
        assert!(!file.contains("10.1.0.1") && !file.contains("127.0.0.1"), "{file}");
        assert!(file.contains(routes::CANARY_HOST), "the canary still answers: {file}");
    }

    #[test]
    fn a_deleted_or_edited_file_is_repaired_and_an_unchanged_upload_checks_it_first() {
        let mut f = fixture("repair");
        let traefik = FakeTraefik { accepts: Cell::new(true) };
        assert_eq!(apply(&mut f, &doc("10.1.0.1:80"), &traefik).0, 200);
        let good = routes_file(&f);
        assert!(!f.applier.verify_file(), "an intact file is left alone");
        std::fs::remove_file(f.root.join("dynamic/routes.yaml")).unwrap();
        assert!(f.applier.verify_file());
        assert_eq!(routes_file(&f), good);
        std::fs::write(f.root.join("dynamic/routes.yaml"), "http: {}\n").unwrap();
        // The same upload again: the file is repaired first, and the answer waits for Traefik to confirm.
        let (status, body) = apply(&mut f, &doc("10.1.0.1:80"), &traefik);
        assert_eq!((status, body.live, body.unchanged), (200, true, false), "{body:?}");
        let repaired = routes_file(&f);
        assert_eq!(without_write(&repaired), without_write(&good), "the unchanged upload repaired the file");
        assert_ne!(repaired, good, "under a new write number, so that Traefik's answer names this write");
        let (status, body) = apply(&mut f, &doc("10.1.0.1:80"), &traefik);
        assert_eq!((status, body.unchanged), (200, true), "intact now: {body:?}");
        assert_eq!(f.applier.view().lock().unwrap().counters.repairs, 2);
    }

    #[test]
    fn start_writes_no_routes_when_the_last_good_config_no_longer_validates() {
        let mut f = fixture("start");
        // An earlier run's file pointing at a forwarder port that is no longer ours.
        std::fs::write(
            f.root.join("dynamic/routes.yaml"),
            "http:\n  services:\n    s: {loadBalancer: {servers: [{url: \"http://127.0.0.1:40001\"}]}}\n",
        )
        .unwrap();
        std::fs::write(f.root.join("last-good.yaml"), doc("0.0.0.0:80")).unwrap();
        assert_eq!(f.applier.start(&policy()), None);
        let file = routes_file(&f);
        assert!(!file.contains("40001"), "{file}");
        assert!(f.applier.view().lock().unwrap().live.is_none());
        std::fs::write(f.root.join("last-good.yaml"), doc("10.1.0.9:80")).unwrap();
        assert_eq!(f.applier.start(&policy()), Some(generation_of(&doc("10.1.0.9:80"))));
        assert_eq!(
            f.applier.view().lock().unwrap().written,
            Some(generation_of(&doc("10.1.0.9:80"))),
            "the watchdog knows what the restored file holds"
        );
        assert!(routes_file(&f).contains("127.0.0.1:"), "the pod points at a forwarder of this run");
    }
}
