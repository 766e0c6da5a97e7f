//! A DHCPv4 client exchange (RFC 2131: DISCOVER, OFFER, REQUEST, ACK) as a pure state machine, with the
//! message and IPv4/UDP framing it needs. The caller sends what [`Exchange::poll`] returns on a packet socket
//! and feeds received IPv4 packets to [`Exchange::receive`]; no sockets or clocks in here.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// Retransmission delays (RFC 2131 4.1 suggests 4 s doubling; a boot wants an answer sooner).
const RETRIES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// What the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// On-link prefix length (from the subnet mask; /24 if the server sent none).
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// Lease time (one day if the server sent none).
    pub duration: Duration,
    /// The server that granted it.
    pub server: Ipv4Addr,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Broadcast this IPv4 packet.
    Send(Vec<u8>),
    /// Wait for a packet until then.
    WaitUntil(Instant),
    /// No answer after every retry.
    GaveUp,
}

#[derive(Debug, Clone)]
enum State {
    Discovering,
    Requesting { offer: Lease },
    Bound,
}

/// One DISCOVER..ACK exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    mac: [u8; 6],
    xid: u32,
    state: State,
    attempt: usize,
    next_send: Option<Instant>,
}

impl Exchange {
    /// Starts an exchange for the interface with hardware address `mac`; `xid` should be random.
    pub fn new(mac: [u8; 6], xid: u32, now: Instant) -> Exchange {
        Exchange { mac, xid, state: State::Discovering, attempt: 0, next_send: Some(now) }
    }

    /// A packet to send now, or how long to wait for answers.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let Some(at) = self.next_send else { return Poll::GaveUp };
        if now < at {
            return Poll::WaitUntil(at);
        }
        if matches!(self.state, State::Bound) {
            return Poll::GaveUp;
        }
        let Some(delay) = RETRIES.get(self.attempt) else {
            self.next_send = None;
            return Poll::GaveUp;
        };
        self.attempt += 1;
        self.next_send = Some(now + *delay);
        let message = match &self.state {
            State::Discovering => self.message(DISCOVER, None),
            State::Requesting { offer } => self.message(REQUEST, Some(offer)),
            State::Bound => unreachable!("handled above"),
        };
        Poll::Send(udp_ipv4(&message))
    }

    /// Feeds one received IPv4 packet; returns the lease once the server acknowledged it.
    pub fn receive(&mut self, now: Instant, ipv4: &[u8]) -> Option<Lease> {
        let payload = udp_payload(ipv4, CLIENT_PORT)?;
        let (kind, lease) = parse_reply(payload, self.xid, &self.mac)?;
        match (&self.state, kind) {
            (State::Discovering, OFFER) => {
                self.state = State::Requesting { offer: lease };
                self.attempt = 0;
                self.next_send = Some(now);
                None
            }
            (State::Requesting { offer }, ACK) if lease.address == offer.address => {
                self.state = State::Bound;
                Some(lease)
            }
            (State::Requesting { .. }, NAK) => {
                self.state = State::Discovering;
                self.attempt = 0;
                self.next_send = Some(now);
                None
            }
            _ => None,
        }
    }

    fn message(&self, kind: u8, offer: Option<&Lease>) -> Vec<u8> {
        let mut m = vec![0u8; 236];
        m[0] = 1; // BOOTREQUEST
        m[1] = 1; // Ethernet
        m[2] = 6;
        m[4..8].copy_from_slice(&self.xid.to_be_bytes());
        m[10] = 0x80; // broadcast flag: we cannot receive unicast before we have the address
        m[28..34].copy_from_slice(&self.mac);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        m.extend_from_slice(&[61, 7, 1]);
        m.extend_from_slice(&self.mac);
        m.extend_from_slice(&[55, 4, 1, 3, 6, 51]); // subnet mask, router, DNS, lease time
        if let Some(offer) = offer {
            m.extend_from_slice(&[50, 4]);
            m.extend_from_slice(&offer.address.octets());
            m.extend_from_slice(&[54, 4]);
            m.extend_from_slice(&offer.server.octets());
        }
        m.push(255);
        m.resize(m.len().max(300), 0); // BOOTP's minimum message size
        m
    }
}

/// The reply's message type and what it offers, if it is a reply to us.
fn parse_reply(m: &[u8], xid: u32, mac: &[u8; 6]) -> Option<(u8, Lease)> {
    if m.len() < 240 || m[0] != 2 || m[4..8] != xid.to_be_bytes() || &m[28..34] != mac || m[236..240] != MAGIC {
        return None;
    }
    let address = Ipv4Addr::new(m[16], m[17], m[18], m[19]);
    let mut lease = Lease {
        address,
        prefix: 24,
        router: None,
        dns: vec![],
        duration: Duration::from_secs(86_400),
        server: Ipv4Addr::new(m[20], m[21], m[22], m[23]),
    };
    let mut kind = None;
    let mut options = &m[240..];
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => {
                options = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..len as usize)?;
        options = &rest[len as usize..];
        let addr = |v: &[u8]| Ipv4Addr::new(v[0], v[1], v[2], v[3]);
        match (code, value.len()) {
            (53, 1) => kind = Some(value[0]),
            (1, 4) => {
                let mask = u32::from(addr(value));
                if mask.leading_ones() + mask.trailing_zeros() == 32 {
                    lease.prefix = mask.leading_ones() as u8;
                }
            }
            (3, n) if n >= 4 => lease.router = Some(addr(value)),
            (6, n) if n >= 4 => lease.dns = value.chunks_exact(4).map(addr).collect(),
            (51, 4) => {
                lease.duration =
                    Duration::from_secs(u32::from_be_bytes([value[0], value[1], value[2], value[3]]).into())
            }
            (54, 4) => lease.server = addr(value),
            _ => {}
        }
    }
    Some((kind?, lease))
}

