//! The peers of one core: each a WireGuard session ([`Tunn`]) with its outer address and the tunnel addresses
//! it may use. A client's core has one peer (its agent); an agent's core may have several, one per client
//! replica, each with a key and a tunnel address of its own, so every replica keeps its tunnel up at once.
//!
//! Datagrams are told apart as WireGuard's own device tells them: a handshake initiation by the initiator's
//! static key (decrypted with ours), every other message by its receiver index, whose upper bits we chose per
//! peer. Outgoing packets go to the peer whose allowed IPs hold their destination.

use crate::cidr::Cidr;
use crate::keys::{PresharedKey, PublicKey};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn};
use boringtun::x25519;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr};
use std::net::SocketAddr;

/// Most peers one core serves. Their number takes 4 bits of WireGuard's 24-bit session index prefix.
pub const MAX_PEERS: usize = 16;

/// One more peer of a core (see [`crate::CoreConfig::other_peers`]).
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's static key.
    pub public_key: PublicKey,
    /// Optional preshared key; both ends must agree.
    pub preshared_key: Option<PresharedKey>,
    /// Seconds between keepalives when idle; set it on the side behind NAT.
    pub persistent_keepalive: Option<u16>,
    /// The peer's tunnel addresses (WireGuard's AllowedIPs): packets to them go to this peer, and packets from
    /// this peer must come from them. Required when a core has several peers.
    pub allowed_ips: Vec<Cidr>,
    /// The peer's outer UDP address, if known in advance. The core follows the peer when it roams.
    pub endpoint: Option<SocketAddr>,
}

/// A peer's live state.
pub(crate) struct Peer {
    pub tunn: Tunn,
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<IpCidr>,
    /// We keep the tunnel up ourselves (persistent keepalive set).
    pub keepalive: bool,
    pub next_forced_handshake: Instant,
    pub next_offered_handshake: Instant,
    /// When an authentic datagram last came from the peer.
    pub last_received: Option<Instant>,
}

impl Peer {
    /// A peer whose sessions carry index prefix `index` (unique within the process, below 2^24).
    pub fn new(private: x25519::StaticSecret, config: PeerConfig, index: u32, now: Instant) -> Peer {
        let public_key = config.public_key.to_x25519();
        Peer {
            tunn: Tunn::new(
                private,
                public_key,
                config.preshared_key.as_ref().map(PresharedKey::to_bytes),
                config.persistent_keepalive,
                index,
                None,
            ),
            public_key: *public_key.as_bytes(),
            endpoint: config.endpoint,
            allowed: config.allowed_ips.iter().map(|c| c.to_stack()).collect(),
            keepalive: config.persistent_keepalive.is_some_and(|k| k > 0),
            next_forced_handshake: now,
            next_offered_handshake: now,
            last_received: None,
        }
    }

    pub fn allows(&self, address: &IpAddress) -> bool {
        self.allowed.iter().any(|cidr| cidr.contains_addr(address))
    }
}

/// The session index prefix of peer `peer` of the core numbered `core` (as [`Tunn::new`] takes it).
pub(crate) fn session_index(core: u32, peer: usize) -> u32 {
    ((core & 0xF_FFFF) << 4) | peer as u32
}

/// Which of `peers` (of the core numbered `core`) a datagram is for, or `None` if it is for none of them (or
/// is not a WireGuard message). With one peer that peer takes everything, as before several peers existed.
pub(crate) fn peer_of_datagram(
    datagram: &[u8],
    core: u32,
    peers: &[Peer],
    private: &x25519::StaticSecret,
    public: &x25519::PublicKey,
) -> Option<usize> {
    if peers.len() == 1 {
        return Some(0);
    }
    let receiver = match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(init) => {
            // One Diffie-Hellman to learn who is calling; the peer's own Tunn then checks the rest.
            let half = parse_handshake_anon(private, public, &init).ok()?;
            return peers.iter().position(|p| p.public_key == half.peer_static_public);
        }
        Packet::HandshakeResponse(response) => response.receiver_idx,
        Packet::PacketCookieReply(cookie) => cookie.receiver_idx,
        Packet::PacketData(data) => data.receiver_idx,
    };
    let prefix = receiver >> 8;
    let peer = (prefix & 0xF) as usize;
    (peer < peers.len() && prefix == session_index(core, peer)).then_some(peer)
}

