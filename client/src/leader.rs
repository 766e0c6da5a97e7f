//! Leader election on a coordination.k8s.io Lease, so two replicas can run and only the leader holds the
//! tunnels. [`decide`] is the policy (pure); [`elect`] drives it against the API.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;

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

/// The policy: hold the Lease if it is free, ours, or expired (holder silent for longer than its duration).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else { return Decision::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    match renewed {
        Some(renewed) if holder.is_empty() || now.as_second() - renewed.as_second() > duration => Decision::TakeOver,
        None => Decision::TakeOver,
        Some(_) => Decision::Follow(holder),
    }
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
    loop {
        match step(&api, name, &me, duration).await {
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
        let mut failures = 0;
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
            match step(&api, &name, &me, duration).await {
                Ok(Decision::Follow(holder)) => {
                    log::error!("leader election: lost the lease to {holder}");
                    break;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    log::warn!("leader election: renewing failed: {e}");
                    // Past the lease duration without a renewal another replica may lead: step down.
                    if retry * failures >= duration {
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
async fn step(api: &Api<Lease>, name: &str, me: &str, duration: Duration) -> Result<Decision, String> {
    let current = api.get_opt(name).await.map_err(|e| format!("reading Lease {name}: {e}"))?;
    let now = Timestamp::now();
    let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), me, now);
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

    fn lease(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(now.as_second() - renewed_secs_ago).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn free_own_fresh_and_expired_leases() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease("a", 3)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&lease("b", 3)), "a", now), Decision::Follow("b".into()));
        assert_eq!(decide(Some(&lease("b", 60)), "a", now), Decision::TakeOver);
        assert_eq!(decide(Some(&lease("", 1)), "a", now), Decision::TakeOver);
    }
}
