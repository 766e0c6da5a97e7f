//! Leader election on a coordination.k8s.io Lease, so several replicas can run and only the leader uploads
//! routes and writes status (and, when the replicas share one key, holds the tunnels). [`decide`] is the
//! policy (pure); [`elect`] drives it against the API.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Follow(String),
}

/// What a replica has seen of the Lease: its record (holder and renewTime as written by the holder) and when,
/// on this replica's own monotonic clock, that record last changed. Expiry is judged from that instant, never
/// by comparing another node's renewTime with the local wall clock (client-go's observed-time semantics), so
/// clock skew between nodes cannot make a live leader look expired.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    record: Option<(String, Option<Timestamp>)>,
    changed_at: Option<Instant>,
}

/// The policy: hold the Lease if it is free, ours, or its record has not changed for its whole duration since
/// this replica saw it change.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Instant, seen: &mut Seen) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0));
    if seen.record.as_ref() != Some(&record) {
        seen.record = Some(record);
        seen.changed_at = Some(now);
    }
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver; // released (a stopped leader)
    }
    let duration = Duration::from_secs(u64::from(spec.lease_duration_seconds.unwrap_or(15).max(1).unsigned_abs()));
    let unchanged_for = seen.changed_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
    if unchanged_for > duration {
        Decision::TakeOver
    } else {
        Decision::Follow(holder)
    }
}

