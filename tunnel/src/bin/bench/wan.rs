//! The WAN benchmark on real processes: the WAN issue's profiles through the UDP impairment relay, between two
//! wireguard-go ends (kernel TCP inside, CUBIC and BBR) and between two of ours (smoltcp TCP inside, CUBIC and
//! the shipped tuning), side by side in one run. iperf3, one stream, both directions.
//!
//! Namespace c (client) and s (server) are joined by a veth pair; the relays run in s, one per tunnel pair,
//! and are restarted with each profile. The relay's CPU time is reported so that it can be seen not to be the
//! bottleneck.

use crate::{cpu_seconds, median, spawn_in, status_field, Killed};
use smoltcp::socket::tcp::CongestionControl;
use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tunnel::impair::PROFILES;
use tunnel::testbed::{self, Netns};
use tunnel::{PrivateKey, TcpTuning};

/// What one target gave in one direction: median goodput, the lowest one-second interval of any run (a stall
/// shows as 0), and the relays' CPU.
struct Figure {
    mbytes: f64,
    worst_second: f64,
    relay_cpu: f64,
}

/// One tunnel pair under test.
struct Target {
    name: &'static str,
    /// Where iperf3 in c connects.
    host: &'static str,
    port: u16,
    /// iperf3's `-C`: the kernel TCP that crosses the relay (wireguard-go); ours ignore it (loopback legs).
    congestion: &'static str,
    /// The relay between the two ends: its port on 172.31.0.2 and the server end's UDP port.
    relay_port: u16,
    server_port: u16,
}

