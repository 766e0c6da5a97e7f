//! The command line: a small hand-written parser (no dependency) and one function per command.

use crate::{admin, agent, config};
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "polaredge-agent: the POLAREDGE edge agent

usage: polaredge-agent <command> [options]

commands:
  init       write a config and keys, print what the cluster side needs
  run        run the agent (WireGuard, control API, Traefik, forwarders)
  check      validate the config, keys and Traefik binary, explaining each problem
  status     print the live state of a running agent
  install-traefik  download, verify and install the Traefik binary
  genkey     print a new WireGuard private key (like `wg genkey`)
  pubkey     read a private key on stdin, print its public key (like `wg pubkey`)

`polaredge-agent <command> --help` explains each command.";

const DEFAULT_CONFIG: &str = init::layout::AGENT_CONFIG;

struct Command {
    name: &'static str,
    help: &'static str,
    /// Options: name, whether it takes a value.
    options: &'static [(&'static str, bool)],
}

const COMMANDS: &[Command] = &[
    Command {
        name: "init",
        help: "usage: polaredge-agent init [--dir DIR] [--state-dir DIR] [--endpoint HOST:PORT] [--listen ADDR]
                            [--replicas N] [--force]

Writes DIR/agent.yaml (commented) and DIR/agent.key (mode 0600) with a fresh key pair, generates a key pair
for each client replica, and prints the agent's public key, the endpoint, the client's tunnel address and a
Kubernetes Secret manifest for the client.

  --dir DIR          where to write (default /etc/polaredge)
  --state-dir DIR    the agent's state folder (default /var/lib/polaredge)
  --endpoint H:P     the public address clients dial (default EDGE_PUBLIC_ADDRESS:51820, edit it)
  --listen ADDR      the UDP address to bind (default 0.0.0.0:51820)
  --replicas N       client replicas, each with a key of its own (default 2, as deploy/ runs; 1 to 16)
  --force            overwrite an existing config and key",
        options: &[
            ("--dir", true),
            ("--state-dir", true),
            ("--endpoint", true),
            ("--listen", true),
            ("--replicas", true),
            ("--force", false),
        ],
    },
    Command {
        name: "run",
        help: "usage: polaredge-agent run [--config FILE]

Runs the agent until SIGTERM or SIGINT: WireGuard on the configured UDP port, the control API inside the
tunnel only, Traefik as a supervised child, and forwarders. Serves the last good routes at once.

  --config FILE    default /etc/polaredge/agent.yaml",
        options: &[("--config", true)],
    },
    Command {
        name: "check",
        help: "usage: polaredge-agent check [--config FILE]

Validates the config file, the keys and the Traefik binary (and its sha256 when pinned), checks that the
public ports are free and the state folder is writable, and explains each problem. Exit code 1 on any.",
        options: &[("--config", true)],
    },
    Command {
        name: "status",
        help: "usage: polaredge-agent status [--config FILE | --socket PATH]

Prints the live state of the running agent (JSON) from its admin socket: live generation, Traefik process,
tunnel peer and handshake age, forwarders.",
        options: &[("--config", true), ("--socket", true)],
    },
    Command {
        name: "install-traefik",
        help: "usage: polaredge-agent install-traefik --url URL [--sha256 HEX] [--dest PATH]

Downloads Traefik over HTTPS (a release .tar.gz such as traefik_v3.7.15_linux_arm64.tar.gz, or a bare
binary), checks the download's SHA-256 (from Traefik's published checksums; strongly recommended), checks
that the binary runs here, and installs it atomically.

  --url URL        https:// URL (plain http only from loopback)
  --sha256 HEX     expected SHA-256 of the download
  --dest PATH      where to install (default /usr/local/bin/traefik)",
        options: &[("--url", true), ("--sha256", true), ("--dest", true)],
    },
    Command {
        name: "genkey",
        help: "usage: polaredge-agent genkey\n\nPrints a new WireGuard private key.",
        options: &[],
    },
    Command {
        name: "pubkey",
        help: "usage: polaredge-agent pubkey < private.key\n\nPrints the public key of the private key on stdin.",
        options: &[],
    },
];

