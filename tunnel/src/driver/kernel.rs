//! The kernel sockets the driver handles itself: listening and accepting for a forwarder, and dialing a relay
//! target without blocking.

use rustix::io::Errno;
use rustix::net::{self, AddressFamily, SocketFlags, SocketType};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

/// Connection requests a forwarder's listening socket queues before the driver accepts them (the kernel caps it
/// at `net.core.somaxconn`, 4,096 by default).
pub const LISTEN_BACKLOG: i32 = 4096;

/// A listening TCP socket on `addr` for [`Tunnel::forward_from`](super::Tunnel::forward_from), with a backlog of
/// [`LISTEN_BACKLOG`]. `std::net::TcpListener::bind` listens with 128: a burst beyond that loses SYNs, which
/// clients resend after 1, 3, 7, 15 s (5,000 simultaneous connections to an L4 port took 26 s).
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    // As std does: a port whose old connections linger in TIME_WAIT can be listened on again at once.
    net::sockopt::set_socket_reuseaddr(&fd, true)?;
    net::bind(&fd, &addr)?;
    net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Accepts one pending connection (non-blocking, close-on-exec, Nagle off); `Ok(None)` when none is pending.
pub(crate) fn accept(listener: impl AsFd) -> io::Result<Option<OwnedFd>> {
    loop {
        match net::accept_with(&listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => {
                let _ = net::sockopt::set_tcp_nodelay(&fd, true);
                return Ok(Some(fd));
            }
            Err(Errno::AGAIN) => return Ok(None),
            // The connection was reset while it waited in the backlog: take the next one.
            Err(Errno::INTR) | Err(Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The peer's and the local address of a connected socket.
pub(crate) fn addresses(fd: impl AsFd) -> Option<(SocketAddr, SocketAddr)> {
    let peer = net::getpeername(&fd).ok()??;
    let local = net::getsockname(&fd).ok()?;
    Some((std_addr(peer)?, std_addr(local)?))
}

fn std_addr(addr: net::SocketAddrAny) -> Option<SocketAddr> {
    SocketAddr::try_from(addr).ok()
}

/// Starts a TCP connection to `target`; it completes when the socket becomes writable, and [`dial_result`]
/// then says how it went.
pub(crate) fn dial(target: SocketAddr) -> io::Result<OwnedFd> {
    let family = if target.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = net::socket_with(family, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
    let _ = net::sockopt::set_tcp_nodelay(&fd, true);
    match net::connect(&fd, &target) {
        Ok(()) | Err(Errno::INPROGRESS) | Err(Errno::INTR) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

/// The outcome of a [`dial`] whose socket became writable (or reported an error).
pub(crate) fn dial_result(fd: impl AsFd) -> io::Result<()> {
    match net::sockopt::socket_error(&fd)? {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Raises this process's open-files limit to its hard limit (every tunnel connection holds a kernel socket,
/// and the usual soft limit of 1,024 is far below what an edge carries). Returns the soft limit now in force.
/// With `ceiling`, the hard limit is first raised to it where allowed (as PID 1 or with CAP_SYS_RESOURCE).
pub fn raise_open_files_limit(ceiling: Option<u64>) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(ceiling) = ceiling.filter(|&c| limit.maximum.is_some_and(|max| max < c)) {
        let raised = Rlimit { current: Some(ceiling), maximum: Some(ceiling) };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    if limit.current != limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn dials_a_listening_port_and_reports_a_closed_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = dial(listener.local_addr().unwrap()).unwrap();
        let mut fds = [rustix::event::PollFd::new(&open, rustix::event::PollFlags::OUT)];
        rustix::event::poll(&mut fds, None).unwrap();
        dial_result(&open).unwrap();
        let accepted = accept(&listener).unwrap();
        assert!(accepted.is_some());

        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        match dial(closed_port) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(fd) => {
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::OUT)];
                rustix::event::poll(&mut fds, None).unwrap();
                assert_eq!(dial_result(&fd).unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
            }
        }
        listener.set_nonblocking(true).unwrap();
        assert!(accept(&listener).unwrap().is_none());
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX);
        assert_eq!(raise_open_files_limit(None), hard);
    }

    #[test]
    fn a_burst_beyond_stds_backlog_of_128_is_queued_not_dropped() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: each connect completes only if the kernel queued it (a dropped SYN is resent after 1 s).
        let connections: Vec<_> = (0..400)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(connections.len(), 400);
        assert!(accept(&listener).unwrap().is_some(), "queued connections are accepted");
    }
}
