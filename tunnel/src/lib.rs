//! TCP streams and UDP flows through WireGuard entirely in userspace, for both halves of POLAREDGE.
//!
//! No TUN device, no kernel WireGuard, no privileges: WireGuard is boringtun's `noise::Tunn`, the TCP/IP stack
//! is smoltcp, and the only kernel socket is one UDP socket.
//!
//! The handle ([`Tunnel`]) and the configuration ([`TunnelConfig`], [`CoreConfig`], [`PeerConfig`]) take std
//! types ([`Cidr`], `SocketAddr`, `Duration`): an application needs no smoltcp. The sans-IO [`Core`] under them,
//! which the driver, the simulation and the benchmarks drive packet by packet, hands out smoltcp's sockets and
//! takes its `Instant`: that layer is the stack itself.
//!
//! Module map:
//! - [`keys`]: WireGuard keys in `wg`'s base64 text form.
//! - `cidr`: [`Cidr`], an address with a prefix length, as the configuration names tunnel addresses.
//! - [`core`]: the sans-IO core (its WireGuard peers + one smoltcp interface): datagrams and time in, datagrams
//!   and socket readiness out. Everything protocol-shaped lives here and is tested without sockets or clocks.
//! - [`peer`]: the core's WireGuard peers: which peer a datagram or an address belongs to.
//! - `egress` (private): which sockets a poll visits (the busy ones and those with a timer due), not all.
//! - `device` (private): the smoltcp device between the interface and boringtun, allocation-free per packet.
//! - `listen` (private): listening without a backlog: a listening socket per connection request, on demand.
//! - `buffers` (private): each connection's buffers in a mapping of their own, paid for as they fill.
//! - [`flow`]: UDP through the tunnel, sans-IO: the frame each datagram carries, and the flow table.
//! - `impair` (feature `testing`): a WAN path in one direction (loss, delay, a bottleneck), sans-IO, and the WAN
//!   profiles.
//! - `sim` (feature `testing`): an in-memory link between two cores with loss, duplication and reordering, for
//!   tests and fuzzing.
//! - `testbed` (feature `testing`): network namespaces, veth pairs and `wireguard-go` for interop tests and
//!   benchmarks (root).
//! - [`driver`]: the one-thread I/O driver (epoll + timerfd) that owns the UDP socket and splices tunnel
//!   streams with kernel sockets; [`Tunnel`] is its handle.

// Unsafe code lives in `buffers` (the per-connection mappings) and its two call sites in `core`, each allowed
// where it is and explained with a SAFETY comment.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)]
mod buffers;
mod cidr;
pub mod core;
mod device;
pub mod driver;
mod egress;
pub mod flow;
pub mod keys;
mod listen;
pub mod peer;

#[cfg(feature = "testing")]
pub mod impair;
#[cfg(feature = "testing")]
pub mod sim;
#[cfg(feature = "testing")]
pub mod testbed;

pub use crate::core::{Core, CoreConfig, PeerStatus, Stats, TcpTuning, UdpTuning};
pub use cidr::{Cidr, CidrError};
pub use device::DatagramSink;
pub use driver::{
    FlowCounters, Forwarding, Listener, PickTarget, Preamble, RelayPolicy, RelayPort, RelayTarget, StreamCounters,
    Tunnel, TunnelConfig, TunnelStream, UdpExposure, UdpRelayPort,
};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use peer::PeerConfig;

/// The README's "Tunnel library in brief" example, compiled as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
