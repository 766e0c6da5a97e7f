//! Whether Traefik is well, judged from periodic probes, and what to do when it is not. Sans-IO: the agent's
//! watchdog probes (ping on the admin entrypoint, the canary request through a public entrypoint), feeds each
//! round to [`Health::observe`] and carries out the [`Action`] it returns.
//!
//! A process that stopped answering (hung, SIGSTOPped, deadlocked) is restarted after [`HUNG_ROUNDS`] failed
//! rounds in a row; a fresh process gets [`START_GRACE`] to answer for the first time (Traefik takes seconds to
//! start on a small ARM host, a minute under emulation). A Traefik that answers but serves another generation
//! than the routes file holds missed a file event: the file is written again, and if that does not help the
//! process is restarted.

use std::time::Duration;

/// Time between probe rounds.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed rounds in a row before a restart.
pub const HUNG_ROUNDS: u32 = 3;
/// Rounds serving the wrong generation before the file is written again; twice as many before a restart.
pub const MISMATCH_ROUNDS: u32 = 2;
/// How long a new process may take to answer for the first time.
pub const START_GRACE: Duration = Duration::from_secs(120);

/// One probe round.
#[derive(Debug, Clone)]
pub struct Observation {
    /// How long the current process has run; `None` while none runs (the supervisor restarts it).
    pub running_for: Option<Duration>,
    /// The ping on the admin entrypoint.
    pub ping: Result<(), String>,
    /// The canary through a public entrypoint: the generation it names (`None`: Traefik answered without the
    /// canary router), or why it failed. `None` when no entrypoint can carry the canary.
    pub canary: Option<Result<Option<String>, String>>,
    /// The generation the routes file holds.
    pub expected: Option<String>,
}

/// What the watchdog should do after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Nothing,
    /// Write the routes file again (same content), so Traefik reads it.
    RewriteFile,
    /// Kill the process; the supervisor starts a new one.
    Restart,
}

/// The judgement so far.
#[derive(Debug, Clone, Default)]
pub struct Health {
    failures: u32,
    mismatches: u32,
    answered: bool,
    last_running_for: Option<Duration>,
    /// Whether the last round found Traefik well.
    pub healthy: bool,
    /// What the last round found, for /status.
    pub state: String,
    /// Restarts because Traefik stopped answering or kept serving the wrong generation.
    pub restarts: u64,
    /// Routes files written again because Traefik served another generation.
    pub rewrites: u64,
}

