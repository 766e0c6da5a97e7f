//! Memory follows what is in flight: a connection's buffer pages are used as data fills them and given back to
//! the OS once it has been quiet for a moment — also for a connection that had gone quiet before (released)
//! and then carried data again. Its own test binary, so the process's RSS is this test's alone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const CONNECTIONS: usize = 100;
/// More than the kernel's socket buffers on both sides hold: the rest waits in the tunnel's buffers.
const HELD: usize = 1 << 20;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn buffers_go_back_to_the_os_after_each_busy_spell() {
    let (agent, client) =
        tunnel::testbed::loopback_pair(vec!["10.88.0.1/30".parse().unwrap()], vec!["10.88.0.2/30".parse().unwrap()])
            .unwrap();
    let listener = agent.listen(9000).unwrap();
    let mut pairs: Vec<(UnixStream, UnixStream)> = (0..CONNECTIONS)
        .map(|_| {
            let c =
                client.connect("10.88.0.1:9000".parse().unwrap(), Duration::from_secs(5)).unwrap().into_io().unwrap();
            (c, listener.accept().unwrap().into_io().unwrap())
        })
        .collect();
    // Quiet long enough for every connection to be released once before it carries anything.
    std::thread::sleep(Duration::from_millis(2600));
    let before = rss_kib();
    // Every connection holds data at once: written, not read yet.
    let chunk = vec![7u8; HELD];
    for (c, _) in &mut pairs {
        c.write_all(&chunk).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let busy = rss_kib();
    let mut back = vec![0u8; HELD];
    for (_, a) in &mut pairs {
        a.read_exact(&mut back).unwrap();
    }
    std::thread::sleep(Duration::from_millis(4500));
    let quiet = rss_kib();
    let per_end = |kib: u64| kib as f64 / (2 * CONNECTIONS) as f64;
    eprintln!("RSS before {before} KiB, holding data {busy} KiB, quiet again {quiet} KiB");
    assert!(per_end(busy.saturating_sub(before)) > 100.0, "held data uses buffer pages: {busy} vs {before} KiB");
    assert!(
        per_end(quiet.saturating_sub(before)) <= 32.0,
        "quiet connections keep {:.1} KiB each (before {before} KiB, quiet {quiet} KiB)",
        per_end(quiet.saturating_sub(before))
    );
}