/// Parses `--name value` / `--flag` options of a command.
fn parse(command: &Command, args: &[String]) -> Result<HashMap<&'static str, String>, String> {
    let mut out = HashMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg, None),
        };
        let Some(&(option, takes_value)) = command.options.iter().find(|(o, _)| *o == name) else {
            return Err(format!("{}: unknown option {arg:?}\n\n{}", command.name, command.help));
        };
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("{}: {option} needs a value", command.name))?
                }
            }
        } else {
            String::new()
        };
        out.insert(option, value);
        i += 1;
    }
    Ok(out)
}

/// Runs the command line; the exit code says how it went.
pub fn main(args: Vec<String>) -> ExitCode {
    let Some(name) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(name.as_str(), "--help" | "-h" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        eprintln!("polaredge-agent: unknown command {name:?}\n\n{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", command.help);
        return ExitCode::SUCCESS;
    }
    let options = match parse(command, rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("polaredge-agent {e}");
            return ExitCode::from(2);
        }
    };
    let config_path = || PathBuf::from(options.get("--config").map_or(DEFAULT_CONFIG, String::as_str));
    let result = match command.name {
        "init" => init(&options),
        "run" => config::load(&config_path()).map_err(String::from).and_then(agent::run),
        "check" => check(&config_path()),
        "status" => status(&options, &config_path()),
        "genkey" => {
            println!("{}", tunnel::PrivateKey::generate());
            Ok(())
        }
        "pubkey" => pubkey(),
        "install-traefik" => match options.get("--url") {
            None => Err("--url is required (see --help)".into()),
            Some(url) => {
                let dest = PathBuf::from(options.get("--dest").map_or("/usr/local/bin/traefik", String::as_str));
                crate::install::install_traefik(url, options.get("--sha256").map(String::as_str), &dest)
                    .map(|version| println!("installed Traefik {version} at {}", dest.display()))
            }
        },
        _ => unreachable!("every listed command is handled"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polaredge-agent {}: {e}", command.name);
            ExitCode::from(1)
        }
    }
}

fn pubkey() -> Result<(), String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read stdin: {e}"))?;
    let key: tunnel::PrivateKey = text.parse().map_err(|e| format!("{e}"))?;
    println!("{}", key.public_key());
    Ok(())
}

