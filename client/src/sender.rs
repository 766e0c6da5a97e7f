//! Sending snapshots to one agent. [`Sender`] is the sans-IO policy (what to send when, backoff, when to
//! re-check); [`upload`] and [`live_generation`] are the thin I/O over the tunnel.
//!
//! The agent names a generation by the first 16 hex digits of the upload's SHA-256, so the client knows the
//! generation of what it sends and can compare it with what the agent reports live. An agent that restarted
//! with an older config, or lost its state, is noticed at the next check and gets the current snapshot.

use protocol::api::{Status, UploadAnswer};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunnel::Tunnel;

/// First retry delay after a failed upload; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the agent's live generation is compared with ours when nothing else happens.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The generation the agent will report for an upload (the shared recipe, [`protocol::generation_of`]).
pub fn generation_of(document: &str) -> String {
    protocol::generation_of(document.as_bytes())
}

/// What the sender wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Upload this snapshot.
    Upload(Arc<String>),
    /// Ask the agent which generation is live.
    Check,
    /// Nothing until this time (or a new snapshot).
    Wait(Instant),
}

/// Send policy for one agent.
#[derive(Debug)]
pub struct Sender {
    desired: Option<(String, Arc<String>)>,
    /// The generation the agent confirmed live, as far as we know.
    confirmed: Option<String>,
    next: Instant,
    backoff: Duration,
    check_due: Instant,
}

impl Sender {
    /// A sender with nothing to send yet.
    pub fn new(now: Instant) -> Sender {
        Sender { desired: None, confirmed: None, next: now, backoff: FIRST_BACKOFF, check_due: now + RECHECK }
    }

    /// A new snapshot replaces any older one not yet sent (only the latest matters: each is complete).
    pub fn snapshot(&mut self, now: Instant, yaml: Arc<String>) {
        let generation = generation_of(&yaml);
        if self.desired.as_ref().is_some_and(|(g, _)| *g == generation) {
            return;
        }
        self.desired = Some((generation, yaml));
        self.next = now;
        self.backoff = FIRST_BACKOFF;
    }

    /// The generation we want live.
    pub fn desired_generation(&self) -> Option<&str> {
        self.desired.as_ref().map(|(g, _)| g.as_str())
    }

    /// Whether the agent has confirmed our latest snapshot.
    pub fn in_sync(&self) -> bool {
        self.desired.is_some() && self.confirmed.as_deref() == self.desired_generation()
    }

    /// What to do now.
    pub fn poll(&mut self, now: Instant) -> Action {
        let Some((generation, yaml)) = &self.desired else { return Action::Wait(now + RECHECK) };
        if now < self.next {
            return Action::Wait(self.next);
        }
        if self.confirmed.as_ref() != Some(generation) {
            return Action::Upload(Arc::clone(yaml));
        }
        if now >= self.check_due {
            return Action::Check;
        }
        Action::Wait(self.check_due)
    }

    /// The agent answered an upload (`live`: confirmed) or the upload failed (`None`).
    pub fn uploaded(&mut self, now: Instant, live_generation: Option<String>) {
        match live_generation {
            Some(generation) if Some(&generation) == self.desired_generation().map(str::to_string).as_ref() => {
                self.confirmed = Some(generation);
                self.backoff = FIRST_BACKOFF;
                self.next = now;
                self.check_due = now + RECHECK;
            }
            _ => self.retry_later(now),
        }
    }

