//! WAN goodput of the tunnel's TCP in virtual time: two real cores (boringtun + smoltcp) joined by the
//! in-memory link of `tunnel::sim` with one-way delay, random loss and a bottleneck with a drop-tail queue.
//! The link's choices are seeded, but boringtun reads the real clock for some of its timers, so two runs differ
//! by a few per cent (mostly in what the bottleneck drops); the machine's load does not matter. One bulk stream per
//! profile and direction; prints goodput, the longest stall (no new byte delivered), and what the link dropped,
//! for the first version's buffers (512 KiB, CUBIC), 4 MiB buffers with CUBIC, and the tuning as shipped
//! (4 MiB, the loss-tolerant `BbrLite`), side by side in one run.
//!
//! Run: `cargo bench -p polaredge-tunnel --bench wan_sim` (part of `scripts/bench.sh`).
//! `POLAREDGE_WAN_SECONDS` sets the virtual length of each transfer (default 20); `POLAREDGE_WAN_PROFILE` runs
//! only the profiles whose name contains it.

use smoltcp::socket::tcp::CongestionControl;
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint};
use tunnel::impair::{Profile, PROFILES};
use tunnel::sim::{Conditions, Pair};
use tunnel::{Core, CoreConfig, PrivateKey, TcpTuning};

/// `address/prefix` as the tunnel's configuration takes it.
fn cidr(address: IpAddress, prefix: u8) -> tunnel::Cidr {
    tunnel::Cidr::new(address.into(), prefix).unwrap()
}

/// The sim's stand-in for "no bottleneck but the machine": about what one core moves through the tunnel.
const MACHINE_RATE: u64 = 125_000_000;

struct Outcome {
    goodput: f64,
    longest_stall: Duration,
    lost: u64,
    overflowed: u64,
}

fn main() {
    let seconds: u64 = std::env::var("POLAREDGE_WAN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let shipped = TcpTuning::default();
    let cubic = TcpTuning { congestion: CongestionControl::Cubic, ..shipped.clone() };
    let tunings = [
        ("first version", TcpTuning { rx_buffer: 512 * 1024, tx_buffer: 512 * 1024, ..cubic.clone() }),
        ("CUBIC", cubic),
        ("as shipped", shipped),
    ];
    println!(
        "WAN in virtual time: one bulk stream A -> B for {seconds} s, bottleneck queue = 1 BDP (min 1 MiB), seed 1; \
         MB/s = 10^6 bytes/s of payload delivered; stall = longest time without a new byte delivered"
    );
    print!("{:<26}", "profile");
    for (name, _) in &tunings {
        print!(" | {name:>13} {:>8} {:>9}", "stall ms", "drops");
    }
    println!();
    let only = std::env::var("POLAREDGE_WAN_PROFILE").unwrap_or_default();
    for profile in PROFILES.iter().filter(|p| p.name.contains(&only)) {
        print!("{:<26}", profile.name);
        for (_, tuning) in &tunings {
            let run = transfer(profile, tuning.clone(), seconds);
            let drops = format!("{}+{}", run.lost, run.overflowed);
            print!(" | {:>13.2} {:>8} {drops:>9}", run.goodput / 1e6, run.longest_stall.total_millis());
        }
        println!();
    }
    println!(
        "(first version: 512 KiB buffers and CUBIC; all columns run this build: SACK recovery, 200 ms minimum RTO, \
         32 reassembly holes; drops = random losses + bottleneck queue overflows, datagrams)"
    );
}

fn transfer(profile: &Profile, tuning: TcpTuning, seconds: u64) -> Outcome {
    let one_way = match profile.one_way_ms {
        0 => Duration::from_micros(100),
        ms => Duration::from_millis(ms),
    };
    let rate = profile.rate.unwrap_or(MACHINE_RATE);
    let bdp = (rate as f64 * 2.0 * one_way.total_micros() as f64 / 1e6) as usize;
    let conditions = Conditions {
        loss: profile.loss,
        latency: one_way,
        rate: Some(rate),
        queue: bdp.max(1 << 20),
        ..Conditions::default()
    };
    let mut pair = pair(conditions, tuning);
    assert!(pair.run_until(Duration::from_secs(5), |p| p.b.peer().last_handshake.is_some()), "handshake");
    pair.b.listen(9000);
    let client = pair.a.connect(IpEndpoint::new(IpAddress::v4(10, 88, 0, 1), 9000)).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut buf = vec![0; 256 * 1024];
    let mut server = None;
    let mut received = 0usize;
    let (lost0, _) = pair.impairments();
    let overflowed0 = pair.overflowed();
    let start = pair.now;
    let mut last_progress = start;
    let mut longest_stall = Duration::ZERO;
    let deadline = Duration::from_secs(seconds);
    pair.run_until(deadline, |p| {
        let socket = p.a.tcp(client);
        while socket.can_send() {
            if socket.send_slice(&chunk).unwrap_or(0) == 0 {
                break;
            }
        }
        if server.is_none() {
            server = p.b.accept().map(|(_, handle)| handle);
        }
        if let Some(server) = server {
            let socket = p.b.tcp(server);
            let mut got = 0;
            while let Ok(n) = socket.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                got += n;
            }
            if got > 0 {
                received += got;
                longest_stall = longest_stall.max(p.now - last_progress);
                last_progress = p.now;
            }
        }
        false
    });
    longest_stall = longest_stall.max(pair.now - last_progress);
    let elapsed = (pair.now - start).total_micros() as f64 / 1e6;
    Outcome {
        goodput: received as f64 / elapsed,
        longest_stall,
        lost: pair.impairments().0 - lost0,
        overflowed: pair.overflowed() - overflowed0,
    }
}

fn pair(conditions: Conditions, tuning: TcpTuning) -> Pair {
    let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
    let now = smoltcp::time::Instant::from_millis(0);
    let mut a_config = CoreConfig {
        endpoint: Some(Pair::B_ADDR),
        persistent_keepalive: Some(25),
        ..CoreConfig::new(a_key.clone(), b_key.public_key(), vec![cidr(IpAddress::v4(10, 88, 0, 2), 30)])
    };
    a_config.tcp = tuning.clone();
    let mut b_config = CoreConfig::new(b_key, a_key.public_key(), vec![cidr(IpAddress::v4(10, 88, 0, 1), 30)]);
    b_config.tcp = tuning;
    let a = Core::new(a_config, 1, now).unwrap();
    let b = Core::new(b_config, 2, now).unwrap();
    Pair::new(a, b, conditions)
}
