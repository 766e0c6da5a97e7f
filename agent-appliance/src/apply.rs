//! The apply pipeline: an upload becomes the live Traefik config, or is refused with reasons while the last
//! good config keeps serving.
//!
//! parse + validate (strict) -> forwarders for its pods -> rewrite backends, add the generation marker ->
//! atomic write -> wait (bounded) until Traefik's API shows the marker -> record as last good.

use crate::forwarders::Forwarders;
use crate::store::Store;
use crate::traefik::api;
use routes::{Policy, Problem};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};

/// How long an upload waits for Traefik to show the new generation.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The generation Traefik serves (or was last given).
#[derive(Debug, Clone)]
pub struct Live {
    /// First 16 hex digits of the upload's SHA-256.
    pub generation: String,
    /// Whether Traefik's API showed it.
    pub confirmed: bool,
    /// When it was written.
    pub applied_at: SystemTime,
    /// Upload received -> confirmed (or gave up), in milliseconds.
    pub apply_ms: u64,
    /// Errors Traefik reported for routers and services of this file.
    pub errors: Vec<String>,
    /// Routers in the document.
    pub routers: usize,
}

/// Upload counters for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Made live and confirmed.
    pub applied: u64,
    /// Same as the live generation: nothing done.
    pub unchanged: u64,
    /// Refused by validation.
    pub rejected: u64,
    /// Written, but Traefik did not confirm in time.
    pub unconfirmed: u64,
}

/// Owns the routes file, the forwarders and the record of what is live.
pub struct Applier {
    store: Store,
    /// The forwarders (public for /status and /metrics).
    pub forwarders: Forwarders,
    admin_port: u16,
    policy: Policy,
    /// What is live.
    pub live: Option<Live>,
    /// Counters.
    pub counters: Counters,
}

/// SHA-256 of the upload, shortened: names the generation in the marker and in answers.
pub fn generation_of(upload: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, upload);
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn routers(config: &routes::model::DynamicConfig) -> usize {
    config.http.as_ref().map_or(0, |h| h.routers.len()) + config.tcp.as_ref().map_or(0, |t| t.routers.len())
}

impl Applier {
    /// An applier writing through `store`, confirming on Traefik's admin port.
    pub fn new(store: Store, forwarders: Forwarders, admin_port: u16, policy: Policy) -> Applier {
        Applier { store, forwarders, admin_port, policy, live: None, counters: Counters::default() }
    }

    /// Applies an upload and answers with status code and JSON for the client.
    pub fn apply(&mut self, upload: &[u8], confirm_timeout: Duration) -> (u16, serde_json::Value) {
        let received = Instant::now();
        let generation = generation_of(upload);
        if let Some(live) = &self.live {
            if live.generation == generation && live.confirmed {
                self.counters.unchanged += 1;
                return (
                    200,
                    json!({ "generation": generation, "live": true, "unchanged": true, "errors": live.errors }),
                );
            }
        }
        let problems = |problems: Vec<Problem>| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            json!({ "generation": generation, "live": false, "error": "upload refused; the previous config keeps serving", "problems": list })
        };
        let Ok(text) = std::str::from_utf8(upload) else {
            self.counters.rejected += 1;
            return (400, problems(vec![Problem { path: String::new(), message: "body is not UTF-8".into() }]));
        };
        let config = match routes::parse(text, &self.policy) {
            Ok(config) => config,
            Err(list) => {
                self.counters.rejected += 1;
                return (400, problems(list));
            }
        };
        let pods = routes::backends(&config);
        let forwarders = match self.forwarders.ensure(&pods) {
            Ok(map) => map,
            Err(e) => {
                return (
                    500,
                    json!({ "generation": generation, "live": false, "error": format!("cannot open forwarders: {e}") }),
                )
            }
        };
        let rewritten = routes::rewrite(&config, &forwarders, &generation);
        // JSON is YAML too (YAML 1.2), and serializes 20x faster than serde_yaml for large configs.
        let yaml = serde_json::to_string_pretty(&rewritten).expect("the model always serializes") + "\n";
        if let Err(e) = self.store.write_routes(&yaml) {
            return (
                500,
                json!({ "generation": generation, "live": false, "error": format!("cannot write the routes file: {e}") }),
            );
        }
        let confirmed =
            confirm_timeout.is_zero() || api::wait_for_generation(self.admin_port, &generation, confirm_timeout);
        let errors = if confirmed && !confirm_timeout.is_zero() {
            api::file_provider_errors(self.admin_port)
        } else {
            Vec::new()
        };
        let apply_ms = received.elapsed().as_millis() as u64;
        if confirmed {
            self.counters.applied += 1;
            self.forwarders.retain(&pods);
            if let Err(e) = self.store.save_last_good(upload) {
                log::warn!("cannot record the last good config: {e}");
            }
        } else {
            self.counters.unconfirmed += 1;
        }
        let routers = routers(&config);
        log::info!(
            "generation {generation}: {routers} routers, {} backends, {} in {apply_ms} ms",
            pods.len(),
            if confirmed { "live" } else { "NOT confirmed by Traefik" }
        );
        self.live = Some(Live {
            generation: generation.clone(),
            confirmed,
            applied_at: SystemTime::now(),
            apply_ms,
            errors: errors.clone(),
            routers,
        });
        let status = if confirmed { 200 } else { 202 };
        (
            status,
            json!({ "generation": generation, "live": confirmed, "unchanged": false, "apply_ms": apply_ms, "errors": errors }),
        )
    }

    /// Writes the last good upload (if any) without waiting for Traefik: run before Traefik starts, so the
    /// routes serve from its first moment. Returns the generation restored.
    pub fn restore(&mut self) -> Option<String> {
        let upload = self.store.last_good()?;
        match self.apply(&upload, Duration::ZERO) {
            (200, _) => {
                let live = self.live.as_mut()?;
                live.confirmed = false; // not yet seen by Traefik
                self.counters.applied -= 1;
                Some(live.generation.clone())
            }
            (_, answer) => {
                log::warn!("the last good config no longer applies: {answer}");
                None
            }
        }
    }

    /// Marks `generation` confirmed live, if it is still the live one (an upload may have replaced it while
    /// the caller waited for Traefik without holding the applier).
    pub fn mark_confirmed(&mut self, generation: &str) {
        if let Some(live) = self.live.as_mut().filter(|l| l.generation == generation) {
            live.confirmed = true;
        }
    }
}