impl Health {
    /// Takes one round's observation and says what to do.
    pub fn observe(&mut self, o: &Observation) -> Action {
        let Some(running_for) = o.running_for else {
            self.reset();
            self.healthy = false;
            self.state = "not running (the supervisor restarts it)".into();
            return Action::Nothing;
        };
        if self.last_running_for.is_some_and(|previous| running_for < previous) {
            self.reset(); // a new process
        }
        self.last_running_for = Some(running_for);
        let failure = match (&o.ping, &o.canary) {
            (Err(e), _) | (_, Some(Err(e))) => Some(e.clone()),
            _ => None,
        };
        if let Some(failure) = failure {
            self.healthy = false;
            self.mismatches = 0;
            if !self.answered && running_for < START_GRACE {
                self.state = format!("starting ({failure})");
                return Action::Nothing;
            }
            self.failures += 1;
            self.state = format!("not answering: {failure} ({} of {HUNG_ROUNDS} rounds)", self.failures);
            if self.failures >= HUNG_ROUNDS {
                self.failures = 0;
                self.restarts += 1;
                return Action::Restart;
            }
            return Action::Nothing;
        }
        self.answered = true;
        self.failures = 0;
        let serving = o.canary.as_ref().and_then(|c| c.as_ref().ok());
        match serving {
            Some(serving) if *serving != o.expected => {
                self.healthy = false;
                self.mismatches += 1;
                self.state = format!(
                    "serves generation {} while the routes file holds {} ({} rounds)",
                    serving.as_deref().unwrap_or("none"),
                    o.expected.as_deref().unwrap_or("none"),
                    self.mismatches
                );
                if self.mismatches == MISMATCH_ROUNDS {
                    self.rewrites += 1;
                    Action::RewriteFile
                } else if self.mismatches >= 2 * MISMATCH_ROUNDS {
                    self.mismatches = 0;
                    self.restarts += 1;
                    Action::Restart
                } else {
                    Action::Nothing
                }
            }
            _ => {
                self.mismatches = 0;
                self.healthy = true;
                self.state = "ok".into();
                Action::Nothing
            }
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.mismatches = 0;
        self.answered = false;
        self.last_running_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(running_for: u64, ping: bool, canary: Option<&str>, expected: &str) -> Observation {
        Observation {
            running_for: Some(Duration::from_secs(running_for)),
            ping: if ping { Ok(()) } else { Err("timed out".into()) },
            canary: Some(match canary {
                Some("timeout") => Err("timed out".into()),
                Some(g) => Ok(Some(g.to_string())),
                None => Ok(None),
            }),
            expected: Some(expected.into()),
        }
    }

    #[test]
    fn a_traefik_that_stops_answering_is_restarted_after_three_rounds() {
        let mut h = Health::default();
        assert_eq!(h.observe(&round(10, true, Some("g1"), "g1")), Action::Nothing);
        assert!(h.healthy);
        assert_eq!(h.observe(&round(12, false, Some("timeout"), "g1")), Action::Nothing);
        assert!(!h.healthy && h.state.contains("not answering"), "{}", h.state);
        assert_eq!(h.observe(&round(14, false, Some("timeout"), "g1")), Action::Nothing);
        assert_eq!(h.observe(&round(16, false, Some("timeout"), "g1")), Action::Restart);
        assert_eq!(h.restarts, 1);
        // The new process gets its start grace.
        for t in [1, 3, 5, 7] {
            assert_eq!(h.observe(&round(t, false, None, "g1")), Action::Nothing, "at {t} s");
        }
        assert!(h.state.starts_with("starting"), "{}", h.state);
        assert_eq!(h.observe(&round(9, true, Some("g1"), "g1")), Action::Nothing);
        assert!(h.healthy);
    }

    #[test]
    fn a_canary_that_hangs_while_ping_answers_counts_as_not_answering() {
        let mut h = Health::default();
        h.observe(&round(10, true, Some("g1"), "g1"));
        let actions: Vec<Action> = (0..3).map(|i| h.observe(&round(12 + i, true, Some("timeout"), "g1"))).collect();
        assert_eq!(actions, [Action::Nothing, Action::Nothing, Action::Restart]);
    }

    #[test]
    fn a_process_that_never_answers_is_restarted_after_the_grace() {
        let mut h = Health::default();
        assert_eq!(h.observe(&round(60, false, None, "g1")), Action::Nothing);
        let after = START_GRACE.as_secs();
        let actions: Vec<Action> = (0..3).map(|i| h.observe(&round(after + i, false, None, "g1"))).collect();
        assert_eq!(actions, [Action::Nothing, Action::Nothing, Action::Restart]);
    }

    #[test]
    fn serving_another_generation_rewrites_the_file_then_restarts() {
        let mut h = Health::default();
        assert_eq!(h.observe(&round(10, true, Some("old"), "new")), Action::Nothing, "one round may be a reload");
        assert_eq!(h.observe(&round(12, true, Some("old"), "new")), Action::RewriteFile);
        assert_eq!(h.observe(&round(14, true, None, "new")), Action::Nothing);
        assert_eq!(h.observe(&round(16, true, None, "new")), Action::Restart);
        assert_eq!((h.rewrites, h.restarts), (1, 1));
        assert_eq!(h.observe(&round(1, true, Some("new"), "new")), Action::Nothing);
        assert!(h.healthy);
    }

    #[test]
    fn nothing_is_done_while_no_process_runs() {
        let mut h = Health::default();
        let o = Observation { running_for: None, ping: Err("refused".into()), canary: None, expected: None };
        assert_eq!(h.observe(&o), Action::Nothing);
        assert!(!h.healthy);
    }
}
