use super::*;

use crate::iface::SocketHandle;
use crate::socket::tcp::Socket;

/// POLAREDGE patch: entries of the direct-mapped cache from a segment's 4-tuple to the socket slot that took
/// it last. With thousands of connections the scan below ran through every socket for every segment.
pub(crate) const TCP_SLOT_CACHE: usize = 4096;

fn tuple_slot(src: IpAddress, dst_port: u16, src_port: u16) -> usize {
    let address: u64 = match src {
        #[cfg(feature = "proto-ipv4")]
        IpAddress::Ipv4(a) => u64::from(a.to_bits()),
        #[cfg(feature = "proto-ipv6")]
        IpAddress::Ipv6(a) => {
            let bits = a.to_bits();
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    let hash = (address ^ (u64::from(src_port) << 48 | u64::from(dst_port) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> 32) as usize % TCP_SLOT_CACHE
}

impl InterfaceInner {
    pub(crate) fn process_tcp<'frame>(
        &mut self,
        sockets: &mut SocketSet,
        handled_by_raw_socket: bool,
        ip_repr: IpRepr,
        ip_payload: &'frame [u8],
    ) -> Option<Packet<'frame>> {
        let (src_addr, dst_addr) = (ip_repr.src_addr(), ip_repr.dst_addr());

        // Per RFC 1122 §3.2.1.3, the unspecified address must never appear as a source
        // or destination in any IP datagram. Drop such TCP segments early to avoid
        // creating sockets with unspecified peers (which would later panic on egress).
        // This is not done at the iface level because it might be useful with
        // UDP or raw sockets, but it's definitely not useful for TCP.
        if src_addr.is_unspecified() || dst_addr.is_unspecified() {
            return None;
        }

        let tcp_packet = check!(TcpPacket::new_checked(ip_payload));
        let tcp_repr = check!(TcpRepr::parse(
            &tcp_packet,
            &src_addr,
            &dst_addr,
            &self.caps.checksum
        ));

        // POLAREDGE patch: a segment carrying an ACK is only ever accepted by a socket bound to exactly its
        // 4-tuple (listening sockets refuse it), so try the slot that took this 4-tuple last before scanning.
        // `accepts` re-checks the tuple: a stale entry costs one comparison, never a wrong delivery.
        let cache_key = tcp_repr
            .ack_number
            .map(|_| tuple_slot(src_addr, tcp_repr.dst_port, tcp_repr.src_port));
        if let Some(key) = cache_key {
            let slot = self.tcp_slots[key];
            if let Some(tcp_socket) = sockets
                .item_at_mut(slot)
                .and_then(|i| Socket::downcast_mut(&mut i.socket))
            {
                if tcp_socket.accepts(self, &ip_repr, &tcp_repr) {
                    if let Some(touched) = &mut self.touched {
                        touched.push(SocketHandle::from_index(slot));
                    }
                    return tcp_socket
                        .process(self, &ip_repr, &tcp_repr)
                        .map(|(ip, tcp)| Packet::new(ip, IpPayload::Tcp(tcp)));
                }
            }
        }

        for item in sockets.items_mut() {
            let slot = item.meta.handle.index();
            let Some(tcp_socket) = Socket::downcast_mut(&mut item.socket) else {
                continue;
            };
            if tcp_socket.accepts(self, &ip_repr, &tcp_repr) {
                if let Some(key) = cache_key {
                    self.tcp_slots[key] = slot;
                }
                if let Some(touched) = &mut self.touched {
                    touched.push(SocketHandle::from_index(slot));
                }
                return tcp_socket
                    .process(self, &ip_repr, &tcp_repr)
                    .map(|(ip, tcp)| Packet::new(ip, IpPayload::Tcp(tcp)));
            }
        }

        if tcp_repr.control == TcpControl::Rst
            || ip_repr.dst_addr().is_unspecified()
            || ip_repr.src_addr().is_unspecified()
            || handled_by_raw_socket
        {
            // Never reply to a TCP RST packet with another TCP RST packet.
            // Never send a TCP RST packet with unspecified addresses.
            // Never send a TCP RST when packet has been handled by raw socket.
            None
        } else {
            // The packet wasn't handled by a socket, send a TCP RST packet.
            let (ip, tcp) = tcp::Socket::rst_reply(&ip_repr, &tcp_repr);
            Some(Packet::new(ip, IpPayload::Tcp(tcp)))
        }
    }
}