    /// The agent reported what it serves: `Ok(Some(generation))`, `Ok(None)` for nothing confirmed (a fresh or
    /// wiped agent), or `Err(())` when it could not be asked.
    pub fn checked(&mut self, now: Instant, live: Result<Option<String>, ()>) {
        match live {
            Ok(generation) => {
                if self.confirmed != generation {
                    // The agent serves something else (restarted, lost its state): send ours again now.
                    self.confirmed = None;
                    self.next = now;
                }
                self.check_due = now + RECHECK;
            }
            Err(()) => {
                self.check_due = now + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The tunnel to the agent came (back) up: whatever it serves, check at once.
    pub fn reconnected(&mut self, now: Instant) {
        self.check_due = now;
        self.next = now;
        self.backoff = FIRST_BACKOFF;
    }

    fn retry_later(&mut self, now: Instant) {
        self.next = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// How long opening a connection to the agent's API may take for an upload, and for a status check (which also
/// decides whether the edge is listed in status: an edge host that died leaves it within RECHECK + this).
const UPLOAD_CONNECT: Duration = Duration::from_secs(5);
const CHECK_CONNECT: Duration = Duration::from_secs(3);

/// One HTTP exchange with the agent's control API through the tunnel.
fn exchange(tunnel: &Tunnel, api: SocketAddr, request: &[u8], connect: Duration) -> Result<(u16, String), String> {
    let stream = tunnel.connect(api, connect).map_err(|e| format!("cannot reach the agent's API: {e}"))?;
    let mut io = stream.into_io().map_err(|e| e.to_string())?;
    io.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    io.write_all(request).map_err(|e| format!("sending to the agent failed: {e}"))?;
    let mut response = Vec::new();
    io.read_to_end(&mut response).map_err(|e| format!("reading the agent's answer failed: {e}"))?;
    let response = protocol::http::parse_response(&response).map_err(|e| format!("the agent's answer: {e}"))?;
    Ok((response.status, response.text()))
}

/// The agent's answer to an upload.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: UploadAnswer,
}

/// What an upload's answer says about the snapshot that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent confirmed our generation live.
    Live,
    /// The agent answered "live" for another generation (a proxy, a stale answer, a bug): not ours.
    OtherGeneration(String),
    /// Not live (refused, rolled back, or Traefik did not confirm).
    NotLive,
    /// Refused: the agent obeys a newer client leader, of this term.
    Fenced(u64),
}

impl Answer {
    /// The generation, if the agent confirmed it live.
    pub fn live_generation(&self) -> Option<String> {
        self.body.live.then(|| self.body.generation.clone())
    }

    /// The answer for the snapshot of generation `ours`.
    pub fn outcome(&self, ours: &str) -> Outcome {
        if let Some(term) = self.body.fenced_by {
            return Outcome::Fenced(term);
        }
        match self.live_generation() {
            Some(generation) if generation == ours => Outcome::Live,
            Some(generation) => Outcome::OtherGeneration(generation),
            None => Outcome::NotLive,
        }
    }
}

/// POSTs a snapshot to the agent's /upload, as the leader of `term` (`None`: no leader election).
pub fn upload(tunnel: &Tunnel, api: SocketAddr, yaml: &str, term: Option<u64>) -> Result<Answer, String> {
    let path = protocol::fencing::upload_path(term);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{yaml}",
        yaml.len()
    );
    let (status, body) = exchange(tunnel, api, request.as_bytes(), UPLOAD_CONNECT)?;
    let body = serde_json::from_str(&body)
        .map_err(|e| format!("the agent answered {status} with a body that is not an upload answer ({e}): {body}"))?;
    Ok(Answer { status, body })
}

/// The generation the agent serves and the leader term it obeys, from its /status.
pub fn live_generation(tunnel: &Tunnel, api: SocketAddr) -> Result<(Option<String>, Option<u64>), String> {
    let request = format!("GET /status HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    let (status, body) = exchange(tunnel, api, request.as_bytes(), CHECK_CONNECT)?;
    if status != 200 {
        return Err(format!("the agent's /status answered {status}"));
    }
    let status: Status =
        serde_json::from_str(&body).map_err(|e| format!("the agent's /status is not a status ({e})"))?;
    Ok((status.confirmed_generation().map(str::to_string), status.term))
}

/// Whether an agent that obeys term `agent` fences a leader of term `ours`: a newer leader has uploaded to it.
/// Without leader election (`ours` is `None`) nothing is fenced.
pub fn fenced(ours: Option<u64>, agent: Option<u64>) -> Option<u64> {
    match (ours, agent) {
        (Some(ours), Some(agent)) if agent > ours => Some(agent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Arc<String> {
        Arc::new(s.to_string())
    }

    #[test]
    fn only_a_leader_of_an_older_term_is_fenced() {
        assert_eq!(fenced(Some(3), Some(4)), Some(4));
        assert_eq!(fenced(Some(4), Some(4)), None);
        assert_eq!(fenced(Some(5), Some(4)), None);
        assert_eq!(fenced(None, Some(4)), None, "no leader election: never fenced");
        assert_eq!(fenced(Some(3), None), None, "an agent no leader has uploaded to");
        let answer =
            Answer { status: 409, body: UploadAnswer { fenced_by: Some(6), ..UploadAnswer::refused("g", "fenced") } };
        assert_eq!(answer.outcome("g"), Outcome::Fenced(6));
    }

    #[test]
    fn uploads_the_latest_snapshot_once_then_only_rechecks() {
        let t0 = Instant::now();
        let mut s = Sender::new(t0);
        assert!(matches!(s.poll(t0), Action::Wait(_)), "nothing to send yet");
        s.snapshot(t0, yaml("a"));
        s.snapshot(t0, yaml("b")); // coalesced: only the latest is sent
        assert_eq!(s.poll(t0), Action::Upload(yaml("b")));
        s.uploaded(t0, Some(generation_of("b")));
        assert!(s.in_sync());
        assert_eq!(s.poll(t0), Action::Wait(t0 + RECHECK));
        s.snapshot(t0, yaml("b")); // unchanged snapshot: nothing to do
        assert_eq!(s.poll(t0), Action::Wait(t0 + RECHECK));
        assert_eq!(s.poll(t0 + RECHECK), Action::Check);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_a_new_snapshot_resets() {
        let t0 = Instant::now();
        let mut s = Sender::new(t0);
        s.snapshot(t0, yaml("a"));
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert!(matches!(s.poll(now), Action::Upload(_)));
            s.uploaded(now, None);
            let Action::Wait(at) = s.poll(now) else { panic!("must wait after a failure") };
            delays.push(at - now);
            now = at;
        }
        assert_eq!(delays[0], FIRST_BACKOFF);
        assert_eq!(delays[1], FIRST_BACKOFF * 2);
        assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
        s.snapshot(now, yaml("c"));
        assert_eq!(s.poll(now), Action::Upload(yaml("c")));
    }

    #[test]
    fn an_agent_serving_something_else_gets_the_snapshot_again() {
        let t0 = Instant::now();
        let mut s = Sender::new(t0);
        s.snapshot(t0, yaml("a"));
        s.uploaded(t0, Some(generation_of("a")));
        s.checked(t0 + RECHECK, Ok(Some("0000000000000000".into())));
        assert_eq!(s.poll(t0 + RECHECK), Action::Upload(yaml("a")));
        // A wiped agent (nothing live) gets it too.
        s.uploaded(t0 + RECHECK, Some(generation_of("a")));
        s.checked(t0 + RECHECK * 2, Ok(None));
        assert_eq!(s.poll(t0 + RECHECK * 2), Action::Upload(yaml("a")));
        // An agent that cannot be asked is asked again later, not sent to blindly.
        s.uploaded(t0 + RECHECK * 2, Some(generation_of("a")));
        s.checked(t0 + RECHECK * 3, Err(()));
        assert!(matches!(s.poll(t0 + RECHECK * 3), Action::Wait(_)));
        // A stale "live" answer for another generation does not count as confirmation.
        s.checked(t0 + RECHECK * 4, Ok(None));
        s.uploaded(t0 + RECHECK * 4, Some("ffffffffffffffff".into()));
        assert!(!s.in_sync());
    }

    #[test]
    fn reconnecting_checks_at_once() {
        let t0 = Instant::now();
        let mut s = Sender::new(t0);
        s.snapshot(t0, yaml("a"));
        s.uploaded(t0, Some(generation_of("a")));
        s.reconnected(t0 + Duration::from_secs(1));
        assert_eq!(s.poll(t0 + Duration::from_secs(1)), Action::Check);
    }

    #[test]
    fn generation_matches_the_agents_recipe() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(generation_of("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn an_answer_is_live_only_for_our_generation() {
        let answer = |live: bool, generation: &str| Answer {
            status: 200,
            body: UploadAnswer { live, generation: generation.into(), ..Default::default() },
        };
        let ours = generation_of("a");
        assert_eq!(answer(true, &ours).outcome(&ours), Outcome::Live);
        assert_eq!(
            answer(true, "0123456789abcdef").outcome(&ours),
            Outcome::OtherGeneration("0123456789abcdef".into())
        );
        assert_eq!(answer(false, &ours).outcome(&ours), Outcome::NotLive);
    }
}