/// The Lease record of `me` holding it. `acquired`: when we took it (renewals keep it); `transitions`: how many
/// times it changed hands, counting this one (our term, see `protocol::fencing`).
fn spec(me: &str, duration: Duration, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// The term a replica holds after `decision` on a Lease whose transition count was `transitions`: taking the
/// Lease over counts one more transition; creating it is the first term; renewing keeps the count.
pub fn term_after(decision: &Decision, transitions: Option<i32>) -> i32 {
    let transitions = transitions.unwrap_or(0).max(0);
    match decision {
        Decision::Create => 0,
        Decision::TakeOver => transitions.saturating_add(1),
        Decision::Renew | Decision::Follow(_) => transitions,
    }
}

/// What the leader shares with the send loops: its term (which every upload carries), and the highest term an
/// agent fenced it with, for the leader to settle.
#[derive(Debug, Default)]
pub struct Term {
    current: Mutex<Option<u64>>,
    fenced_by: Mutex<Option<u64>>,
    /// Wakes the leader task when a fence is reported, so it settles it at once.
    reported: tokio::sync::Notify,
}

impl Term {
    /// The term uploads carry; `None` without leader election.
    pub fn current(&self) -> Option<u64> {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, term: u64) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(term);
    }

    /// An agent refused our upload, or shows a higher term than ours: it obeys term `by`.
    pub fn fenced(&self, by: u64) {
        let mut fenced = self.fenced_by.lock().unwrap_or_else(|p| p.into_inner());
        *fenced = Some(fenced.map_or(by, |f| f.max(by)));
        self.reported.notify_one();
    }

    fn take_fenced(&self) -> Option<u64> {
        self.fenced_by.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a leader does when an agent fenced it with term `by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFenced {
    /// The API says we still hold the Lease: the agents saw a higher term than ours without a newer leader
    /// (the Lease was deleted and created again, counting from 0). Take term `by + 1` and go on.
    Advance(u64),
    /// Another replica holds the Lease, or we cannot ask the API: a newer leader exists. Stop serving.
    Stop(String),
}

/// The decision when fenced with `by`: `lease` is the Lease as the API shows it now (`Err`: unreachable).
pub fn on_fenced(by: u64, lease: Result<Option<&LeaseSpec>, &str>, me: &str) -> OnFenced {
    match lease {
        Ok(Some(spec)) if spec.holder_identity.as_deref() == Some(me) => OnFenced::Advance(by.saturating_add(1)),
        Ok(Some(spec)) => OnFenced::Stop(format!(
            "an agent follows term {by}, and the Lease is held by {}",
            spec.holder_identity.as_deref().unwrap_or("nobody")
        )),
        Ok(None) => OnFenced::Stop(format!("an agent follows term {by}, and the Lease is gone")),
        Err(e) => OnFenced::Stop(format!("an agent follows term {by}, and the API cannot confirm we lead ({e})")),
    }
}

/// How often a leader that cannot reach the API says it is still serving.
const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// How often a standby reads the Lease.
pub const STANDBY_LOOK: Duration = Duration::from_secs(2);

/// Blocks until this replica holds the Lease and sets its term in `term` (the Lease's transition count, which
/// its uploads carry: `protocol::fencing`); then keeps renewing it in the background, and settles the fences
/// the send loops report in `term` ([`on_fenced`]). `ended` is called once another replica holds the Lease
/// ([`Ended::Lost`]); the caller stops serving. SIGTERM is watched from the start: a standby returns
/// [`Elected::Terminated`] at once; a leader releases the Lease first (so a standby takes over at its next
/// look instead of at expiry), then calls `ended` with [`Ended::Terminated`], and the caller drains and exits.
///
/// A renewal that cannot reach the API does not end leadership: the data plane must not depend on the control
/// plane, and when nobody can reach the API nobody can take over either. If a standby can reach it and takes
/// the Lease meanwhile, its uploads carry a higher term; the agents obey the higher term, answer ours with
/// `fenced_by`, and we stop at our next upload or check.
pub async fn elect(
    client: kube::Client,
    lease: LeaseName<'_>,
    me: String,
    duration: Duration,
    term: Arc<Term>,
    ended: impl FnOnce(Ended) + Send + 'static,
) -> Result<Elected, String> {
    let api: Api<Lease> = Api::namespaced(client, lease.namespace);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    let mut holder =
        Holder { api, name: lease.name.to_string(), me, duration, retry: duration / 3, term, seen: Seen::default() };
    let Some(first) = holder.stand_by(&mut terminate).await else {
        return Ok(Elected::Terminated);
    };
    holder.term.set(first as u64);
    log::info!("leader election: this replica ({}) leads, term {first}", holder.me);
    tokio::spawn(async move {
        match holder.lead(&mut terminate).await {
            // Stopped (a rollout, a drain, an upgrade): the Lease was handed over at once instead of letting the
            // standby wait for it to expire.
            None => ended(Ended::Terminated),
            Some(reason) => {
                log::error!("leader election: lost the lease: {reason}");
                ended(Ended::Lost(reason));
            }
        }
    });
    Ok(Elected::Leading)
}

/// One replica's side of the Lease.
struct Holder {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
    /// How often a leader renews (a third of the Lease's duration).
    retry: Duration,
    term: Arc<Term>,
    seen: Seen,
}

impl Holder {
    /// Looks at the Lease until it is ours: the term we lead with, or none after SIGTERM.
    async fn stand_by(&mut self, terminate: &mut tokio::signal::unix::Signal) -> Option<i32> {
        // A standby looks often (as client-go's 2 s retry period), so a Lease its leader released is taken at once.
        let look = self.retry.min(STANDBY_LOOK);
        let mut following = None;
        loop {
            match within(step(&self.api, &self.name, &self.me, self.duration, &mut self.seen)).await {
                Ok((Decision::Follow(holder), _)) => {
                    if following.as_ref() != Some(&holder) {
                        log::info!("leader election: {holder} leads; standing by");
                        following = Some(holder);
                    }
                }
                Ok((_, term)) => return Some(term),
                Err(e) => log::warn!("leader election: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(look) => {}
                _ = terminate.recv() => {
                    log::info!("SIGTERM while standing by");
                    return None;
                }
            }
        }
    }

    /// Renews the Lease until SIGTERM (it is released: none) or until leadership is lost (why).
    async fn lead(&mut self, terminate: &mut tokio::signal::unix::Signal) -> Option<String> {
        let mut outage = Outage { since: None, last_log: Instant::now() };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = self.term.reported.notified() => {}
                _ = terminate.recv() => {
                    let name = &self.name;
                    match within(release(&self.api, name, &self.me)).await {
                        Ok(()) => log::info!("SIGTERM: released the Lease {name}; the standby takes over now"),
                        Err(e) => log::warn!("SIGTERM: cannot release the Lease {name} ({e}); the standby takes over when it expires"),
                    }
                    return None;
                }
            }
            if let Err(reason) = self.answer_fencing().await {
                return Some(reason);
            }
            match within(step(&self.api, &self.name, &self.me, self.duration, &mut self.seen)).await {
                Ok((Decision::Follow(holder), _)) => {
                    return Some(format!("the API says {holder} holds the Lease {}", self.name))
                }
                Ok(_) => {
                    if let Some(since) = outage.since.take() {
                        log::info!("leader election: the API is back after {:?}; still leading", since.elapsed());
                    }
                }
                Err(e) => outage.log(&e, self.retry),
            }
        }
    }

    /// An agent reported a term at least ours: raise ours past it if the Lease is still ours, else give up
    /// (why).
    async fn answer_fencing(&self) -> Result<(), String> {
        let Some(by) = self.term.take_fenced().filter(|&by| Some(by) >= self.term.current()) else {
            return Ok(());
        };
        let lease = within(async { self.api.get_opt(&self.name).await.map_err(|e| e.to_string()) }).await;
        let spec = lease.as_ref().map(|l| l.as_ref().and_then(|l| l.spec.as_ref())).map_err(String::as_str);
        match on_fenced(by, spec, &self.me) {
            OnFenced::Advance(next) => match within(advance(&self.api, &self.name, &self.me, next)).await {
                Ok(()) => {
                    log::warn!(
                        "leader election: an agent followed term {by} although we lead (the Lease was made again?); \
                         our term is now {next}"
                    );
                    self.term.set(next);
                    Ok(())
                }
                Err(e) => Err(format!("an agent follows term {by}, and raising ours failed: {e}")),
            },
            OnFenced::Stop(reason) => Err(reason),
        }
    }
}

/// A leader that cannot reach the API keeps leading; it says so at once, then every [`OUTAGE_LOG_INTERVAL`].
struct Outage {
    since: Option<Instant>,
    last_log: Instant,
}

impl Outage {
    fn log(&mut self, error: &str, retry: Duration) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.last_log.elapsed() >= OUTAGE_LOG_INTERVAL || since.elapsed() < retry {
            self.last_log = Instant::now();
            log::warn!(
                "leader election: cannot renew the Lease for {:?} ({error}); still serving (the agents fence us if \
                 another replica takes over)",
                since.elapsed()
            );
        }
    }
}

/// `call`, failed if the API does not answer within [`crate::kube_api::CALL_LIMIT`] (a dead connection must
/// not stop the renewal loop, which also settles fences and SIGTERM).
async fn within<T>(call: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    let limit = crate::kube_api::CALL_LIMIT;
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| Err(format!("no answer from the API within {limit:?}")))
}

/// Which Lease the replicas compete for.
#[derive(Debug, Clone, Copy)]
pub struct LeaseName<'a> {
    /// The Lease's namespace (the client's own).
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
}

/// How a leadership won by [`elect`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Another replica holds the Lease (the reason says how we know); the caller stops serving.
    Lost(String),
    /// SIGTERM; the Lease was released (or could not be); the caller drains and exits.
    Terminated,
}

/// How [`elect`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elected {
    /// This replica leads (and keeps renewing in the background).
    Leading,
    /// SIGTERM came before it led.
    Terminated,
}

/// Sets the Lease's transition count to `term`, if we still hold it (resourceVersion-guarded).
async fn advance(api: &Api<Lease>, name: &str, me: &str, term: u64) -> Result<(), String> {
    let mut lease = api.get_opt(name).await.map_err(|e| format!("reading Lease {name}: {e}"))?.ok_or("no Lease")?;
    let spec = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(me)).ok_or("not ours any more")?;
    spec.lease_transitions = Some(i32::try_from(term).map_err(|_| format!("term {term} is too large"))?);
    api.replace(name, &PostParams::default(), &lease).await.map_err(|e| format!("updating Lease {name}: {e}"))?;
    Ok(())
}

/// Gives the Lease up if this replica holds it: no holder, so a standby takes it at its next look. The write
/// carries the resourceVersion read, so a Lease someone else took meanwhile is left alone.
pub async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), String> {
    let Some(mut lease) = api.get_opt(name).await.map_err(|e| format!("reading Lease {name}: {e}"))? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(me)) else { return Ok(()) };
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(name, &PostParams::default(), &lease).await.map_err(|e| format!("releasing Lease {name}: {e}"))?;
    Ok(())
}

/// One read-decide-write round: the decision and the term it leaves us with. Writes carry the resourceVersion
/// read, so two replicas cannot both win.
async fn step(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    duration: Duration,
    seen: &mut Seen,
) -> Result<(Decision, i32), String> {
    let current = api.get_opt(name).await.map_err(|e| format!("reading Lease {name}: {e}"))?;
    let now = Timestamp::now();
    let current_spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(current_spec, me, Instant::now(), seen);
    let term = term_after(&decision, current_spec.and_then(|s| s.lease_transitions));
    match (&decision, current) {
        (Decision::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                spec: Some(spec(me, duration, now, None, term)),
            };
            api.create(&PostParams::default(), &lease).await.map_err(|e| format!("creating Lease {name}: {e}"))?;
        }
        (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
            let acquired = match decision {
                Decision::Renew => lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                _ => None,
            };
            lease.spec = Some(spec(me, duration, now, acquired, term));
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map_err(|e| format!("updating Lease {name}: {e}"))?;
        }
        _ => {}
    }
    Ok((decision, term))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Lease as another node wrote it: its renewTime is on that node's clock, which may be far off ours.
    fn lease(holder: &str, renew_time_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renew_time_secs).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn free_own_and_released_leases() {
        let (now, mut seen) = (Instant::now(), Seen::default());
        assert_eq!(decide(None, "a", now, &mut seen), Decision::Create);
        assert_eq!(decide(Some(&lease("a", 1_000)), "a", now, &mut seen), Decision::Renew);
        assert_eq!(decide(Some(&lease("", 1_000)), "a", now, &mut seen), Decision::TakeOver);
    }

    #[test]
    fn expiry_is_judged_on_the_local_clock_from_the_last_change_seen_whatever_the_holders_clock_says() {
        let t0 = Instant::now();
        let mut seen = Seen::default();
        // A renewTime from a clock a year behind ours: a wall-clock comparison would call it long expired.
        let stale_looking = lease("b", 1_700_000_000 - 365 * 86_400);
        assert_eq!(decide(Some(&stale_looking), "a", t0, &mut seen), Decision::Follow("b".into()));
        // The holder keeps renewing: each change restarts the wait.
        let renewed = lease("b", 1_700_000_000 - 365 * 86_400 + 5);
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(decide(Some(&renewed), "a", t10, &mut seen), Decision::Follow("b".into()));
        assert_eq!(decide(Some(&renewed), "a", t10 + Duration::from_secs(15), &mut seen), Decision::Follow("b".into()));
        // Unchanged for longer than its 15 s duration since we saw it change: expired.
        assert_eq!(decide(Some(&renewed), "a", t10 + Duration::from_secs(16), &mut seen), Decision::TakeOver);
        // A renewTime from a clock a year ahead does not keep a dead holder alive either.
        let mut seen = Seen::default();
        let ahead = lease("c", 1_700_000_000 + 365 * 86_400);
        assert_eq!(decide(Some(&ahead), "a", t0, &mut seen), Decision::Follow("c".into()));
        assert_eq!(decide(Some(&ahead), "a", t0 + Duration::from_secs(16), &mut seen), Decision::TakeOver);
    }

    #[test]
    fn each_change_of_hands_is_a_new_term_and_renewals_keep_it() {
        assert_eq!(term_after(&Decision::Create, None), 0);
        assert_eq!(term_after(&Decision::TakeOver, None), 1);
        assert_eq!(term_after(&Decision::TakeOver, Some(4)), 5);
        assert_eq!(term_after(&Decision::Renew, Some(5)), 5);
        assert_eq!(term_after(&Decision::TakeOver, Some(-3)), 1, "a garbled count does not go backwards");
    }

    #[test]
    fn a_fenced_leader_goes_on_only_if_the_api_says_it_still_leads() {
        assert_eq!(on_fenced(4, Ok(Some(&lease("a", 1))), "a"), OnFenced::Advance(5));
        assert!(matches!(on_fenced(4, Ok(Some(&lease("b", 1))), "a"), OnFenced::Stop(r) if r.contains("held by b")));
        assert!(matches!(on_fenced(4, Ok(None), "a"), OnFenced::Stop(_)));
        assert!(matches!(on_fenced(4, Err("timeout"), "a"), OnFenced::Stop(r) if r.contains("cannot confirm")));
        let term = Term::default();
        assert_eq!(term.current(), None);
        term.fenced(3);
        term.fenced(2);
        assert_eq!(term.take_fenced(), Some(3), "the highest fence counts");
        assert_eq!(term.take_fenced(), None);
    }
}
