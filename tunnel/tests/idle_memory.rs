//! Memory follows what is in flight: a connection's buffer pages are used as data fills them and given back to
//! the OS once it has been quiet for a moment — also for a connection that had gone quiet before (released)
//! and then carried data again. Its own test binary, so the process's RSS is this test's alone.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const CONNECTIONS: usize = 200;
const EACH_WAY: usize = 256 * 1024;

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
    let chunk = vec![7u8; EACH_WAY];
    let mut back = vec![0u8; EACH_WAY];
    for (c, a) in &mut pairs {
        c.write_all(&chunk).unwrap();
        a.read_exact(&mut back).unwrap();
        a.write_all(&chunk).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let busy = rss_kib();
    std::thread::sleep(Duration::from_millis(4500));
    let quiet = rss_kib();
    let per_end = |kib: u64| kib as f64 / (2 * CONNECTIONS) as f64;
    eprintln!("RSS before {before} KiB, after traffic {busy} KiB, quiet {quiet} KiB");
    assert!(per_end(busy.saturating_sub(before)) > 100.0, "the traffic used buffer pages: {busy} vs {before}");
    assert!(
        per_end(quiet.saturating_sub(before)) <= 32.0,
        "quiet connections keep {:.1} KiB each (before {before} KiB, quiet {quiet} KiB)",
        per_end(quiet.saturating_sub(before))
    );
}
