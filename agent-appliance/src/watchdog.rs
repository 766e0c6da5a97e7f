//! The watchdog: every few seconds it checks that Traefik answers (ping on the admin entrypoint) and serves the
//! generation the routes file holds on a public entrypoint (the canary request), feeds what it saw to the
//! health judgement ([`crate::traefik::health`]) and carries out its verdict: kill a hung Traefik so the
//! supervisor starts it again, or write the routes file again when Traefik missed it. It also repairs a routes
//! file that was deleted or changed on disk, and marks the generation restored at start confirmed once
//! Traefik shows it.

use crate::agent::{since_init, Agent};
use crate::apply::Confirm;
use crate::traefik::api;
use crate::traefik::health::{Action, Observation, INTERVAL, PROBE_TIMEOUT};
use std::sync::Arc;

/// Starts the watchdog thread.
pub fn spawn(agent: Arc<Agent>) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            wait_or_confirm(&agent);
            round(&agent);
        })
        .expect("spawning a thread");
}

/// Sleeps one interval, or, while the generation restored at start is not confirmed yet, spends it polling
/// Traefik for it (so the log and /status say "live" as soon as Traefik serves it).
fn wait_or_confirm(agent: &Agent) {
    let unconfirmed = agent.view.lock().unwrap().live.clone().filter(|l| !l.confirmed).map(|l| (l.generation, l.write));
    let Some((generation, write)) = unconfirmed else {
        std::thread::sleep(INTERVAL);
        return;
    };
    if agent.api.shows(routes::Marker { generation: &generation, write }, INTERVAL)
        && agent.view.lock().unwrap().mark_confirmed(&generation)
    {
        log::info!("last good generation {generation} live: Traefik serves it{}", since_init());
    }
}

fn round(agent: &Agent) {
    let expected = agent.view.lock().unwrap().written.clone();
    let state = agent.supervisor.lock().unwrap().state();
    let running_for = state.started.filter(|_| state.pid.is_some()).map(|s| s.elapsed());
    let ping = match running_for {
        Some(_) => agent.api.ping(PROBE_TIMEOUT),
        None => Err("not running".into()),
    };
    // A Traefik that does not answer its ping fails the round already; the canary would only add a timeout.
    let canary = if ping.is_ok() { agent.canary.map(|addr| api::canary(addr, PROBE_TIMEOUT)) } else { None };
    let observation = Observation { running_for, ping, canary, expected };
    let (action, was_healthy, health) = {
        let mut health = agent.health.lock().unwrap();
        let was_healthy = health.healthy;
        (health.observe(&observation), was_healthy, health.clone())
    };
    if was_healthy && !health.healthy {
        log::warn!("traefik: {}", health.state);
    } else if !was_healthy && health.healthy {
        log::info!("traefik: healthy again");
    }
    match action {
        Action::Nothing => {}
        Action::Restart => {
            log::error!(
                "traefik (pid {}) {}; killing it so that the supervisor starts it again",
                state.pid.map_or("?".into(), |p| p.to_string()),
                health.state
            );
            agent.supervisor.lock().unwrap().kill();
        }
        Action::RewriteFile => {
            if let Ok(mut applier) = agent.applier.try_lock() {
                log::warn!("traefik {}; writing the routes file again", health.state);
                applier.touch_file();
            }
        }
    }
    // An upload in progress holds the applier and checks the file itself.
    if let Ok(mut applier) = agent.applier.try_lock() {
        applier.verify_file();
    }
}
