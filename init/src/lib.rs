//! PID 1 of the appliance image (`/init` in the initramfs), linked into the agent's single binary: the agent
//! hands [`main`] a [`Payload`] (what to run, with which config, and what that config says) instead of
//! strings, and the image builder takes the paths init reads from [`layout`].
//!
//! Boot: mount /proc, /sys, /dev, /run, /tmp; read the kernel command line ([`cmdline`]); load the image's
//! kernel modules; bring up loopback and the interface, static or by DHCP ([`net`], [`dhcp`]); load and
//! check the agent's config; mount the state folder. Then PID 1 starts `polaredge-agent run` as its child and stays a small
//! supervisor ([`lifecycle`]): it reaps every orphan, restarts the agent if it dies, and on SIGTERM, SIGUSR2,
//! SIGPWR, the power button or the console's `poweroff` (SIGINT and `reboot` reboot) stops the agent — which
//! stops Traefik — then powers off. Keeping the agent in a child means a crash in it never panics the kernel,
//! and PID 1's reaping never races the supervisor's wait for Traefik.
//!
//! A failed boot step prints what failed and what to do on the console and leaves the console usable
//! (`retry`, `poweroff`, `reboot`); PID 1 never exits, so the kernel never panics.

mod boot;
pub mod cmdline;
mod console;
mod dhcp;
pub mod layout;
pub mod lifecycle;
mod net;
mod system;

pub use boot::BootError;
use boot::Booted;
use lifecycle::{Action, Lifecycle, Power};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What init boots and supervises (the agent), as a typed interface.
pub trait Payload: Sync {
    /// The console banner's name and version, e.g. `polaredge-agent 0.1.0`.
    fn name(&self) -> String;
    /// Loads and checks the config at `config`; the state folder it names (init mounts the state disk there).
    fn state_dir(&self, config: &Path) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>>;
    /// The command that runs the payload with `config` (init adds the environment and supervises it).
    fn run(&self, config: &Path) -> Command;
    /// The command that prints the running payload's status (the console's `status`).
    fn status(&self, config: &Path) -> Command;
}

/// Prints one line on the console (PID 1's stderr is /dev/console).
pub fn say(line: &str) {
    eprintln!("polaredge-init: {line}");
}

/// Nanoseconds on CLOCK_MONOTONIC, which the agent also reads to report its readiness relative to /init.
pub fn monotonic_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// Environment variable carrying the moment /init started (CLOCK_MONOTONIC ns) to the agent.
pub const STARTED_ENV: &str = "POLAREDGE_INIT_STARTED_NS";

/// True when this process is the system's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Sends `signal` to ourselves; PID 1's main thread takes it with sigtimedwait.
fn raise(signal: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
}

fn rescue_hint() {
    say(&format!("the console stays open; {}", console::HELP));
}

/// Runs as PID 1 forever: boot, supervise the payload, power off on request.
pub fn main(payload: &'static dyn Payload) -> ! {
    let started = Instant::now();
    let started_ns = monotonic_ns();
    install_panic_hook();
    say(&format!("POLAREDGE appliance, {} as PID 1", payload.name()));
    let signals = block_signals();
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of an immediate reboot.
    let _ = rustix::system::reboot(rustix::system::RebootCommand::CadOff);
    spawn_console(payload);

    let mut supervisor =
        Supervisor { payload, started, started_ns, lifecycle: Lifecycle::new(), booted: None, agent: None };
    let mut actions = supervisor.boot(started);
    loop {
        while !actions.is_empty() {
            actions = supervisor.perform(actions);
        }
        let timeout = supervisor.lifecycle.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
        let signal = wait_signal(&signals, timeout);
        actions = supervisor.on_signal(signal, Instant::now());
    }
}

/// A panic must not take PID 1 down (that panics the kernel): print it and keep the machine inspectable.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        say(&format!("BUG: {info}; the init cannot continue. Power the machine off or reset it."));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }));
}

