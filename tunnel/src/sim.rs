//! Two [`Core`]s wired together in memory, with virtual time and a link that can drop, duplicate, delay and
//! reorder datagrams, and a bottleneck of a given rate with a drop-tail queue (a WAN path: a home uplink to a
//! VPS). Deterministic for a given seed (WireGuard's own timers read the real clock, but a test finishes long
//! before any of them matters).

use crate::core::Core;
use crate::impair::{chance, Path};
use smoltcp::time::{Duration, Instant};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;

/// How the simulated link treats each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Conditions {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// One-way delay of every datagram.
    pub latency: Duration,
    /// Extra random delay of up to this much, which reorders datagrams.
    pub jitter: Duration,
    /// Apply loss and duplication to handshake messages too. Off by default: boringtun retries a lost
    /// handshake after 5 s of real time, which would only make tests slow.
    pub impair_handshakes: bool,
    /// Seed of the link's random choices.
    pub seed: u64,
    /// Bottleneck rate of each direction in bytes per second (outer datagrams); `None` for no limit.
    pub rate: Option<u64>,
    /// The bottleneck's queue in bytes: a datagram that finds it full is dropped (drop-tail).
    pub queue: usize,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            loss: 0.0,
            duplicate: 0.0,
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            impair_handshakes: false,
            seed: 1,
            rate: None,
            queue: 256 * 1024,
        }
    }
}

/// A datagram on the wire, ordered by arrival time (then by when it was sent).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    deliver_at: Instant,
    order: u64,
    to_b: bool,
    data: Vec<u8>,
}

/// Which end of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first core.
    A,
    /// The second core.
    B,
}

/// The wire: datagrams in flight and the random choices that impair them.
struct Link {
    conditions: Conditions,
    rng: u64,
    flights: BinaryHeap<Reverse<InFlight>>,
    sent: u64,
    /// The bottleneck and delay of each direction (towards A, towards B).
    paths: [Path; 2],
    lost: u64,
    duplicated: u64,
    overflowed: u64,
}

impl Link {
    /// Puts what one core sent on the wire, impaired as the conditions say.
    fn carry(&mut self, outbox: &mut Vec<(SocketAddr, Vec<u8>)>, now: Instant) {
        let c = self.conditions;
        for (to, data) in outbox.drain(..) {
            let to_b = to == Pair::B_ADDR;
            let impair = c.impair_handshakes || data.first() == Some(&MSG_DATA);
            if impair && chance(&mut self.rng) < c.loss {
                self.lost += 1;
                continue;
            }
            let copies = if impair && chance(&mut self.rng) < c.duplicate { 2 } else { 1 };
            self.duplicated += copies - 1;
            for _ in 0..copies {
                // The bottleneck: a datagram leaves once everything ahead of it has; the queue is bounded.
                let Some(arrives) = self.paths[usize::from(to_b)].enqueue(now, data.len()) else {
                    self.overflowed += 1;
                    continue;
                };
                let jitter = (c.jitter.total_micros() as f64 * chance(&mut self.rng)) as u64;
                let deliver_at = arrives + Duration::from_micros(jitter);
                self.sent += 1;
                self.flights.push(Reverse(InFlight { deliver_at, order: self.sent, to_b, data: data.clone() }));
            }
        }
    }
}

/// WireGuard's message type of transport data.
const MSG_DATA: u8 = 4;

/// Two cores and the link between them.
pub struct Pair {
    /// The first core; its outer address is [`Pair::A_ADDR`].
    pub a: Core,
    /// The second core; its outer address is [`Pair::B_ADDR`].
    pub b: Core,
    /// Virtual time.
    pub now: Instant,
    link: Link,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
}

impl Pair {
    /// Outer address of core A.
    pub const A_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 1), 51820));
    /// Outer address of core B.
    pub const B_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 2), 51820));

    /// Wires `a` and `b` together. Configure `a`'s endpoint as [`Pair::B_ADDR`] (and/or the reverse) so one
    /// side knows where to start the handshake.
    pub fn new(a: Core, b: Core, conditions: Conditions) -> Pair {
        Pair {
            a,
            b,
            now: Instant::from_millis(0),
            link: Link {
                conditions,
                rng: conditions.seed.max(1),
                flights: BinaryHeap::new(),
                sent: 0,
                paths: [0, 1].map(|_| Path::new(conditions.latency, 0.0, conditions.rate, conditions.queue, 1)),
                lost: 0,
                duplicated: 0,
                overflowed: 0,
            },
            outbox: Vec::new(),
        }
    }

    /// Datagrams the link dropped and duplicated so far.
    pub fn impairments(&self) -> (u64, u64) {
        (self.link.lost, self.link.duplicated)
    }

    /// Datagrams the bottleneck dropped because its queue was full.
    pub fn overflowed(&self) -> u64 {
        self.link.overflowed
    }

    /// The core on `side`.
    pub fn core(&mut self, side: Side) -> &mut Core {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Delivers what is due, polls both cores, and moves time to the next event. Returns false when nothing at
    /// all is pending (no datagram in flight and no timer before `limit`).
    pub fn step(&mut self, limit: Instant) -> bool {
        let mut arrived = Vec::new();
        while self.link.flights.peek().is_some_and(|Reverse(f)| f.deliver_at <= self.now) {
            arrived.push(self.link.flights.pop().expect("peeked").0);
        }
        let mut outbox = std::mem::take(&mut self.outbox);
        for flight in arrived {
            let (core, from) = if flight.to_b { (&mut self.b, Self::A_ADDR) } else { (&mut self.a, Self::B_ADDR) };
            core.handle_datagram(self.now, from, &flight.data, &mut |to: SocketAddr, d: &[u8]| {
                outbox.push((to, d.to_vec()))
            });
            self.link.carry(&mut outbox, self.now);
        }
        for core in [&mut self.a, &mut self.b] {
            core.poll(self.now, &mut |to: SocketAddr, d: &[u8]| outbox.push((to, d.to_vec())));
            self.link.carry(&mut outbox, self.now);
        }
        self.outbox = outbox;
        let next_flight = self.link.flights.peek().map(|Reverse(f)| f.deliver_at);
        let next_timer = self.a.poll_at(self.now).min(self.b.poll_at(self.now));
        let next = next_flight.map_or(next_timer, |f| f.min(next_timer));
        if next > limit && next_flight.is_none() {
            self.now = limit;
            return false;
        }
        // Never stand still: a socket with data to send asks to be polled "now" again.
        self.now = next.max(self.now + Duration::from_micros(10));
        true
    }

    /// Steps until `done` returns true or `timeout` of virtual time passes; returns whether `done` held.
    /// `done` runs after every step and may read and write the cores' sockets.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Pair) -> bool) -> bool {
        let limit = self.now + timeout;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= limit {
                return false;
            }
            self.step(limit);
        }
    }
}
