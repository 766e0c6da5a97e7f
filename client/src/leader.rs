//! Leader election on a coordination.k8s.io Lease, so two replicas can run and only the leader holds the
//! tunnels. [`decide`] is the policy (pure); [`elect`] drives it against the API.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
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

/// How long a leader may go without a successful renewal before it steps down: well before a standby, which
/// waits the Lease's whole duration from the last change it saw, can take over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

fn spec(me: &str, duration: Duration, now: Timestamp, acquired: Option<MicroTime>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        ..Default::default()
    }
}

/// How often a standby reads the Lease.
pub const STANDBY_LOOK: Duration = Duration::from_secs(2);

/// Blocks until this replica holds the Lease, then keeps renewing it in the background; `lost` is called if
/// it is ever lost (the caller exits: a restarted replica comes back as a follower).
pub async fn elect(
    client: kube::Client,
    namespace: &str,
    name: &str,
    me: String,
    duration: Duration,
    lost: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let retry = duration / 3;
    // A standby looks often (as client-go's 2 s retry period), so a Lease its leader released is taken at once.
    let look = retry.min(STANDBY_LOOK);
    let mut following = None;
    let mut seen = Seen::default();
    loop {
        match step(&api, name, &me, duration, &mut seen).await {
            Ok(Decision::Follow(holder)) => {
                if following.as_ref() != Some(&holder) {
                    log::info!("leader election: {holder} leads; standing by");
                    following = Some(holder);
                }
            }
            Ok(_) => break,
            Err(e) => log::warn!("leader election: {e}"),
        }
        tokio::time::sleep(look).await;
    }
    log::info!("leader election: this replica ({me}) leads");
    let name = name.to_string();
    // Stopped (a rollout, a drain, an upgrade): hand the Lease over at once instead of letting the standby wait
    // for it to expire.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = terminate.recv() => {
                    match release(&api, &name, &me).await {
                        Ok(()) => log::info!("SIGTERM: released the Lease {name}; the standby takes over now"),
                        Err(e) => log::warn!("SIGTERM: cannot release the Lease {name} ({e}); the standby takes over when it expires"),
                    }
                    std::process::exit(0);
                }
            }
            match step(&api, &name, &me, duration, &mut seen).await {
                Ok(Decision::Follow(holder)) => {
                    log::error!("leader election: lost the lease to {holder}");
                    break;
                }
                Ok(_) => renewed = Instant::now(),
                Err(e) => {
                    log::warn!("leader election: renewing failed: {e}");
                    // Step down before a standby could take over (it waits the whole duration from the last
                    // change it saw).
                    if renewed.elapsed() >= renew_deadline(duration) {
                        log::error!(
                            "leader election: no renewal for {:?} (deadline {:?}); stepping down",
                            renewed.elapsed(),
                            renew_deadline(duration)
                        );
                        break;
                    }
                }
            }
        }
        lost();
    });
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

/// One read-decide-write round. Writes carry the resourceVersion read, so two replicas cannot both win.
async fn step(api: &Api<Lease>, name: &str, me: &str, duration: Duration, seen: &mut Seen) -> Result<Decision, String> {
    let current = api.get_opt(name).await.map_err(|e| format!("reading Lease {name}: {e}"))?;
    let now = Timestamp::now();
    let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), me, Instant::now(), seen);
    match (&decision, current) {
        (Decision::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                spec: Some(spec(me, duration, now, None)),
            };
            api.create(&PostParams::default(), &lease).await.map_err(|e| format!("creating Lease {name}: {e}"))?;
        }
        (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
            let acquired = match decision {
                Decision::Renew => lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                _ => None,
            };
            lease.spec = Some(spec(me, duration, now, acquired));
            api.replace(name, &PostParams::default(), &lease)
                .await
                .map_err(|e| format!("updating Lease {name}: {e}"))?;
        }
        _ => {}
    }
    Ok(decision)
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
    fn a_leader_steps_down_well_before_a_standby_may_take_over() {
        assert_eq!(renew_deadline(Duration::from_secs(15)), Duration::from_secs(10));
    }
}
