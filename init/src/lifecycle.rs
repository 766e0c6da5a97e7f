//! What PID 1 does about the agent process, as a pure state machine the init loop drives: start it, restart
//! it with backoff when it dies, and on a shutdown request stop it gracefully (SIGTERM, then SIGKILL after a
//! grace period) before powering off or rebooting. No processes, signals or clocks in here: the caller passes
//! `now` and carries out the returned [`Action`]s.

use std::time::{Duration, Instant};

/// A run shorter than this counts as a crash and doubles the restart delay.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The agent itself gives Traefik 12 s to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Power off (SIGTERM, SIGUSR2, SIGPWR, the console's `poweroff`, the ACPI power button).
    Off,
    /// Reboot (SIGINT, which Ctrl-Alt-Del sends; the console's `reboot`).
    Reboot,
}

/// What the init loop must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the agent process.
    StartAgent,
    /// Send SIGTERM to the agent.
    StopAgent,
    /// Send SIGKILL to the agent.
    KillAgent,
    /// Everything is stopped: sync, end stray processes and power off or reboot.
    Finish(Power),
    /// Print a line on the console.
    Say(String),
}

/// The agent's process as PID 1 sees it.
#[derive(Debug)]
pub struct Lifecycle {
    running_since: Option<Instant>,
    restart_at: Option<Instant>,
    backoff: Duration,
    stopping: Option<(Power, Instant)>,
    killed: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// Nothing started yet.
    pub fn new() -> Lifecycle {
        Lifecycle { running_since: None, restart_at: None, backoff: FIRST_BACKOFF, stopping: None, killed: false }
    }

    /// Boot finished: start the agent.
    pub fn boot(&mut self, now: Instant) -> Vec<Action> {
        self.restart_at = Some(now);
        self.poll(now)
    }

    /// The caller started the agent (after [`Action::StartAgent`]).
    pub fn started(&mut self, now: Instant) {
        self.running_since = Some(now);
    }

    /// Starting failed; try again later as if it had crashed at once.
    pub fn start_failed(&mut self, now: Instant, error: &str) -> Vec<Action> {
        self.running_since = Some(now);
        self.exited(now, error)
    }

    /// The agent process ended (`how` describes its exit status).
    pub fn exited(&mut self, now: Instant, how: &str) -> Vec<Action> {
        let ran = self.running_since.take().map(|s| now.saturating_duration_since(s)).unwrap_or_default();
        if let Some((power, _)) = self.stopping {
            return vec![Action::Say(format!("agent stopped ({how})")), Action::Finish(power)];
        }
        if ran >= HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.restart_at = Some(now + delay);
        vec![Action::Say(format!(
            "agent exited after {:.1} s ({how}); restarting in {} s",
            ran.as_secs_f64(),
            delay.as_secs()
        ))]
    }

    /// A shutdown was requested.
    pub fn shutdown(&mut self, now: Instant, power: Power) -> Vec<Action> {
        if self.stopping.is_some() {
            return vec![];
        }
        self.restart_at = None;
        self.stopping = Some((power, now + STOP_GRACE));
        if self.running_since.is_some() {
            vec![Action::Say("stopping the agent and Traefik".into()), Action::StopAgent]
        } else {
            vec![Action::Finish(power)]
        }
    }

    /// Time-driven steps: a due restart, or the end of the stop grace period.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        if let Some((_, deadline)) = self.stopping {
            if now >= deadline && self.running_since.is_some() && !self.killed {
                self.killed = true;
                return vec![
                    Action::Say(format!("agent still running after {} s; killing it", STOP_GRACE.as_secs())),
                    Action::KillAgent,
                ];
            }
            return vec![];
        }
        match self.restart_at {
            Some(at) if now >= at && self.running_since.is_none() => {
                self.restart_at = None;
                vec![Action::StartAgent]
            }
            _ => vec![],
        }
    }

    /// When [`Lifecycle::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.stopping {
            Some((_, deadline)) if !self.killed && self.running_since.is_some() => Some(deadline),
            Some(_) => None,
            None => self.restart_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_and_restarts_a_crashing_agent_with_growing_then_reset_backoff() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new();
        assert_eq!(l.boot(t0), [Action::StartAgent]);
        l.started(t0);
        assert_eq!(l.next_deadline(), None);
        let a = l.exited(t0 + Duration::from_millis(100), "exit status: 1");
        assert!(matches!(&a[..], [Action::Say(s)] if s.contains("restarting in 1 s")), "{a:?}");
        assert_eq!(l.poll(t0 + Duration::from_millis(500)), []);
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(l.poll(t1), [Action::StartAgent]);
        l.started(t1);
        let a = l.exited(t1, "signal: 9");
        assert!(matches!(&a[..], [Action::Say(s)] if s.contains("restarting in 2 s")), "{a:?}");
        assert_eq!(l.next_deadline(), Some(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(l.poll(t2), [Action::StartAgent]);
        l.started(t2);
        // A healthy run resets the delay.
        let a = l.exited(t2 + HEALTHY_RUN, "exit status: 1");
        assert!(matches!(&a[..], [Action::Say(s)] if s.contains("restarting in 1 s")), "{a:?}");
    }

    #[test]
    fn shutdown_stops_the_agent_then_finishes_and_kills_after_the_grace_period() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new();
        l.boot(t0);
        l.started(t0);
        let a = l.shutdown(t0, Power::Off);
        assert_eq!(a.last(), Some(&Action::StopAgent));
        assert_eq!(l.shutdown(t0, Power::Reboot), [], "a second request changes nothing");
        assert_eq!(l.poll(t0 + Duration::from_secs(1)), []);
        assert_eq!(l.next_deadline(), Some(t0 + STOP_GRACE));
        let a = l.poll(t0 + STOP_GRACE);
        assert_eq!(a.last(), Some(&Action::KillAgent));
        assert_eq!(l.next_deadline(), None);
        let a = l.exited(t0 + STOP_GRACE, "signal: 9");
        assert_eq!(a.last(), Some(&Action::Finish(Power::Off)));
    }

    #[test]
    fn shutdown_while_waiting_to_restart_finishes_at_once_and_never_restarts() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new();
        l.boot(t0);
        l.start_failed(t0, "no such file");
        assert_eq!(l.shutdown(t0, Power::Reboot), [Action::Finish(Power::Reboot)]);
        assert_eq!(l.poll(t0 + Duration::from_secs(60)), []);
        assert_eq!(l.next_deadline(), None);
    }
}
