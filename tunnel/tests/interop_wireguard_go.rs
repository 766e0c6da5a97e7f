//! Interop with a real WireGuard implementation: Debian's `wireguard-go` (TUN, kernel TCP) in one network
//! namespace, our userspace tunnel in another, joined by a veth pair. Needs root, iproute2, wireguard-go and
//! wireguard-tools (the README's test command installs them). Set POLAREDGE_SKIP_NETNS=1 to skip on a
//! machine without them; CI never sets it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tunnel::testbed::{self, Netns, WireguardGo, WireguardGoConfig};
use tunnel::{Cidr, CoreConfig, PrivateKey, Tunnel, TunnelConfig};

const MIB: usize = 1 << 20;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn prerequisites_met() -> bool {
    match testbed::missing_prerequisites(&["ip", "wireguard-go", "wg"]) {
        None => true,
        Some(why) if std::env::var_os("POLAREDGE_SKIP_NETNS").is_some() => {
            eprintln!("skipping wireguard-go interop: {why}");
            false
        }
        Some(why) => panic!("{why}; set POLAREDGE_SKIP_NETNS=1 to skip deliberately"),
    }
}

#[test]
fn interop_with_wireguard_go_both_directions_and_across_a_peer_restart() {
    if !prerequisites_met() {
        return;
    }
    let ours_ns = Netns::new("ours").unwrap();
    let wg_ns = Netns::new("wg").unwrap();
    testbed::veth(&ours_ns, "172.30.0.1/30", &wg_ns, "172.30.0.2/30").unwrap();
    let our_key = PrivateKey::generate();
    let wg_key = PrivateKey::generate();
    let wg_public = wg_key.public_key();
    let wg_iface = format!("pewg{}", std::process::id() % 100_000);
    let wg_config = WireguardGoConfig {
        iface: &wg_iface,
        private_key: &wg_key,
        listen_port: 51820,
        address: "10.88.0.2/30",
        peer: &our_key.public_key(),
        peer_allowed_ips: "10.88.0.1/32",
        peer_endpoint: Some("172.30.0.1:51820".parse().unwrap()),
        keepalive: Some(25),
    };
    let wireguard_go = WireguardGo::start(&wg_ns, &wg_config).unwrap();

    // Our side lives in its namespace: the driver's UDP socket is created by `Tunnel::start` on that thread.
    let tunnel = ours_ns
        .thread(move || {
            Tunnel::start(TunnelConfig {
                core: CoreConfig {
                    endpoint: Some("172.30.0.2:51820".parse().unwrap()),
                    persistent_keepalive: Some(25),
                    peer_allowed_ips: vec!["10.88.0.2/32".parse::<Cidr>().unwrap()],
                    ..CoreConfig::new(our_key, wg_public, vec!["10.88.0.1/30".parse().unwrap()])
                },
                listen: "0.0.0.0:51820".parse().unwrap(),
            })
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
        .unwrap();

    // 1. We dial a kernel TCP server behind wireguard-go and move 64 MiB up (checked there) and 16 MiB down.
    let server = wg_ns
        .thread(|| {
            let listener = TcpListener::bind("10.88.0.2:5001").unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut received = 0usize;
            loop {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, pattern(received + k), "corrupted at byte {}", received + k);
                }
                received += n;
            }
            let down: Vec<u8> = (0..16 * MIB).map(pattern).collect();
            conn.write_all(&down).unwrap();
            received
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the listener binds
    let started = Instant::now();
    let target: SocketAddr = "10.88.0.2:5001".parse().unwrap();
    let mut stream = tunnel.connect(target, Duration::from_secs(10)).unwrap().into_io().unwrap();
    let upload = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk: Vec<u8> = (0..64 * MIB).map(pattern).collect();
            stream.write_all(&chunk).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut down = Vec::new();
    stream.read_to_end(&mut down).unwrap();
    upload.join().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), 64 * MIB, "wireguard-go's side received all 64 MiB intact");
    assert_eq!(down.len(), 16 * MIB);
    assert!(down.iter().enumerate().all(|(i, b)| *b == pattern(i)), "download intact");
    eprintln!("80 MiB through wireguard-go in {:?}", started.elapsed());

    // 2. wireguard-go's side (kernel TCP) dials a listener of ours.
    let listener = tunnel.listen(7000).unwrap();
    let dialer = wg_ns
        .thread(|| {
            let mut conn = TcpStream::connect_timeout(&"10.88.0.1:7000".parse().unwrap(), Duration::from_secs(10))?;
            conn.write_all(b"hello from kernel TCP")?;
            conn.shutdown(Shutdown::Write)?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok::<_, std::io::Error>(reply)
        })
        .unwrap();
    let mut accepted = listener.accept_timeout(Duration::from_secs(10)).unwrap().into_io().unwrap();
    let mut got = String::new();
    accepted.read_to_string(&mut got).unwrap();
    accepted.write_all(got.to_uppercase().as_bytes()).unwrap();
    drop(accepted);
    assert_eq!(dialer.join().unwrap().unwrap().unwrap(), "HELLO FROM KERNEL TCP");

    // 3. wireguard-go crashes and comes back with the same keys; our tunnel re-handshakes without a restart.
    let before = tunnel.status().unwrap().peer.last_handshake.expect("handshake done");
    wireguard_go.kill();
    std::thread::sleep(Duration::from_millis(500));
    let _wireguard_go = WireguardGo::start(&wg_ns, &wg_config).unwrap();
    let echo = wg_ns
        .thread(|| {
            let listener = TcpListener::bind("10.88.0.2:5002").unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let restarted = Instant::now();
    let mut again =
        tunnel.connect("10.88.0.2:5002".parse().unwrap(), Duration::from_secs(30)).unwrap().into_io().unwrap();
    again.write_all(b"again").unwrap();
    let mut buf = [0u8; 5];
    again.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");
    echo.join().unwrap().unwrap();
    let after = tunnel.status().unwrap().peer.last_handshake.expect("handshake done");
    assert!(after < before + restarted.elapsed(), "a new handshake happened after the restart");
    eprintln!("traffic flowed again {:?} after wireguard-go restarted", restarted.elapsed());
}