/// Wraps a DHCP message in UDP (68 -> 67) and IPv4 (0.0.0.0 -> 255.255.255.255).
fn udp_ipv4(payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]); // id, flags, TTL, UDP, checksum (below)
    p.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
    let checksum = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    p.extend_from_slice(&SERVER_PORT.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    p
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP payload of an IPv4 packet addressed to `port`.
fn udp_payload(ip: &[u8], port: u16) -> Option<&[u8]> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let udp = ip.get(header..total)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).clamp(8, udp.len());
    Some(&udp[8..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A server's reply to `request` (an IPv4 packet from the client), as a server would frame it.
    fn reply(request: &[u8], kind: u8, yiaddr: [u8; 4], with_options: bool) -> Vec<u8> {
        let asked = udp_payload(request, SERVER_PORT).expect("client sends to port 67");
        let mut m = vec![0u8; 236];
        m[0] = 2;
        m[1] = 1;
        m[2] = 6;
        m[4..8].copy_from_slice(&asked[4..8]);
        m[16..20].copy_from_slice(&yiaddr);
        m[20..24].copy_from_slice(&[10, 0, 2, 2]);
        m[28..34].copy_from_slice(&asked[28..34]);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        if with_options {
            m.extend_from_slice(&[1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 4, 10, 0, 2, 3]);
            m.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10, 54, 4, 10, 0, 2, 2, 0, 0]);
        }
        m.push(255);
        let mut ip = udp_ipv4(&m);
        ip[22..24].copy_from_slice(&CLIENT_PORT.to_be_bytes()); // destination port 68
        ip[20..22].copy_from_slice(&SERVER_PORT.to_be_bytes());
        ip
    }

    fn sent(e: &mut Exchange, now: Instant) -> Vec<u8> {
        match e.poll(now) {
            Poll::Send(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    #[test]
    fn discover_offer_request_ack_gives_the_lease() {
        let t0 = Instant::now();
        let mut e = Exchange::new(MAC, 0xfeed_beef, t0);
        let discover = sent(&mut e, t0);
        assert_eq!(ipv4_checksum(&discover[..20]), 0, "a valid IPv4 header checksums to zero");
        let dhcp = udp_payload(&discover, SERVER_PORT).unwrap();
        assert_eq!(&dhcp[240..243], &[53, 1, DISCOVER]);
        assert_eq!(dhcp.len(), 300);
        assert_eq!(e.receive(t0, &reply(&discover, OFFER, [10, 0, 2, 15], true)), None);
        let request = sent(&mut e, t0);
        let dhcp = udp_payload(&request, SERVER_PORT).unwrap();
        assert_eq!(&dhcp[240..243], &[53, 1, REQUEST]);
        assert!(dhcp.windows(6).any(|w| w == [50, 4, 10, 0, 2, 15]), "asks for the offered address");
        let lease = e.receive(t0, &reply(&request, ACK, [10, 0, 2, 15], true)).unwrap();
        assert_eq!(
            lease,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                duration: Duration::from_secs(3600),
                server: Ipv4Addr::new(10, 0, 2, 2),
            }
        );
    }

    #[test]
    fn retries_then_gives_up_and_ignores_foreign_replies() {
        let t0 = Instant::now();
        let mut e = Exchange::new(MAC, 7, t0);
        let discover = sent(&mut e, t0);
        assert_eq!(e.poll(t0), Poll::WaitUntil(t0 + RETRIES[0]));
        // Another client's transaction, and garbage, change nothing.
        let mut other = reply(&discover, OFFER, [10, 0, 2, 16], false);
        other[28 + 4] ^= 1;
        assert_eq!(e.receive(t0, &other), None);
        assert_eq!(e.receive(t0, b"\x45garbage"), None);
        let mut now = t0;
        // One send per retry delay: the first at once, the last followed by the longest wait.
        for delay in &RETRIES[..RETRIES.len() - 1] {
            now += *delay;
            sent(&mut e, now);
        }
        now += RETRIES[RETRIES.len() - 1];
        assert_eq!(e.poll(now), Poll::GaveUp);
    }

    #[test]
    fn a_nak_starts_over_and_defaults_fill_missing_options() {
        let t0 = Instant::now();
        let mut e = Exchange::new(MAC, 9, t0);
        let discover = sent(&mut e, t0);
        e.receive(t0, &reply(&discover, OFFER, [192, 0, 2, 9], false));
        let request = sent(&mut e, t0);
        assert_eq!(e.receive(t0, &reply(&request, NAK, [0; 4], false)), None);
        let again = sent(&mut e, t0);
        assert_eq!(&udp_payload(&again, SERVER_PORT).unwrap()[240..243], &[53, 1, DISCOVER]);
        e.receive(t0, &reply(&again, OFFER, [192, 0, 2, 9], false));
        let request = sent(&mut e, t0);
        let lease = e.receive(t0, &reply(&request, ACK, [192, 0, 2, 9], false)).unwrap();
        assert_eq!((lease.prefix, lease.router, lease.duration), (24, None, Duration::from_secs(86_400)));
    }
}