fn write_private(path: &Path, text: &str, force: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{} exists; use --force to overwrite it", path.display()),
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn init(options: &HashMap<&str, String>) -> Result<(), String> {
    let dir = PathBuf::from(options.get("--dir").map_or("/etc/polaredge", String::as_str));
    let state_dir = PathBuf::from(options.get("--state-dir").map_or("/var/lib/polaredge", String::as_str));
    let listen: SocketAddr = options
        .get("--listen")
        .map_or("0.0.0.0:51820", String::as_str)
        .parse()
        .map_err(|_| "--listen must be IP:port, e.g. 0.0.0.0:51820".to_string())?;
    let endpoint =
        options.get("--endpoint").cloned().unwrap_or_else(|| format!("EDGE_PUBLIC_ADDRESS:{}", listen.port()));
    let force = options.contains_key("--force");
    let replicas: usize = options
        .get("--replicas")
        .map_or(Ok(2), |n| n.parse())
        .ok()
        .filter(|n| (1..=protocol::defaults::MAX_REPLICAS).contains(n))
        .ok_or_else(|| format!("--replicas must be 1 to {}", protocol::defaults::MAX_REPLICAS))?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let agent_key = tunnel::PrivateKey::generate();
    let client_keys: Vec<tunnel::PrivateKey> = (0..replicas).map(|_| tunnel::PrivateKey::generate()).collect();
    let client_key = &client_keys[0];
    let public_keys: Vec<String> = client_keys.iter().map(|k| k.public_key().to_string()).collect();
    let config_path = dir.join("agent.yaml");
    write_private(&dir.join("agent.key"), &format!("{agent_key}\n"), force)?;
    write_private(&config_path, &config::template(&public_keys, &state_dir, "agent.key", listen), force)?;
    let replica_keys = if replicas > 1 {
        let lines: Vec<String> = client_keys.iter().map(|k| format!("    {k}")).collect();
        format!("  replica-keys: |\n{}\n", lines.join("\n"))
    } else {
        String::new()
    };
    println!(
        "Wrote {config} and {key} (mode 0600).

Agent public key:   {agent_public}
Agent endpoint:     {endpoint}{hint}
Client tunnel addr: {client_cidr} (agent: {agent_address})

In the cluster, in this order: the Namespace (kubectl apply -f deploy/namespace.yaml), then this Secret
(it holds the client's private key; keep it out of git), then the client (kubectl apply -k deploy/):

apiVersion: v1
kind: Secret
metadata:
  name: polaredge-client
  namespace: polaredge
type: Opaque
stringData:
  private-key: \"{client_private}\"
  agent-public-key: \"{agent_public}\"
  agent-endpoint: \"{endpoint}\"
  client-address: \"{client_cidr}\"
  agent-address: \"{agent_address}\"
{replica_keys}
Then: polaredge-agent check --config {config} && polaredge-agent run --config {config}",
        config = config_path.display(),
        key = dir.join("agent.key").display(),
        agent_public = agent_key.public_key(),
        client_private = client_key,
        client_cidr = protocol::defaults::client_cidr(),
        agent_address = protocol::defaults::AGENT_ADDRESS,
        hint = if options.contains_key("--endpoint") { "" } else { "   <- replace with this host's public address" },
    );
    Ok(())
}

fn check(path: &Path) -> Result<(), String> {
    let mut failures = 0;
    let mut report = |what: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok    {what}: {detail}"),
        Err(e) => {
            failures += 1;
            println!("FAIL  {what}: {e}");
        }
    };
    let config = match config::load(path) {
        Ok(c) => {
            report("config", Ok(path.display().to_string()));
            c
        }
        Err(e) => {
            report("config", Err(e.to_string()));
            return Err("1 problem".into());
        }
    };
    report(
        "keys",
        agent::tunnel_config(&config).map(|t| format!("agent public key {}", t.core.private_key.public_key())),
    );
    report(
        "traefik",
        agent::find_traefik(&config).and_then(|binary| {
            let out = std::process::Command::new(&binary)
                .arg("version")
                .output()
                .map_err(|e| format!("{} does not run: {e}", binary.display()))?;
            let version = String::from_utf8_lossy(&out.stdout);
            let version =
                version.lines().find_map(|l| l.strip_prefix("Version:")).unwrap_or("unknown").trim().to_string();
            out.status.success().then(|| format!("{} (Traefik {version})", binary.display())).ok_or_else(|| {
                format!("{} version failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr).trim())
            })
        }),
    );
    for (name, address) in &config.entrypoints {
        report(
            &format!("entrypoint {name}"),
            crate::ports::check_public(name, address).map(|()| format!("{address} is free")),
        );
    }
    if let Some(acme) = &config.acme {
        report(
            "acme",
            match &acme.ca_certificates {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("acme.ca_certificates {}: {e}", path.display()))
                    .and_then(|pem| {
                        pem.contains("-----BEGIN CERTIFICATE-----")
                            .then(|| format!("{} (CA from {})", acme.email, path.display()))
                            .ok_or_else(|| format!("acme.ca_certificates {} holds no PEM certificate", path.display()))
                    }),
                None => Ok(acme.email.clone()),
            },
        );
    }
    report(
        "state folder",
        crate::store::Store::open(&config.state_dir).map(|s| s.root.display().to_string()).map_err(|e| e.to_string()),
    );
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} problem(s)"))
    }
}

fn status(options: &HashMap<&str, String>, config_path: &Path) -> Result<(), String> {
    let socket = match options.get("--socket") {
        Some(s) => PathBuf::from(s),
        None => config::load(config_path)?.admin_socket,
    };
    print!("{}", admin::read(&socket)?);
    Ok(())
}
