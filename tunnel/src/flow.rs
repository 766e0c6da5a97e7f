//! UDP through the tunnel, sans-IO: how a datagram is framed inside the tunnel, and the flow table both ends
//! keep.
//!
//! One side exposes a public UDP port (the agent); each public client address there is a *flow*. Its datagrams
//! cross the tunnel as UDP datagrams to the other side's relay port (the client), each framed with the flow's
//! id and, towards the relay, the target the flow is for (a pod). The relay opens one kernel UDP socket per
//! flow to that target and frames the answers back with the flow id. Flows end after an idle timeout; a cap
//! bounds how many exist at once.
//!
//! Frames (all integers big-endian):
//! - towards the relay: `'U' 1 flow:u32 family:u8 (4|6) address(4|16) port:u16 payload`
//! - from the relay:    `'U' 2 flow:u32 payload`

use smoltcp::time::{Duration, Instant};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: u8 = b'U';
const TO_RELAY: u8 = 1;
const FROM_RELAY: u8 = 2;

/// The longest frame header (towards the relay, IPv6 target).
pub const MAX_HEADER: usize = 2 + 4 + 1 + 16 + 2;

/// A decoded frame: which flow, which way, and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Towards the relay: a datagram of flow `flow`, for `target`.
    ToRelay {
        /// The exposing side's id of the flow.
        flow: u32,
        /// Where the relay sends the payload.
        target: SocketAddr,
        /// The public client's datagram.
        payload: &'a [u8],
    },
    /// From the relay: the target's answer on flow `flow`.
    FromRelay {
        /// The flow it answers.
        flow: u32,
        /// The target's datagram.
        payload: &'a [u8],
    },
}

/// Writes the header of a datagram towards the relay into `out`; returns its length.
pub fn write_to_relay(out: &mut [u8; MAX_HEADER], flow: u32, target: SocketAddr) -> usize {
    out[0] = MAGIC;
    out[1] = TO_RELAY;
    out[2..6].copy_from_slice(&flow.to_be_bytes());
    let at = match target.ip() {
        IpAddr::V4(ip) => {
            out[6] = 4;
            out[7..11].copy_from_slice(&ip.octets());
            11
        }
        IpAddr::V6(ip) => {
            out[6] = 6;
            out[7..23].copy_from_slice(&ip.octets());
            23
        }
    };
    out[at..at + 2].copy_from_slice(&target.port().to_be_bytes());
    at + 2
}

/// Writes the header of an answer from the relay into `out`; returns its length.
pub fn write_from_relay(out: &mut [u8; MAX_HEADER], flow: u32) -> usize {
    out[0] = MAGIC;
    out[1] = FROM_RELAY;
    out[2..6].copy_from_slice(&flow.to_be_bytes());
    6
}

/// Reads a frame. `None` for anything that is not one (the datagram is dropped and counted).
pub fn decode(datagram: &[u8]) -> Option<Frame<'_>> {
    let (&[MAGIC, kind], rest) = datagram.split_first_chunk::<2>()? else { return None };
    let (flow, rest) = rest.split_first_chunk::<4>()?;
    let flow = u32::from_be_bytes(*flow);
    match kind {
        FROM_RELAY => Some(Frame::FromRelay { flow, payload: rest }),
        TO_RELAY => {
            let (&family, rest) = rest.split_first()?;
            let (ip, rest) = match family {
                4 => {
                    let (ip, rest) = rest.split_first_chunk::<4>()?;
                    (IpAddr::V4(Ipv4Addr::from(*ip)), rest)
                }
                6 => {
                    let (ip, rest) = rest.split_first_chunk::<16>()?;
                    (IpAddr::V6(Ipv6Addr::from(*ip)), rest)
                }
                _ => return None,
            };
            let (port, payload) = rest.split_first_chunk::<2>()?;
            Some(Frame::ToRelay { flow, target: SocketAddr::new(ip, u16::from_be_bytes(*port)), payload })
        }
        _ => None,
    }
}

/// Why a flow was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The flow cap is reached.
    Full,
    /// The caller's policy said no (no target, or one it may not reach).
    Refused,
}

struct Entry<V> {
    value: V,
    last: Instant,
}

/// Flows by key, each with the time it last carried a datagram. Lookups and updates of an existing flow never
/// allocate; the table grows only when flows are opened.
pub struct FlowTable<K, V> {
    entries: HashMap<K, Entry<V>>,
    cap: usize,
    idle: Duration,
}

impl<K: Hash + Eq + Clone, V> FlowTable<K, V> {
    /// At most `cap` flows; a flow that carries nothing for `idle` is ended by [`FlowTable::expire`].
    pub fn new(cap: usize, idle: Duration) -> FlowTable<K, V> {
        FlowTable { entries: HashMap::new(), cap, idle }
    }

