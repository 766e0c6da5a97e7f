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

pub mod cmdline;
mod console;
mod dhcp;
pub mod layout;
pub mod lifecycle;
mod net;
mod system;

use lifecycle::{Action, Lifecycle, Power};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// What init boots and supervises (the agent), as a typed interface.
pub trait Payload: Sync {
    /// The console banner's name and version, e.g. `polaredge-agent 0.1.0`.
    fn name(&self) -> String;
    /// Loads and checks the config at `config`; the state folder it names (init mounts the state disk there).
    fn state_dir(&self, config: &Path) -> Result<PathBuf, String>;
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

/// What a successful boot leaves for the agent.
struct Booted {
    config_path: String,
    state_dir: PathBuf,
    log: Option<String>,
}

fn boot(payload: &dyn Payload, started: Instant) -> Result<Booted, String> {
    system::mount_basics().map_err(|e| e.to_string())?;
    // The kernel gives PID 1 a limit of 1,024 open files; every public connection holds two sockets at the edge.
    let open_files = tunnel::driver::raise_open_files_limit(Some(system::OPEN_FILES_LIMIT));
    say(&format!("{:>4} ms  open-files limit {open_files}", started.elapsed().as_millis()));
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let params = cmdline::BootParams::parse(&cmdline)?;
    let modules = system::module_list(&params.modules).map_err(|e| e.to_string())?;
    for module in &modules {
        system::load_module(module).map_err(|e| e.to_string())?;
    }
    say(&format!("{:>4} ms  loaded modules: {}", started.elapsed().as_millis(), modules.join(" ")));
    net::link_up("lo").map_err(|e| e.to_string())?;
    match &params.ip {
        Some(cmdline::Network::Static(ip)) => {
            net::configure(ip).map_err(|e| e.to_string())?;
            net::resolver_and_hostname(ip).map_err(|e| e.to_string())?;
            let gateway = ip.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            say(&format!(
                "{:>4} ms  {} {}/{}{gateway}",
                started.elapsed().as_millis(),
                ip.device,
                ip.address,
                ip.prefix
            ));
        }
        Some(cmdline::Network::Dhcp { device, hostname }) => {
            let lease = net::dhcp(device).map_err(|e| e.to_string())?;
            let settings = dhcp_settings(device, hostname, &lease);
            net::configure(&settings).map_err(|e| e.to_string())?;
            net::resolver_and_hostname(&settings).map_err(|e| e.to_string())?;
            say(&format!(
                "{:>4} ms  {device} {}/{} via {} from DHCP server {} for {} s",
                started.elapsed().as_millis(),
                lease.address,
                lease.prefix,
                lease.router.map_or("-".into(), |r| r.to_string()),
                lease.server,
                lease.duration.as_secs()
            ));
            spawn_dhcp_renewal(device.clone(), hostname.clone(), lease);
        }
        None => say("no ip= on the kernel command line: only loopback is up"),
    }
    let state_dir = payload.state_dir(Path::new(&params.config)).map_err(|e| {
        format!("{e}\n  the image's agent config is broken: rebuild the image with a config that `polaredge-agent check` accepts")
    })?;
    let state = system::mount_state(&state_dir, params.state_device.as_deref()).map_err(|e| e.to_string())?;
    say(&format!("{:>4} ms  state {} on {state}", started.elapsed().as_millis(), state_dir.display()));
    let buttons = console::spawn_power_button(|| raise(rustix::process::Signal::USR2));
    if buttons > 0 {
        say(&format!("watching {buttons} input device(s) for the power button"));
    }
    Ok(Booted { config_path: params.config, state_dir, log: params.log })
}

fn dhcp_settings(device: &str, hostname: &Option<String>, lease: &dhcp::Lease) -> cmdline::Ipv4Settings {
    cmdline::Ipv4Settings {
        device: device.to_string(),
        address: lease.address,
        prefix: lease.prefix,
        gateway: lease.router,
        hostname: hostname.clone(),
        dns: lease.dns.clone(),
    }
}

/// Asks again at half the lease time (RFC 2131's T1) and applies a changed address; the route and name
/// servers follow. An unanswered renewal keeps the current settings and tries again a minute later.
fn spawn_dhcp_renewal(device: String, hostname: Option<String>, mut lease: dhcp::Lease) {
    let _ = std::thread::Builder::new().name("dhcp-renew".into()).spawn(move || loop {
        std::thread::sleep((lease.duration / 2).max(std::time::Duration::from_secs(60)));
        match net::dhcp(&device) {
            Ok(renewed) if renewed.address == lease.address && renewed.prefix == lease.prefix => lease = renewed,
            Ok(renewed) => {
                say(&format!("DHCP: {device} moves from {} to {}/{}", lease.address, renewed.address, renewed.prefix));
                let settings = dhcp_settings(&device, &hostname, &renewed);
                if let Err(e) = net::configure(&settings).and_then(|()| net::resolver_and_hostname(&settings)) {
                    say(&format!("DHCP: applying the new lease failed: {e}"));
                }
                lease = renewed;
            }
            Err(e) => {
                say(&format!("DHCP renewal failed ({e}); keeping {}", lease.address));
                lease.duration = std::time::Duration::from_secs(120);
            }
        }
    });
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
    // A panic must not take PID 1 down (that panics the kernel): print it and keep the machine inspectable.
    std::panic::set_hook(Box::new(|info| {
        say(&format!("BUG: {info}; the init cannot continue. Power the machine off or reset it."));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }));
    say(&format!("POLAREDGE appliance, {} as PID 1", payload.name()));
    // Every signal PID 1 acts on is blocked and taken with sigtimedwait; threads inherit the mask.
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
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of an immediate reboot.
    let _ = rustix::system::reboot(rustix::system::RebootCommand::CadOff);
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

    let mut lifecycle = Lifecycle::new();
    let mut booted: Option<Booted> = None;
    let mut agent: Option<u32> = None;
    let mut actions = match boot(payload, started) {
        Ok(b) => {
            booted = Some(b);
            lifecycle.boot(Instant::now())
        }
        Err(e) => {
            say(&format!("BOOT FAILED after {} ms: {e}", started.elapsed().as_millis()));
            rescue_hint();
            vec![]
        }
    };
    loop {
        while !actions.is_empty() {
            let now = Instant::now();
            let mut next = vec![];
            for action in actions.drain(..) {
                match action {
                    Action::Say(line) => say(&line),
                    Action::StartAgent => {
                        let Some(b) = &booted else { continue };
                        match start_agent(payload, b, started_ns) {
                            Ok(pid) => {
                                agent = Some(pid);
                                lifecycle.started(now);
                            }
                            Err(e) => next.extend(lifecycle.start_failed(now, &e)),
                        }
                    }
                    Action::StopAgent => signal_agent(agent, rustix::process::Signal::TERM),
                    Action::KillAgent => signal_agent(agent, rustix::process::Signal::KILL),
                    Action::Finish(power) => {
                        say(if power == Power::Off { "powering off" } else { "rebooting" });
                        let state_dir = booted.as_ref().map(|b| b.state_dir.clone()).unwrap_or_default();
                        system::finish(power, &state_dir);
                    }
                }
            }
            actions = next;
        }
        let timeout = lifecycle.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
        let signal = wait_signal(&set, timeout);
        let now = Instant::now();
        actions = match signal {
            None => lifecycle.poll(now),
            Some(libc::SIGCHLD) => {
                let mut out = vec![];
                for (pid, how) in system::reap() {
                    if Some(pid) == agent {
                        agent = None;
                        out.extend(lifecycle.exited(now, &how));
                    }
                }
                out
            }
            Some(libc::SIGTERM | libc::SIGUSR2 | libc::SIGPWR) => lifecycle.shutdown(now, Power::Off),
            Some(libc::SIGINT) => lifecycle.shutdown(now, Power::Reboot),
            Some(libc::SIGUSR1) if booted.is_none() => match boot(payload, started) {
                Ok(b) => {
                    booted = Some(b);
                    lifecycle.boot(now)
                }
                Err(e) => {
                    say(&format!("BOOT FAILED again: {e}"));
                    rescue_hint();
                    vec![]
                }
            },
            Some(_) => vec![],
        };
    }
}

fn start_agent(payload: &dyn Payload, booted: &Booted, started_ns: u128) -> Result<u32, String> {
    let mut command = payload.run(Path::new(&booted.config_path));
    command.env("PATH", "/usr/local/bin:/usr/bin:/bin").env(STARTED_ENV, started_ns.to_string());
    if let Some(level) = &booted.log {
        command.env("POLAREDGE_LOG", level);
    }
    // The child is reaped by the init loop's waitpid(-1), never through `Child::wait`.
    command.spawn().map(|child| child.id()).map_err(|e| format!("cannot start the agent: {e}"))
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
