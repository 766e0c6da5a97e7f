//! The smoltcp [`Device`] that sits between smoltcp and boringtun.
//!
//! Receive side: [`RxQueue`] holds decrypted IP packets in pooled buffers; the core decrypts straight into a
//! buffer taken from the pool and smoltcp hands it back after reading it, so the steady state allocates nothing.
//!
//! Transmit side: smoltcp writes each IP packet into one scratch buffer, which is encrypted at once into a
//! second scratch buffer and handed to the caller's [`DatagramSink`]: no queue, no copy, no allocation.

use crate::core::Stats;
use crate::peer::{self, Peer};
use boringtun::noise::TunnResult;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Where the core's outgoing UDP datagrams go: a socket in the driver, a simulated link in tests.
pub trait DatagramSink {
    /// Sends one encrypted datagram to the peer's outer address.
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]);
}

impl<F: FnMut(SocketAddr, &[u8])> DatagramSink for F {
    fn send_to(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self(dst, datagram)
    }
}

/// Decrypted packets waiting for smoltcp, in buffers recycled through a free list.
pub(crate) struct RxQueue {
    ready: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
    buffer_size: usize,
    capacity: usize,
}

impl RxQueue {
    pub(crate) fn new(buffer_size: usize, capacity: usize) -> Self {
        RxQueue { ready: VecDeque::with_capacity(capacity), free: Vec::new(), buffer_size, capacity }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.ready.len() >= self.capacity
    }

    /// A buffer to decrypt into: from the free list, or new while the pool is still growing.
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| vec![0; self.buffer_size])
    }

    pub(crate) fn give_back(&mut self, buffer: Vec<u8>) {
        self.free.push(buffer);
    }

    pub(crate) fn push(&mut self, buffer: Vec<u8>, len: usize) {
        self.ready.push_back((buffer, len));
    }

    /// The packets waiting for smoltcp, oldest first.
    pub(crate) fn queued(&self) -> impl Iterator<Item = &[u8]> {
        self.ready.iter().map(|(buffer, len)| &buffer[..*len])
    }
}

/// Borrows the core's parts for the length of one `Interface::poll`.
pub(crate) struct WgDevice<'a, S: DatagramSink> {
    pub rx: &'a mut RxQueue,
    pub tx: TxPath<'a, S>,
}

/// Everything sending one packet touches: encrypt with the destination's peer, hand the datagram to `sink`.
pub(crate) struct TxPath<'a, S: DatagramSink> {
    pub peers: &'a mut [Peer],
    pub plain: &'a mut [u8],
    pub cipher: &'a mut [u8],
    pub sink: &'a mut S,
    pub stats: &'a mut Stats,
}

pub(crate) struct RxToken<'a> {
    buffer: Vec<u8>,
    len: usize,
    free: &'a mut Vec<Vec<u8>>,
}

pub(crate) struct TxToken<'b, 'a, S: DatagramSink> {
    path: &'b mut TxPath<'a, S>,
}

impl<'a, S: DatagramSink> phy::Device for WgDevice<'a, S> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b, 'a, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, 'a, S>)> {
        let (buffer, len) = self.rx.ready.pop_front()?;
        Some((RxToken { buffer, len, free: &mut self.rx.free }, TxToken { path: &mut self.tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, 'a, S>> {
        Some(TxToken { path: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.tx.plain.len())
    }
}

/// What the interface is told about the device. Received packets were authenticated by WireGuard's AEAD, so
/// their IP/TCP checksums need no second check; sent ones must carry checksums for the peer's kernel stack.
pub(crate) fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    caps.checksum = checksum;
    caps
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.buffer[..self.len]);
        self.free.push(self.buffer);
        result
    }
}

impl<S: DatagramSink> phy::TxToken for TxToken<'_, '_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let path = self.path;
        let packet = &mut path.plain[..len];
        let result = f(packet);
        let Some(peer) = peer::peer_of_packet(packet, path.peers).map(|n| &mut path.peers[n]) else {
            path.stats.dropped_no_endpoint += 1;
            return result;
        };
        let Some(endpoint) = peer.endpoint else {
            // Nowhere to send until the peer has shown up (agent side) or been configured (client side).
            path.stats.dropped_no_endpoint += 1;
            return result;
        };
        match peer.tunn.encapsulate(packet, path.cipher) {
            TunnResult::WriteToNetwork(datagram) => {
                path.stats.datagrams_out += 1;
                path.stats.bytes_out += datagram.len() as u64;
                path.sink.send_to(endpoint, datagram);
            }
            TunnResult::Err(_) => path.stats.dropped_encrypt += 1,
            // No session yet: boringtun queued the packet and sends it once the handshake completes.
            _ => {}
        }
        result
    }
}
