//! Test hosts for interop tests and benchmarks: network namespaces joined by veth pairs, and Debian's
//! `wireguard-go` run inside one. Needs root and iproute2. Every resource is removed on drop, also when a test
//! panics, and names carry the process id so parallel runs do not collide.

use crate::keys::{PrivateKey, PublicKey};
use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Runs a command to completion; a non-zero exit becomes an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot run {program}: {e} (install it: see README's test command)"))
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Says what is missing for namespace tests, if anything.
pub fn missing_prerequisites(tools: &[&str]) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespace tests need root".into());
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(t).exists()))
        .collect();
    (!missing.is_empty()).then(|| format!("missing tools: {} (run the README's test command once)", missing.join(", ")))
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `pe<pid>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> io::Result<Netns> {
        let name = format!("pe{}-{tag}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]); // a leftover from a killed run
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Starts a command inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> io::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Moves the calling thread into the namespace: sockets it creates from now on live there.
    pub fn enter(&self) -> io::Result<()> {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.name))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<io::Result<T>>> {
        let path = format!("/var/run/netns/{}", self.name);
        Ok(std::thread::spawn(move || {
            let file = std::fs::File::open(path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(f())
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair: `a_addr` and `b_addr` are CIDRs such as `172.30.0.1/30`.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> io::Result<()> {
    let id = std::process::id() % 100_000;
    let (a_if, b_if) = (format!("pe{id}a"), format!("pe{id}b"));
    run("ip", &["link", "add", &a_if, "netns", a.name(), "type", "veth", "peer", "name", &b_if, "netns", b.name()])?;
    for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        ns.exec("ip", &["addr", "add", addr, "dev", ifname])?;
        ns.exec("ip", &["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// A `wireguard-go` interface inside a namespace, configured with `wg`. Killed on drop.
pub struct WireguardGo {
    child: Child,
    ns: String,
    iface: String,
}

/// What a [`WireguardGo`] interface is set up with.
pub struct WireguardGoConfig<'a> {
    /// Interface name; must be unique across namespaces (control sockets share /var/run/wireguard).
    pub iface: &'a str,
    /// Its private key.
    pub private_key: &'a PrivateKey,
    /// Its UDP port.
    pub listen_port: u16,
    /// Its tunnel address as a CIDR, e.g. `10.88.0.2/30`.
    pub address: &'a str,
    /// The one peer.
    pub peer: &'a PublicKey,
    /// The peer's AllowedIPs, e.g. `10.88.0.1/32`.
    pub peer_allowed_ips: &'a str,
    /// The peer's endpoint, if known.
    pub peer_endpoint: Option<SocketAddr>,
    /// Persistent keepalive towards the peer, in seconds.
    pub keepalive: Option<u16>,
}

impl WireguardGo {
    /// Starts `wireguard-go -f` in `ns` and configures it.
    pub fn start(ns: &Netns, config: &WireguardGoConfig) -> io::Result<WireguardGo> {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", config.iface));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "wireguard-go", "-f", config.iface])
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let sock = format!("/var/run/wireguard/{}.sock", config.iface);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::path::Path::new(&sock).exists() {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("wireguard-go exited at start: {status}")));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other("wireguard-go did not create its control socket within 10 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let wg = WireguardGo { child, ns: ns.name().to_string(), iface: config.iface.to_string() };
        let key_file = std::env::temp_dir().join(format!("{}-{}.key", config.iface, std::process::id()));
        std::fs::write(&key_file, config.private_key.to_string())?;
        let port = config.listen_port.to_string();
        let peer = config.peer.to_string();
        let endpoint = config.peer_endpoint.map(|e| e.to_string());
        let keepalive = config.keepalive.map(|k| k.to_string());
        let key_path = key_file.to_string_lossy().to_string();
        let mut args = vec!["set", config.iface, "private-key", &key_path, "listen-port", &port, "peer", &peer];
        args.extend(["allowed-ips", config.peer_allowed_ips]);
        if let Some(e) = &endpoint {
            args.extend(["endpoint", e]);
        }
        if let Some(k) = &keepalive {
            args.extend(["persistent-keepalive", k]);
        }
        let set = ns.exec("wg", &args);
        let _ = std::fs::remove_file(&key_file);
        set?;
        ns.exec("ip", &["addr", "add", config.address, "dev", config.iface])?;
        ns.exec("ip", &["link", "set", config.iface, "mtu", "1420", "up"])?;
        Ok(wg)
    }

    /// Adds another peer to the interface.
    pub fn add_peer(&self, peer: &PublicKey, allowed_ips: &str, endpoint: Option<SocketAddr>) -> io::Result<()> {
        let peer = peer.to_string();
        let endpoint = endpoint.map(|e| e.to_string());
        let mut wg =
            vec!["netns", "exec", &self.ns, "wg", "set", &self.iface, "peer", &peer, "allowed-ips", allowed_ips];
        if let Some(e) = &endpoint {
            wg.extend(["endpoint", e]);
        }
        run("ip", &wg)
    }

    /// The process id of `wireguard-go` (for CPU and memory readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The TUN interface goes with the process; make sure, so a restart can reuse the name.
        let _ = run("ip", &["-n", &self.ns, "link", "del", &self.iface]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface));
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two tunnels on loopback, as POLAREDGE pairs them: the "agent" listens on an ephemeral 127.0.0.1 port with
/// `agent_addresses` inside; the "client" (`client_addresses`) knows its endpoint and keeps the session alive.
/// Returns once the client's handshake reached the agent, so either side can open streams. Needs no root.
pub fn loopback_pair(
    agent_addresses: Vec<crate::Cidr>,
    client_addresses: Vec<crate::Cidr>,
) -> io::Result<(crate::Tunnel, crate::Tunnel)> {
    loopback_pair_with(agent_addresses, client_addresses, |_| {})
}

/// [`loopback_pair`] with both ends' configurations adjusted by `tune` (limits, tuning) before they start.
pub fn loopback_pair_with(
    agent_addresses: Vec<crate::Cidr>,
    client_addresses: Vec<crate::Cidr>,
    tune: impl Fn(&mut crate::CoreConfig),
) -> io::Result<(crate::Tunnel, crate::Tunnel)> {
    use crate::{CoreConfig, Tunnel, TunnelConfig};
    let (agent_key, client_key) = (PrivateKey::generate(), PrivateKey::generate());
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut agent_core = CoreConfig::new(agent_key.clone(), client_key.public_key(), agent_addresses);
    tune(&mut agent_core);
    let agent = Tunnel::start(TunnelConfig { core: agent_core, listen: loopback })?;
    let mut client_core = CoreConfig {
        endpoint: Some(agent.local_addr()),
        persistent_keepalive: Some(25),
        ..CoreConfig::new(client_key, agent_key.public_key(), client_addresses)
    };
    tune(&mut client_core);
    let client = Tunnel::start(TunnelConfig { core: client_core, listen: loopback })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while agent.status()?.peer.endpoint.is_none() {
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no handshake between the loopback tunnels in 5 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok((agent, client))
}
