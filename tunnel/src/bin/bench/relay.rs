//! The UDP impairment relay: sits between two WireGuard ends (the host kernel has no netem) and impairs each
//! direction with a [`Path`] (loss, one-way delay, bottleneck) driven by the real clock.
//!
//! The client end sends to `listen`; the relay sends that on to `upstream` from `bind` (a fixed address, so
//! the server end sees the same peer address across relay restarts) and sends the answers back to whichever
//! address last spoke to `listen`. One thread per direction; handshakes are spared from random loss (as in
//! `tunnel::sim`: a lost handshake costs WireGuard 5 s and measures nothing about the transport).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunnel::impair::{Path, Profile};

/// Each relay socket's kernel buffers (root may exceed the system limit).
const SOCKET_BUFFER: usize = 32 << 20;

/// WireGuard's message type of transport data: the only datagrams lost at random.
const MSG_DATA: u8 = 4;

/// Runs the relay until the process is killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr, bind: SocketAddr, profile: Profile, seed: u64) -> io::Result<()> {
    let outer = UdpSocket::bind(listen)?;
    let inner = UdpSocket::bind(bind)?;
    inner.connect(upstream)?;
    // The path's bottleneck queue is the only queue that may drop: the relay's own socket buffers (208 KiB by
    // default) must absorb whatever burst a sender makes.
    for socket in [&outer, &inner] {
        use rustix::net::sockopt;
        sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER)?;
        sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER)?;
    }
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let start = Instant::now();

    let (from_client, to_server) = (outer.try_clone()?, inner.try_clone()?);
    let seen = Arc::clone(&client);
    let towards_server = std::thread::spawn(move || {
        pump(
            Path::of(&profile, seed),
            start,
            |buf, timeout| {
                from_client.set_read_timeout(timeout)?;
                let (n, from) = from_client.recv_from(buf)?;
                *seen.lock().expect("client address") = Some(from);
                Ok(n)
            },
            |datagram| {
                let _ = to_server.send(datagram);
            },
        )
    });
    let towards_client = std::thread::spawn(move || {
        pump(
            Path::of(&profile, seed.wrapping_add(1)),
            start,
            |buf, timeout| {
                inner.set_read_timeout(timeout)?;
                inner.recv(buf)
            },
            |datagram| {
                if let Some(to) = *client.lock().expect("client address") {
                    let _ = outer.send_to(datagram, to);
                }
            },
        )
    });
    let a = towards_server.join().map_err(|_| io::Error::other("relay thread panicked"))?;
    let b = towards_client.join().map_err(|_| io::Error::other("relay thread panicked"))?;
    a.and(b)
}

/// Moves datagrams of one direction: receives (waiting at most until the next one is due), impairs, and sends
/// each when its time comes.
fn pump(
    mut path: Path,
    start: Instant,
    mut recv: impl FnMut(&mut [u8], Option<Duration>) -> io::Result<usize>,
    mut send: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut due: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    let since_start = |t: Instant| smoltcp::time::Instant::from_micros((t - start).as_micros() as i64);
    loop {
        let now = Instant::now();
        while due.front().is_some_and(|(at, _)| *at <= now) {
            let (_, datagram) = due.pop_front().expect("peeked");
            send(&datagram);
        }
        // SO_RCVTIMEO refuses zero: wait at least a microsecond.
        let timeout = due.front().map(|(at, _)| at.saturating_duration_since(now).max(Duration::from_micros(1)));
        let n = match recv(&mut buf, timeout) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            // The other end is not there yet (ICMP port unreachable): datagrams to it are lost, as on a WAN.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let datagram = &buf[..n];
        if datagram.first() == Some(&MSG_DATA) && path.lose() {
            continue;
        }
        let now = Instant::now();
        if let Some(arrives) = path.enqueue(since_start(now), n) {
            let at = start + Duration::from_micros(arrives.total_micros() as u64);
            due.push_back((at, datagram.to_vec()));
        }
    }
}
