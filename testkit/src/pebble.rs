//! Debian's `pebble` (an RFC 8555 test CA) with `pebble-challtestsrv` as its DNS, on loopback, for the ACME
//! tests. The mock DNS answers 127.0.0.1 for every name, so pebble validates HTTP-01 and TLS-ALPN-01 on the
//! loopback ports it is given: the agent's entrypoints, or the ports QEMU forwards into an appliance.

use crate::{eventually, free_tcp, free_udp, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn require(tool: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(tool);
    assert!(path.exists(), "{tool} is missing: scripts/install-deps.sh installs Debian's pebble package");
    path
}

/// The certificate and key of pebble's own HTTPS API, for 127.0.0.1 and for 10.0.2.2 (the host as a QEMU guest
/// on user networking sees it). The agent trusts the certificate through `acme.ca_certificates`.
pub fn api_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("pebble-api.crt"), dir.join("pebble-api.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// A running pebble.
pub struct Pebble {
    _dns: Proc,
    /// The CA process (its log helps when a test fails).
    pub process: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    management: SocketAddr,
    dir: PathBuf,
}

/// How to run pebble.
pub struct Options<'a> {
    /// Its API certificate and key (from [`api_certificate`]).
    pub api: (&'a Path, &'a Path),
    /// Port of its API on 127.0.0.1 (`None`: any free one).
    pub port: Option<u16>,
    /// Where it validates HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    /// See `http_port`.
    pub tls_port: u16,
    /// How long its certificates are valid (`None`: pebble's default, 5 years).
    pub validity: Option<Duration>,
}

impl Pebble {
    /// Starts the mock DNS and pebble in `dir`, and waits until pebble answers.
    pub fn start(dir: &Path, options: Options) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let dns = SocketAddr::from(([127, 0, 0, 1], free_udp()));
        let dns_process = Proc::spawn(
            Command::new(require("pebble-challtestsrv"))
                .args(["-dns01", &dns.to_string(), "-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_tcp()), "-defaultIPv6", ""]),
        );
        let port = options.port.unwrap_or_else(free_tcp);
        let management = SocketAddr::from(([127, 0, 0, 1], free_tcp()));
        let validity =
            options.validity.map_or(String::new(), |v| format!(", \"certificateValidityPeriod\": {}", v.as_secs()));
        let config = format!(
            "{{\"pebble\": {{\"listenAddress\": \"127.0.0.1:{port}\", \"managementListenAddress\": \"{management}\", \
             \"certificate\": \"{}\", \"privateKey\": \"{}\", \"httpPort\": {}, \"tlsPort\": {}, \
             \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false{validity}}}}}",
            options.api.0.display(),
            options.api.1.display(),
            options.http_port,
            options.tls_port
        );
        std::fs::write(dir.join("pebble.json"), config).unwrap();
        let process = Proc::spawn(
            Command::new(require("pebble"))
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &dns.to_string()])
                // No random validation delays or nonce rejections: the tests measure the edge, not pebble's chaos.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
        );
        let directory = format!("https://127.0.0.1:{port}/dir");
        let ca = options.api.0.to_str().unwrap().to_string();
        assert!(
            eventually(Duration::from_secs(10), || curl(&["--cacert", &ca, &directory]).0),
            "pebble answers\n{}",
            process.log()
        );
        Pebble { _dns: dns_process, process, port, management, dir: dir.to_path_buf() }
    }

    /// Its ACME directory as `host` (127.0.0.1, or 10.0.2.2 from a QEMU guest) reaches it.
    pub fn directory(&self, host: &str) -> String {
        format!("https://{host}:{}/dir", self.port)
    }

    /// The root of the certificates it issues (random per run), written to a file.
    pub fn issuing_root(&self) -> PathBuf {
        let (ok, pem) = curl(&["-k", &format!("https://{}/roots/0", self.management)]);
        assert!(ok && pem.contains("BEGIN CERTIFICATE"), "{pem}");
        let path = self.dir.join("root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "5"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// openssl's verdict on the chain a TLS listener presents for `host`, against `root`.
pub fn verify(addr: SocketAddr, host: &str, root: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {host} -verify_hostname {host} -CAfile {} </dev/null 2>/dev/null | grep -m1 'Verify return code'",
            root.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits up to `timeout` until the certificate presented for `host` verifies against `root`.
pub fn served(addr: SocketAddr, host: &str, root: &Path, timeout: Duration) -> bool {
    eventually(timeout, || verify(addr, host, root) == "Verify return code: 0 (ok)")
}
