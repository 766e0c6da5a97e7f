//! The outer UDP socket: setup, and the [`DatagramSink`] that sends through it.

use crate::device::DatagramSink;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

/// Socket buffers large enough to absorb a burst at full speed without drops (bulk TCP keeps hundreds of
/// datagrams in flight). Raised past the system limit when we may (root), else as far as the limit allows.
const SOCKET_BUFFER: usize = 8 << 20;

/// Binds the outer socket. `[::]:port` serves IPv4 peers too (as v4-mapped addresses).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind the WireGuard UDP socket to {addr}: {e}")))?;
    socket.set_nonblocking(true)?;
    enlarge_buffers(&socket, SOCKET_BUFFER);
    Ok(socket)
}

/// Raises a UDP socket's kernel buffers to `bytes` each way: past the system limit when we may (root), else as
/// far as the limit allows. A burst the driver has not read yet waits there instead of being dropped.
pub(crate) fn enlarge_buffers(socket: &UdpSocket, bytes: usize) {
    let fd = socket.as_fd();
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(fd, bytes);
    }
    if sockopt::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(fd, bytes);
    }
}

/// The peer's address as the core keeps it: v4-mapped IPv6 folded back to IPv4, so that one peer has one
/// address whatever socket family it arrived on.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Sends the core's datagrams on the outer socket.
pub(crate) struct UdpSink<'a> {
    pub socket: &'a UdpSocket,
    pub is_v6: bool,
    /// Datagrams that could not be sent (socket buffer full for too long, unreachable address).
    pub send_errors: &'a mut u64,
}

impl DatagramSink for UdpSink<'_> {
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]) {
        let dst = match dst {
            SocketAddr::V4(v4) if self.is_v6 => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
            other => other,
        };
        for _ in 0..2 {
            match self.socket.send_to(datagram, dst) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The kernel's send buffer is full: wait briefly for room rather than drop a packet that
                    // TCP would have to retransmit after a timeout.
                    let mut fds = [rustix::event::PollFd::new(&self.socket, rustix::event::PollFlags::OUT)];
                    let timeout = rustix::time::Timespec::try_from(Duration::from_millis(20)).unwrap();
                    let _ = rustix::event::poll(&mut fds, Some(&timeout));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        *self.send_errors += 1;
    }
}