/// Blocks every signal PID 1 acts on (threads inherit the mask); the main loop takes them with sigtimedwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGPWR]
        {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// The console's commands become signals to ourselves, so the main loop handles them in one place.
fn spawn_console(payload: &'static dyn Payload) {
    console::spawn_reader(move |command| match command {
        console::Command::Poweroff => raise(rustix::process::Signal::USR2),
        console::Command::Reboot => raise(rustix::process::Signal::INT),
        console::Command::Retry => raise(rustix::process::Signal::USR1),
        console::Command::Help => say(console::HELP),
        console::Command::Status => {
            // The agent's admin socket is named in its config, which the command line may have moved.
            let config = std::fs::read_to_string("/proc/cmdline")
                .ok()
                .and_then(|line| cmdline::BootParams::parse(&line).ok())
                .map_or_else(|| layout::AGENT_CONFIG.to_string(), |p| p.config);
            let _ = payload.status(Path::new(&config)).spawn();
        }
    });
}

/// PID 1's state between signals: the lifecycle's decisions and the I/O that carries them out.
struct Supervisor {
    payload: &'static dyn Payload,
    started: Instant,
    /// When /init started, for the agent's readiness report.
    started_ns: u128,
    lifecycle: Lifecycle,
    booted: Option<Booted>,
    agent: Option<u32>,
}

impl Supervisor {
    /// Runs the boot steps; a failure leaves the console open for `retry`.
    fn boot(&mut self, now: Instant) -> Vec<Action> {
        match boot::boot(self.payload, self.started) {
            Ok(booted) => {
                self.booted = Some(booted);
                self.lifecycle.boot(now)
            }
            Err(e) => {
                say(&format!("BOOT FAILED after {} ms: {e}", self.started.elapsed().as_millis()));
                rescue_hint();
                vec![]
            }
        }
    }

    /// Carries out `actions`; returns what the lifecycle decided in response.
    fn perform(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let now = Instant::now();
        let mut next = vec![];
        for action in actions {
            match action {
                Action::Say(line) => say(&line),
                Action::StartAgent => {
                    let Some(booted) = &self.booted else { continue };
                    match start_agent(self.payload, booted, self.started_ns) {
                        Ok(pid) => {
                            self.agent = Some(pid);
                            self.lifecycle.started(now);
                        }
                        Err(e) => {
                            next.extend(self.lifecycle.start_failed(now, &format!("cannot start the agent: {e}")))
                        }
                    }
                }
                Action::StopAgent => signal_agent(self.agent, rustix::process::Signal::TERM),
                Action::KillAgent => signal_agent(self.agent, rustix::process::Signal::KILL),
                Action::Finish(power) => {
                    say(if power == Power::Off { "powering off" } else { "rebooting" });
                    let state_dir = self.booted.as_ref().map(|b| b.state_dir.clone()).unwrap_or_default();
                    system::finish(power, &state_dir);
                }
            }
        }
        next
    }

    /// What a signal (or the lifecycle's deadline, `None`) means now.
    fn on_signal(&mut self, signal: Option<libc::c_int>, now: Instant) -> Vec<Action> {
        match signal {
            None => self.lifecycle.poll(now),
            Some(libc::SIGCHLD) => {
                let mut out = vec![];
                for (pid, how) in system::reap() {
                    if Some(pid) == self.agent {
                        self.agent = None;
                        out.extend(self.lifecycle.exited(now, &how));
                    }
                }
                out
            }
            Some(libc::SIGTERM | libc::SIGUSR2 | libc::SIGPWR) => self.lifecycle.shutdown(now, Power::Off),
            Some(libc::SIGINT) => self.lifecycle.shutdown(now, Power::Reboot),
            Some(libc::SIGUSR1) if self.booted.is_none() => self.boot(now),
            Some(_) => vec![],
        }
    }
}

fn start_agent(payload: &dyn Payload, booted: &Booted, started_ns: u128) -> std::io::Result<u32> {
    let mut command = payload.run(Path::new(&booted.config_path));
    command.env("PATH", "/usr/local/bin:/usr/bin:/bin").env(STARTED_ENV, started_ns.to_string());
    if let Some(level) = &booted.log {
        command.env("POLAREDGE_LOG", level);
    }
    // The child is reaped by the init loop's waitpid(-1), never through `Child::wait`.
    command.spawn().map(|child| child.id())
}

fn signal_agent(agent: Option<u32>, signal: rustix::process::Signal) {
    if let Some(pid) = agent.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Waits for one of the blocked signals, or the timeout (`None`: forever).
fn wait_signal(set: &libc::sigset_t, timeout: Option<std::time::Duration>) -> Option<libc::c_int> {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: `set` and `ts` outlive the call; a null siginfo pointer is allowed.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), ts_ptr) };
    (signal > 0).then_some(signal)
}