const TARGETS: &[Target] = &[
    Target {
        name: "wireguard-go, CUBIC",
        host: "10.99.0.2",
        port: 5201,
        congestion: "cubic",
        relay_port: 61820,
        server_port: 51820,
    },
    Target {
        name: "wireguard-go, BBR",
        host: "10.99.0.2",
        port: 5201,
        congestion: "bbr",
        relay_port: 61820,
        server_port: 51820,
    },
    Target {
        name: "ours, CUBIC",
        host: "127.0.0.1",
        port: 5202,
        congestion: "cubic",
        relay_port: 61830,
        server_port: 51830,
    },
    Target {
        name: "ours, as shipped",
        host: "127.0.0.1",
        port: 5203,
        congestion: "cubic",
        relay_port: 61840,
        server_port: 51840,
    },
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs the whole comparison and prints one table.
pub fn run() -> io::Result<()> {
    if let Some(why) = testbed::missing_prerequisites(&["ip", "iperf3", "wireguard-go", "wg"]) {
        return Err(io::Error::other(why));
    }
    let runs = env_number("POLAREDGE_WAN_RUNS", 3) as usize;
    let seconds = env_number("POLAREDGE_WAN_REAL_SECONDS", 5);
    let only = std::env::var("POLAREDGE_WAN_PROFILE").unwrap_or_default();
    let me = std::env::current_exe()?.to_string_lossy().to_string();
    let c = Netns::new("wc")?;
    let s = Netns::new("ws")?;
    testbed::veth(&c, "172.31.1.1/30", &s, "172.31.1.2/30")?;
    let mut children = Killed(Vec::new());
    children.0.push(s.spawn("iperf3", &["-s", "-p", "5201"])?);

    let (wgc, wgs, _) = crate::wireguard_go_pair(&c, &s, "w", "172.31.1.2:61820".parse().unwrap())?;

    // Ours: forward in c (127.0.0.1:port) -> relay -> expose in s -> iperf3 at 127.0.0.1:5201.
    let mut ours_pids = Vec::new();
    for target in TARGETS.iter().filter(|t| t.server_port != 51820) {
        let cc = if target.name.contains("CUBIC") { "cubic" } else { "shipped" };
        let (key_c, key_s) = (PrivateKey::generate(), PrivateKey::generate());
        let expose = spawn_in(
            &s,
            &me,
            &[
                "expose".into(),
                "port=5201".into(),
                "to=127.0.0.1:5201".into(),
                format!("bind=0.0.0.0:{}", target.server_port),
                format!("key={key_s}"),
                format!("peer={}", key_c.public_key()),
                "address=10.88.0.2/30".into(),
                format!("cc={cc}"),
            ],
        )?;
        let forward = spawn_in(
            &c,
            &me,
            &[
                "forward".into(),
                format!("listen=127.0.0.1:{}", target.port),
                "target=10.88.0.2:5201".into(),
                "bind=0.0.0.0:0".into(),
                format!("endpoint=172.31.1.2:{}", target.relay_port),
                format!("key={key_c}"),
                format!("peer={}", key_s.public_key()),
                "address=10.88.0.1/30".into(),
                format!("cc={cc}"),
            ],
        )?;
        ours_pids.push((target.name, [forward.id(), expose.id()]));
        children.0.extend([expose, forward]);
    }

    eprintln!("WAN on real processes: {runs} runs x {seconds} s per target, profile and direction...");
    let mut table = Vec::new();
    for (index, profile) in PROFILES.iter().enumerate().filter(|(_, p)| p.name.contains(&only)) {
        // A relay per tunnel pair for this profile; the same seeds in every run of the benchmark.
        let mut relays = Killed(Vec::new());
        for port in [61820u16, 61830, 61840] {
            relays.0.push(spawn_in(
                &s,
                &me,
                &[
                    "relay".into(),
                    format!("listen=172.31.1.2:{port}"),
                    format!("upstream=127.0.0.1:{}", port - 10_000),
                    format!("bind=127.0.0.1:{}", port + 1),
                    format!("profile={index}"),
                    format!("seed={}", u64::from(port) * 7 + index as u64),
                ],
            )?);
        }
        let relay_pids: Vec<u32> = relays.0.iter().map(|r| r.id()).collect();
        // Handshakes through the new relays (wireguard-go and ours both roam to the relay's address).
        std::thread::sleep(Duration::from_secs(2));
        let mut row = Vec::new();
        for target in TARGETS {
            let up = measure(&c, target, false, runs, seconds, &relay_pids);
            let down = measure(&c, target, true, runs, seconds, &relay_pids);
            eprintln!("  {} / {}: up {:.2} MB/s, down {:.2} MB/s", profile.name, target.name, up.mbytes, down.mbytes);
            row.push((up, down));
        }
        table.push((profile.name, row));
        drop(relays);
    }

    println!(
        "\nWAN on real processes (UDP impairment relay, one-way delay and loss each direction): iperf3 one stream, \
         -t {seconds} -O 1, median of {runs} runs, MB/s up / down; worst = lowest 1-s interval of any run (0: a stall \
         of a second or more)"
    );
    print!("{:<26}", "profile");
    for target in TARGETS {
        print!(" | {:>24}", target.name);
    }
    println!(" | relay CPU (max)");
    for (name, row) in &table {
        print!("{name:<26}");
        let mut relay_cpu: f64 = 0.0;
        for (up, down) in row {
            print!(" | {:>7.2} / {:>6.2} w{:>5.1}", up.mbytes, down.mbytes, up.worst_second.min(down.worst_second));
            relay_cpu = relay_cpu.max(up.relay_cpu).max(down.relay_cpu);
        }
        println!(" | {relay_cpu:.0}%");
    }
    println!("\nratios: ours as shipped / wireguard-go (floor: >= 1.0x CUBIC; goal: >= 0.8x BBR), up / down");
    for (name, row) in &table {
        let (cubic, bbr, shipped) = (&row[0], &row[1], &row[3]);
        println!(
            "{name:<26} vs CUBIC {:>6.2}x / {:>6.2}x   vs BBR {:>5.2}x / {:>5.2}x",
            shipped.0.mbytes / cubic.0.mbytes,
            shipped.1.mbytes / cubic.1.mbytes,
            shipped.0.mbytes / bbr.0.mbytes,
            shipped.1.mbytes / bbr.1.mbytes
        );
    }
    for (name, pids) in &ours_pids {
        println!("peak RSS of {name}: client {} MB, server {} MB (target <= 64 MB)", rss_mb(pids[0]), rss_mb(pids[1]));
    }
    drop(children);
    drop((wgc, wgs));
    Ok(())
}

fn rss_mb(pid: u32) -> u64 {
    status_field(pid, "VmHWM:") / 1024
}

/// iperf3 from c to `target`, `runs` times; with `reverse` the server sends.
fn measure(c: &Netns, target: &Target, reverse: bool, runs: usize, seconds: u64, relay_pids: &[u32]) -> Figure {
    let mut goodputs = Vec::new();
    let mut worst = f64::INFINITY;
    let mut relay_cpu: f64 = 0.0;
    // A run that fails (iperf3's server still busy with the previous test, a reset control connection) is
    // tried again rather than counted as 0, up to twice per run.
    let mut attempts = 0;
    while goodputs.len() < runs && attempts < runs * 3 {
        attempts += 1;
        let (port, seconds) = (target.port.to_string(), seconds.to_string());
        let mut args = vec![
            "netns",
            "exec",
            c.name(),
            "iperf3",
            "-c",
            target.host,
            "-p",
            &port,
            "-t",
            &seconds,
            "-O",
            "1",
            "-J",
            "-C",
            target.congestion,
        ];
        if reverse {
            args.push("-R");
        }
        let cpu0: f64 = relay_pids.iter().map(|&p| cpu_seconds(p)).sum();
        let t0 = Instant::now();
        let out = Command::new("ip").args(&args).stdin(Stdio::null()).output();
        let wall = t0.elapsed().as_secs_f64();
        let json = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let Some(goodput) = crate::iperf_mbytes(&json) else {
            let error = json.find("\"error\"").map_or("no report", |at| json[at..].lines().next().unwrap_or(""));
            eprintln!("  iperf3 to {} failed ({error}); trying again", target.name);
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        relay_cpu = relay_cpu.max((relay_pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0) / wall * 100.0);
        goodputs.push(goodput);
        worst = worst.min(worst_interval(&json).unwrap_or(0.0));
    }
    if goodputs.is_empty() {
        goodputs.push(0.0);
    }
    Figure { mbytes: median(&mut goodputs), worst_second: worst, relay_cpu }
}

/// The lowest per-interval rate (MB/s) in iperf3's JSON report, omitted intervals (`-O`) left out.
fn worst_interval(json: &str) -> Option<f64> {
    let start = json.find("\"intervals\"")?;
    // The report's own "end" object (intervals have "end" numbers too).
    let end = start
        + json[start..]
            .match_indices("\"end\":")
            .find(|(at, key)| json[start + at + key.len()..].trim_start().starts_with('{'))?
            .0;
    let number_after = |text: &str, key: &str| -> Option<f64> {
        let at = text.find(key)? + key.len();
        let number: String = text[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
            .collect();
        number.parse().ok()
    };
    json[start..end]
        .match_indices("\"sum\":")
        .filter_map(|(at, _)| {
            let sum = &json[start + at..];
            let sum = &sum[..sum.find('}')?];
            let omitted = sum
                .find("\"omitted\":")
                .is_some_and(|o| sum[o + "\"omitted\":".len()..].trim_start().starts_with("true"));
            if omitted {
                return None;
            }
            number_after(sum, "\"bits_per_second\":")
        })
        .map(|bps| bps / 8.0 / 1e6)
        .reduce(f64::min)
}

/// The tuning a `cc=` option names: `cubic`, or `shipped` (the default tuning).
pub fn tuning(cc: Option<&str>) -> io::Result<TcpTuning> {
    let shipped = TcpTuning::default();
    match cc {
        None | Some("shipped") => Ok(shipped),
        Some("cubic") => Ok(TcpTuning { congestion: CongestionControl::Cubic, ..shipped }),
        Some("bbrlite") => Ok(TcpTuning { congestion: CongestionControl::BbrLite, ..shipped }),
        Some(other) => Err(io::Error::other(format!("cc={other}: expected cubic, bbrlite or shipped"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_worst_interval_and_ignores_the_summary() {
        let json = r#"{"intervals":[{"streams":[{"end":1,"bits_per_second":1}],
            "sum":{"end":1,"bits_per_second":1,"omitted":	true}},
            {"streams":[{"bits_per_second":8e6}],"sum":{"end":2,"bits_per_second":8e6,"omitted":false}},
            {"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":16000000.5}}],
            "end":	{"sum_received":{"bits_per_second":1}}}"#;
        assert_eq!(worst_interval(json), Some(0.0));
        let json = json.replace("\"bits_per_second\":0}", "\"bits_per_second\":4e6}");
        assert_eq!(worst_interval(&json), Some(0.5));
        assert_eq!(worst_interval("{}"), None);
    }
}