/// Which of `peers` an IP packet goes to: the first whose allowed IPs hold its destination. With one peer,
/// that peer (smoltcp only sends to addresses it routes into the tunnel).
pub(crate) fn peer_of_packet(packet: &[u8], peers: &[Peer]) -> Option<usize> {
    if peers.len() == 1 {
        return Some(0);
    }
    let destination = destination(packet)?;
    peers.iter().position(|p| p.allows(&destination))
}

/// The destination address of an IPv4 or IPv6 packet.
fn destination(packet: &[u8]) -> Option<IpAddress> {
    match packet.first()? >> 4 {
        4 => {
            let bytes: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddress::Ipv4(bytes.into()))
        }
        6 => {
            let bytes: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddress::Ipv6(bytes.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn peer(key: &PrivateKey, own: &PrivateKey, address: &str, index: u32) -> Peer {
        let config = PeerConfig {
            public_key: key.public_key(),
            preshared_key: None,
            persistent_keepalive: None,
            allowed_ips: vec![address.parse().unwrap()],
            endpoint: None,
        };
        Peer::new(own.secret(), config, index, Instant::from_millis(0))
    }

    fn ipv4_to(destination: [u8; 4]) -> Vec<u8> {
        let mut packet = vec![0u8; 20];
        packet[0] = 0x45;
        packet[16..20].copy_from_slice(&destination);
        packet
    }

    #[test]
    fn packets_go_to_the_peer_whose_allowed_ips_hold_the_destination() {
        let own = PrivateKey::generate();
        let (a, b) = (PrivateKey::generate(), PrivateKey::generate());
        let peers = [peer(&a, &own, "10.88.0.2/32", session_index(0, 0)), peer(&b, &own, "10.88.0.3/32", 1)];
        assert_eq!(peer_of_packet(&ipv4_to([10, 88, 0, 2]), &peers), Some(0));
        assert_eq!(peer_of_packet(&ipv4_to([10, 88, 0, 3]), &peers), Some(1));
        assert_eq!(peer_of_packet(&ipv4_to([10, 88, 0, 4]), &peers), None, "no peer owns it");
        assert_eq!(peer_of_packet(&[0x45, 0, 0], &peers), None, "truncated");
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        assert_eq!(peer_of_packet(&v6, &peers), None);
        assert_eq!(peer_of_packet(&[], &peers[..1]), Some(0), "one peer takes everything");
    }

    #[test]
    fn handshakes_are_told_apart_by_the_initiators_key_and_the_rest_by_receiver_index() {
        let own = PrivateKey::generate();
        let (a, b, stranger) = (PrivateKey::generate(), PrivateKey::generate(), PrivateKey::generate());
        let core = 3;
        let peers = [
            peer(&a, &own, "10.88.0.2/32", session_index(core, 0)),
            peer(&b, &own, "10.88.0.3/32", session_index(core, 1)),
        ];
        let (private, public) = (own.secret(), own.public_key().to_x25519());
        // Each initiator's first message names it through its key.
        for (key, expected) in [(&a, Some(0)), (&b, Some(1)), (&stranger, None)] {
            let mut initiator = Tunn::new(key.secret(), public, None, None, 0, None);
            let mut out = [0u8; 256];
            let boringtun::noise::TunnResult::WriteToNetwork(init) =
                initiator.format_handshake_initiation(&mut out, false)
            else {
                panic!("no initiation")
            };
            assert_eq!(peer_of_datagram(init, core, &peers, &private, &public), expected);
        }
        // Data for peer 1's sessions: type 4, receiver index with peer 1's prefix.
        let mut data = vec![0u8; 32];
        data[0] = 4;
        data[4..8].copy_from_slice(&((session_index(core, 1) << 8) | 7).to_le_bytes());
        assert_eq!(peer_of_datagram(&data, core, &peers, &private, &public), Some(1));
        // Another core's prefix, an unknown peer number, garbage: nobody's.
        data[4..8].copy_from_slice(&((session_index(core + 1, 1) << 8) | 7).to_le_bytes());
        assert_eq!(peer_of_datagram(&data, core, &peers, &private, &public), None);
        data[4..8].copy_from_slice(&((session_index(core, 5) << 8) | 7).to_le_bytes());
        assert_eq!(peer_of_datagram(&data, core, &peers, &private, &public), None);
        assert_eq!(peer_of_datagram(&[9, 9, 9], core, &peers, &private, &public), None);
    }
}
