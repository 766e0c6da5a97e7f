//! Runs Traefik as a child: starts it with the generated static config, folds its output into the agent's
//! log, restarts it with backoff when it dies, and stops it gracefully (SIGTERM, then SIGKILL after 12 s).

use rustix::process::{Pid, Signal};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A run shorter than this counts as a crash loop and doubles the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Traefik's own grace period is 10 s.
const STOP_GRACE: Duration = Duration::from_secs(12);

/// What the supervisor knows about Traefik, for /status and /metrics.
#[derive(Debug, Clone, Default)]
pub struct TraefikState {
    /// Process id while running.
    pub pid: Option<u32>,
    /// When the current process started.
    pub started: Option<Instant>,
    /// Restarts after the first start.
    pub restarts: u64,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// Handle of the supervising thread.
pub struct Supervisor {
    state: Arc<Mutex<TraefikState>>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts Traefik now, with `env` added to its environment, and keeps it running.
    pub fn start(binary: PathBuf, static_config: PathBuf, env: Vec<(String, String)>) -> Supervisor {
        let state = Arc::new(Mutex::new(TraefikState::default()));
        let (stop, stopped) = mpsc::channel::<()>();
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("traefik-supervisor".into())
            .spawn(move || {
                let mut backoff = Duration::from_secs(1);
                let mut first = true;
                loop {
                    let started = Instant::now();
                    let mut command = Command::new(&binary);
                    command
                        .arg(format!("--configFile={}", static_config.display()))
                        .envs(env.iter().map(|(k, v)| (k, v)))
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped());
                    // SAFETY: only async-signal-safe calls (prctl, sigprocmask) between fork and exec. If the agent dies
                    // without stopping Traefik (SIGKILL), Traefik dies too instead of holding the ports.
                    unsafe {
                        command.pre_exec(|| {
                            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                            // The agent blocks SIGTERM/SIGINT to take them synchronously; Traefik must not
                            // inherit that, or it could not be stopped gracefully.
                            nix::sys::signal::SigSet::empty().thread_set_mask().map_err(std::io::Error::from)?;
                            Ok(())
                        });
                    }
                    let exit = match command.spawn() {
                        Ok(mut child) => {
                            {
                                let mut s = shared.lock().unwrap();
                                s.pid = Some(child.id());
                                s.started = Some(started);
                                if !first {
                                    s.restarts += 1;
                                }
                            }
                            first = false;
                            fold_output(child.stdout.take());
                            fold_output(child.stderr.take());
                            match child.wait() {
                                Ok(status) => status.to_string(),
                                Err(e) => format!("wait failed: {e}"),
                            }
                        }
                        Err(e) => format!("cannot start {}: {e}", binary.display()),
                    };
                    {
                        let mut s = shared.lock().unwrap();
                        s.pid = None;
                        s.last_exit = Some(exit.clone());
                    }
                    backoff = if started.elapsed() >= HEALTHY_RUN { Duration::from_secs(1) } else { backoff };
                    match stopped.recv_timeout(Duration::ZERO) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    log::warn!("traefik exited ({exit}); restarting in {backoff:?}");
                    match stopped.recv_timeout(backoff) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            })
            .expect("spawning a thread");
        Supervisor { state, stop, thread: Some(thread) }
    }

    /// A copy of the current state.
    pub fn state(&self) -> TraefikState {
        self.state.lock().unwrap().clone()
    }

    /// Kills the running process at once (SIGKILL works on a hung or stopped process too); the supervisor
    /// starts a new one after its backoff.
    pub fn kill(&self) {
        if let Some(pid) = self.state.lock().unwrap().pid.and_then(|p| Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }

    /// Stops Traefik gracefully and the supervisor with it.
    pub fn stop(&mut self) {
        let _ = self.stop.send(());
        let pid = self.state.lock().unwrap().pid;
        if let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + STOP_GRACE;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !thread.is_finished() {
            if let Some(pid) = self.state.lock().unwrap().pid.and_then(|p| Pid::from_raw(p as i32)) {
                log::warn!("traefik did not stop within {STOP_GRACE:?}; killing it");
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        let _ = thread.join();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a child's output into the agent's log, line by line, prefixed with `traefik:`.
fn fold_output(stream: Option<impl std::io::Read + Send + 'static>) {
    let Some(stream) = stream else { return };
    let _ = std::thread::Builder::new().name("traefik-log".into()).spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            eprintln!("traefik: {line}");
        }
    });
}
