//! Listening without a backlog: smoltcp's listening socket takes exactly one connection, and a SYN that finds
//! no listening socket is answered with a reset. So the core looks at the decrypted packets queued for smoltcp
//! before each poll, counts the connection requests (SYN without ACK) per listening port, and opens as many
//! fresh listening sockets as there are requests beyond the idle ones — up to the connection cap, past which a
//! request is refused (smoltcp resets it) and counted.
//!
//! This module holds the pure parts: reading a packet's connection request, and the bookkeeping of one port.

use smoltcp::iface::SocketHandle;
use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

/// Listening sockets kept open beyond those that SYNs claim, per port: new requests that arrive between two
/// polls find one at once, and closing them again does not churn.
pub(crate) const SPARE_LISTENERS: usize = 2;

/// The destination port of a TCP connection request (SYN without ACK) carried in an IPv4 or IPv6 packet, or
/// `None` for anything else (other protocols, other segments, truncated packets, IPv6 extension headers,
/// IPv4 fragments after the first).
pub(crate) fn connection_request(packet: &[u8]) -> Option<u16> {
    let segment = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 {
                return None;
            }
            ip.payload()
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            ip.payload()
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(segment).ok()?;
    (tcp.syn() && !tcp.ack() && !tcp.rst()).then(|| tcp.dst_port())
}

/// One listening port: sockets still listening or in their handshake, and the connections ready to accept.
#[derive(Debug, Default)]
pub(crate) struct ListenPort {
    /// Sockets in `Listen` or `SynReceived`.
    pub pending: Vec<SocketHandle>,
    /// Connection requests seen in the packets queued for the next poll.
    pub requests: usize,
    /// No new connections: the handshakes under way finish and are accepted, new requests are reset.
    pub draining: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpRepr, Ipv4Address, Ipv6Address, TcpControl, TcpRepr, TcpSeqNumber};

    fn segment(src: IpAddress, dst: IpAddress, control: TcpControl, ack: bool) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 50000,
            dst_port: 7000,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.then_some(TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: Some(1380),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
        let mut bytes = vec![0; ip.buffer_len()];
        let checksums = ChecksumCapabilities::default();
        ip.emit(&mut bytes[..], &checksums);
        let header = ip.header_len();
        tcp.emit(&mut TcpPacket::new_unchecked(&mut bytes[header..]), &src, &dst, &checksums);
        bytes
    }

    #[test]
    fn a_syn_is_a_request_for_its_port_over_both_families() {
        let v4 = (Ipv4Address::new(10, 88, 0, 1).into(), Ipv4Address::new(10, 88, 0, 2).into());
        let v6 = (
            Ipv6Address::new(0xfd88, 0, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Address::new(0xfd88, 0, 0, 0, 0, 0, 0, 2).into(),
        );
        for (src, dst) in [v4, v6] {
            assert_eq!(connection_request(&segment(src, dst, TcpControl::Syn, false)), Some(7000));
            // SYN-ACK (an answer to our own connect), RST, FIN and plain data are not requests.
            assert_eq!(connection_request(&segment(src, dst, TcpControl::Syn, true)), None);
            assert_eq!(connection_request(&segment(src, dst, TcpControl::Rst, false)), None);
            assert_eq!(connection_request(&segment(src, dst, TcpControl::Fin, true)), None);
            assert_eq!(connection_request(&segment(src, dst, TcpControl::None, true)), None);
        }
    }

    #[test]
    fn truncated_and_foreign_packets_are_not_requests() {
        let syn = segment(
            Ipv4Address::new(10, 88, 0, 1).into(),
            Ipv4Address::new(10, 88, 0, 2).into(),
            TcpControl::Syn,
            false,
        );
        for cut in 0..syn.len() {
            assert_eq!(connection_request(&syn[..cut]), None, "cut at {cut}");
        }
        assert_eq!(connection_request(&[]), None);
        assert_eq!(connection_request(&[0x55; 60]), None);
        let mut udp = syn.clone();
        udp[9] = 17; // protocol field: UDP
        assert_eq!(connection_request(&udp), None);
    }
}
