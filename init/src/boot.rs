//! The boot steps, in order: mount the basics, read the kernel command line, load the modules, bring up the
//! network, check the payload's config and mount its state folder. Each step that fails names itself in a
//! [`BootError`], which the console prints with what to do; `retry` on the console runs the steps again.

use super::{cmdline, console, dhcp, net, raise, say, system, Payload};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a successful boot leaves for the agent.
pub(crate) struct Booted {
    /// The agent's config file (the kernel command line may name another than the image's).
    pub config_path: String,
    /// The state folder the config names, mounted.
    pub state_dir: PathBuf,
    /// The agent's log level from the kernel command line.
    pub log: Option<String>,
}

/// Which boot step failed, and why.
#[derive(Debug)]
pub enum BootError {
    /// Mounting /proc, /sys, /dev, /run or /tmp.
    Mount(std::io::Error),
    /// Reading /proc/cmdline.
    CommandLine(std::io::Error),
    /// A malformed `ip=` or `polaredge.*` kernel parameter.
    Params(cmdline::ParamError),
    /// Listing or loading the image's kernel modules.
    Modules(std::io::Error),
    /// Bringing up loopback or the interface, or asking DHCP.
    Network(std::io::Error),
    /// The payload refused its config.
    Config(Box<dyn std::error::Error + Send + Sync>),
    /// Mounting the state folder.
    State(std::io::Error),
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootError::Mount(e) => write!(f, "mounting the system folders: {e}"),
            BootError::CommandLine(e) => write!(f, "reading /proc/cmdline: {e}"),
            BootError::Params(e) => write!(f, "{e}; fix the boot loader's kernel command line"),
            BootError::Modules(e) => write!(f, "loading kernel modules: {e}"),
            BootError::Network(e) => write!(f, "network: {e}"),
            BootError::Config(e) => write!(
                f,
                "{e}\n  the image's agent config is broken: rebuild the image with a config that \
                 `polaredge-agent check` accepts"
            ),
            BootError::State(e) => write!(f, "state folder: {e}"),
        }
    }
}

impl std::error::Error for BootError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BootError::Mount(e)
            | BootError::CommandLine(e)
            | BootError::Modules(e)
            | BootError::Network(e)
            | BootError::State(e) => Some(e),
            BootError::Params(e) => Some(e),
            BootError::Config(e) => Some(e.as_ref()),
        }
    }
}

/// Runs the boot steps; `started` is when /init started (the console lines say how long each step took).
pub(crate) fn boot(payload: &dyn Payload, started: Instant) -> Result<Booted, BootError> {
    let at = || started.elapsed().as_millis();
    system::mount_basics().map_err(BootError::Mount)?;
    // The kernel gives PID 1 a limit of 1,024 open files; every public connection holds two sockets at the edge.
    let open_files = tunnel::driver::raise_open_files_limit(Some(system::OPEN_FILES_LIMIT));
    say(&format!("{:>4} ms  open-files limit {open_files}", at()));
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(BootError::CommandLine)?;
    let params = cmdline::BootParams::parse(&cmdline).map_err(BootError::Params)?;
    let modules = system::module_list(&params.modules).map_err(BootError::Modules)?;
    for module in &modules {
        system::load_module(module).map_err(BootError::Modules)?;
    }
    say(&format!("{:>4} ms  loaded modules: {}", at(), modules.join(" ")));
    bring_up_network(&params.ip, started).map_err(BootError::Network)?;
    let state_dir = payload.state_dir(Path::new(&params.config)).map_err(BootError::Config)?;
    let state = system::mount_state(&state_dir, params.state_device.as_deref()).map_err(BootError::State)?;
    say(&format!("{:>4} ms  state {} on {state}", at(), state_dir.display()));
    let buttons = console::spawn_power_button(|| raise(rustix::process::Signal::USR2));
    if buttons > 0 {
        say(&format!("watching {buttons} input device(s) for the power button"));
    }
    Ok(Booted { config_path: params.config, state_dir, log: params.log })
}

/// Loopback, then the interface `ip=` names: static, or by DHCP with a renewal thread.
fn bring_up_network(ip: &Option<cmdline::Network>, started: Instant) -> std::io::Result<()> {
    net::link_up("lo")?;
    match ip {
        Some(cmdline::Network::Static(ip)) => {
            net::configure(ip)?;
            net::resolver_and_hostname(ip)?;
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
            let lease = net::dhcp(device)?;
            let settings = dhcp_settings(device, hostname, &lease);
            net::configure(&settings)?;
            net::resolver_and_hostname(&settings)?;
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
    Ok(())
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