    /// The flow of `key`, marked active at `now`; or, if there is none, a new one made by `open` (which may
    /// refuse), within the cap.
    pub fn get_or_open(&mut self, key: &K, now: Instant, open: impl FnOnce() -> Option<V>) -> Result<&mut V, Refusal> {
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.cap {
                return Err(Refusal::Full);
            }
            let value = open().ok_or(Refusal::Refused)?;
            self.entries.insert(key.clone(), Entry { value, last: now });
        }
        let entry = self.entries.get_mut(key).expect("present or just inserted");
        entry.last = now;
        Ok(&mut entry.value)
    }

    /// The flow of `key`, marked active at `now`.
    pub fn touch(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let entry = self.entries.get_mut(key)?;
        entry.last = now;
        Some(&mut entry.value)
    }

    /// Ends the flow of `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|e| e.value)
    }

    /// Ends the flows idle for the idle timeout or longer at `now`, and hands them over.
    pub fn expire(&mut self, now: Instant) -> Vec<(K, V)> {
        let idle = self.idle;
        let expired: Vec<K> =
            self.entries.iter().filter(|(_, e)| now - e.last >= idle).map(|(k, _)| k.clone()).collect();
        expired.into_iter().filter_map(|k| self.entries.remove(&k).map(|e| (k, e.value))).collect()
    }

    /// Ends every flow for which `keep` says no (e.g. those of a port that closed).
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) -> Vec<(K, V)> {
        let gone: Vec<K> = self.entries.iter().filter(|(k, e)| !keep(k, &e.value)).map(|(k, _)| k.clone()).collect();
        gone.into_iter().filter_map(|k| self.entries.remove(&k).map(|e| (k, e.value))).collect()
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_both_ways_and_both_families() {
        let mut header = [0u8; MAX_HEADER];
        for target in ["10.1.2.3:53", "[fd00::1:2]:5353"] {
            let target: SocketAddr = target.parse().unwrap();
            let len = write_to_relay(&mut header, 0xdead_beef, target);
            let mut datagram = header[..len].to_vec();
            datagram.extend_from_slice(b"query");
            assert_eq!(decode(&datagram), Some(Frame::ToRelay { flow: 0xdead_beef, target, payload: b"query" }));
        }
        let len = write_from_relay(&mut header, 7);
        let mut datagram = header[..len].to_vec();
        datagram.extend_from_slice(b"answer");
        assert_eq!(decode(&datagram), Some(Frame::FromRelay { flow: 7, payload: b"answer" }));
        // An empty payload is a valid datagram.
        assert_eq!(decode(&header[..len]), Some(Frame::FromRelay { flow: 7, payload: b"" }));
    }

    #[test]
    fn anything_else_is_not_a_frame() {
        let mut header = [0u8; MAX_HEADER];
        let len = write_to_relay(&mut header, 1, "[fd00::1]:53".parse().unwrap());
        for cut in 0..len {
            assert_eq!(decode(&header[..cut]), None, "truncated to {cut} bytes");
        }
        assert_eq!(decode(b"X\x01\0\0\0\x01\x04\x0a\0\0\x01\0\x35"), None, "wrong magic");
        assert_eq!(decode(b"U\x03\0\0\0\x01"), None, "unknown kind");
        assert_eq!(decode(b"U\x01\0\0\0\x01\x05\x0a\0\0\x01\0\x35"), None, "unknown family");
    }

    #[test]
    fn flows_open_within_the_cap_and_end_when_idle() {
        let at = Instant::from_secs;
        let mut flows: FlowTable<u32, &str> = FlowTable::new(2, Duration::from_secs(30));
        assert_eq!(flows.get_or_open(&1, at(0), || Some("a")).copied(), Ok("a"));
        assert_eq!(flows.get_or_open(&2, at(0), || None), Err(Refusal::Refused));
        assert_eq!(flows.get_or_open(&2, at(0), || Some("b")).copied(), Ok("b"));
        assert_eq!(flows.get_or_open(&3, at(0), || Some("c")), Err(Refusal::Full));
        assert_eq!(flows.get_or_open(&1, at(1), || unreachable!("flow 1 exists")).copied(), Ok("a"));
        assert_eq!(flows.touch(&2, at(20)).copied(), Some("b"));
        assert!(flows.expire(at(30)).is_empty(), "flow 1 was active at 1 s: not idle for 30 s yet");
        assert_eq!(flows.expire(at(31)), vec![(1, "a")]);
        assert_eq!(flows.get_or_open(&3, at(31), || Some("c")).copied(), Ok("c"), "room again");
        assert_eq!(flows.retain(|&k, _| k != 2), vec![(2, "b")]);
        assert_eq!(flows.len(), 1);
    }
}
