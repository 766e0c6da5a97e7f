//! Splicing one smoltcp TCP socket with one kernel stream socket (TCP or Unix), both ways, with backpressure
//! and half-close.
//!
//! Backpressure comes for free from the buffers: we read the kernel socket only while the smoltcp send buffer
//! has room (so the kernel's receive window closes when the tunnel is slow), and drain the smoltcp receive
//! buffer only as fast as the kernel socket takes it (so smoltcp's advertised window closes when the local side
//! is slow). The kernel socket is registered edge-triggered; `readable`/`writable` remember readiness until a
//! call returns `EAGAIN`.

use rustix::io::Errno;
use rustix::net::Shutdown;
use smoltcp::socket::tcp::{self, State};
use std::os::fd::OwnedFd;

/// How a splice ended, reported to whoever attached the kernel socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceOutcome {
    /// Bytes carried from the kernel socket into the tunnel.
    pub to_tunnel: u64,
    /// Bytes carried from the tunnel to the kernel socket.
    pub from_tunnel: u64,
    /// True when both directions finished with a FIN; false after a reset or error on either side.
    pub clean: bool,
}

impl SpliceOutcome {
    /// A splice that never started.
    pub const FAILED: SpliceOutcome = SpliceOutcome { to_tunnel: 0, from_tunnel: 0, clean: false };
}

/// A kernel socket attached to a tunnel connection.
pub(crate) struct Bridge {
    pub fd: OwnedFd,
    pub readable: bool,
    pub writable: bool,
    /// epoll reported the peer's FIN or an error: read until EOF or the error, even after a short read.
    pub hangup: bool,
    /// Bytes to send into the tunnel before anything read from the kernel socket (the relay preamble).
    preamble: Vec<u8>,
    preamble_sent: usize,
    /// The kernel side sent EOF and we passed it on as FIN.
    read_closed: bool,
    /// The tunnel side sent FIN and we passed it on with `shutdown(SHUT_WR)`.
    write_closed: bool,
    to_tunnel: u64,
    from_tunnel: u64,
    /// What [`Bridge::take_counts`] reported so far.
    reported: (u64, u64),
}

/// What one pass over a bridge did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pump {
    /// Still going; `moved` says whether any byte or FIN moved (worth another smoltcp poll).
    Open { moved: bool },
    /// Done: remove the connection.
    Finished(SpliceOutcome),
}

impl Bridge {
    pub(crate) fn new(fd: OwnedFd, preamble: Vec<u8>) -> Bridge {
        Bridge {
            fd,
            readable: true,
            writable: true,
            hangup: false,
            preamble,
            preamble_sent: 0,
            read_closed: false,
            write_closed: false,
            to_tunnel: 0,
            from_tunnel: 0,
            reported: (0, 0),
        }
    }

    /// Nothing has moved either way yet, not even the preamble (which waits for the tunnel connection).
    pub(crate) fn untouched(&self) -> bool {
        self.preamble_sent == 0 && self.to_tunnel == 0 && self.from_tunnel == 0 && !self.read_closed
    }

    /// Bytes carried (to the tunnel, from the tunnel) since the last call.
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        let delta = (self.to_tunnel - self.reported.0, self.from_tunnel - self.reported.1);
        self.reported = (self.to_tunnel, self.from_tunnel);
        delta
    }

    fn outcome(&self, clean: bool) -> SpliceOutcome {
        SpliceOutcome { to_tunnel: self.to_tunnel, from_tunnel: self.from_tunnel, clean }
    }

    /// Moves what can move in both directions without blocking.
    pub(crate) fn pump(&mut self, socket: &mut tcp::Socket) -> Pump {
        let mut moved = false;
        if self.preamble_sent < self.preamble.len() && socket.may_send() {
            let n = socket.send_slice(&self.preamble[self.preamble_sent..]).unwrap_or(0);
            self.preamble_sent += n;
            moved |= n > 0;
        }
        let preamble_done = self.preamble_sent == self.preamble.len();
        // Kernel -> tunnel.
        while preamble_done && self.readable && !self.read_closed && socket.may_send() && socket.can_send() {
            let fd = &self.fd;
            match socket.send(|buf| match rustix::io::read(fd, &mut *buf) {
                Ok(n) => (n, Ok((n, buf.len()))),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok((0, _))) => {
                    socket.close();
                    self.read_closed = true;
                    moved = true;
                }
                Ok(Ok((n, offered))) => {
                    self.to_tunnel += n as u64;
                    moved = true;
                    // A short read drained the socket: with edge-triggered epoll, more data brings a new event,
                    // so another read now would only return EAGAIN (one system call per wake-up saved).
                    if n < offered && !self.hangup {
                        self.readable = false;
                    }
                }
                Ok(Err(Errno::AGAIN)) => self.readable = false,
                Ok(Err(Errno::INTR)) => {}
                Ok(Err(_)) | Err(_) => {
                    socket.abort();
                    return Pump::Finished(self.outcome(false));
                }
            }
        }
        // Tunnel -> kernel.
        while self.writable && socket.can_recv() {
            let fd = &self.fd;
            match socket.recv(|buf| match rustix::io::write(fd, buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(n)) => {
                    self.from_tunnel += n as u64;
                    moved = true;
                }
                Ok(Err(Errno::AGAIN)) => self.writable = false,
                Ok(Err(Errno::INTR)) => {}
                Ok(Err(_)) | Err(_) => {
                    socket.abort();
                    return Pump::Finished(self.outcome(false));
                }
            }
        }
        // The peer's FIN, once every byte before it is delivered.
        if !self.write_closed && !socket.may_recv() && !socket.can_recv() && fin_received(socket.state()) {
            let _ = rustix::net::shutdown(&self.fd, Shutdown::Write);
            self.write_closed = true;
            moved = true;
        }
        if self.read_closed && self.write_closed {
            return Pump::Finished(self.outcome(true));
        }
        // A reset or timeout on the tunnel side: dropping the kernel socket tells the local end.
        if socket.state() == State::Closed && !socket.can_recv() {
            return Pump::Finished(self.outcome(false));
        }
        Pump::Open { moved }
    }
}

/// States in which the peer has sent its FIN.
fn fin_received(state: State) -> bool {
    matches!(state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait | State::Closed)
}
