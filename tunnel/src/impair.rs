//! A WAN path in one direction, sans-IO: random loss, one-way delay, and a bottleneck of a given rate with a
//! drop-tail queue. [`sim`](crate::sim) drives it in virtual time; the benchmark's UDP impairment relay drives
//! it with the real clock between real processes. [`PROFILES`] are the paths both measure.

use smoltcp::time::{Duration, Instant};

/// A path to measure: the WAN issue's profiles (a home or office uplink 10-80 ms from a VPS, some loss).
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// How tables name it.
    pub name: &'static str,
    /// One-way delay in milliseconds, each direction.
    pub one_way_ms: u64,
    /// Probability that a datagram is lost, each direction.
    pub loss: f64,
    /// Bottleneck rate in bytes per second, each direction; `None`: no bottleneck but the machine.
    pub rate: Option<u64>,
}

/// The profiles of the WAN issue, in its order.
pub const PROFILES: &[Profile] = &[
    Profile { name: "0 ms / 0%", one_way_ms: 0, loss: 0.0, rate: None },
    Profile { name: "10 ms / 0%", one_way_ms: 10, loss: 0.0, rate: None },
    Profile { name: "25 ms / 0%", one_way_ms: 25, loss: 0.0, rate: None },
    Profile { name: "25 ms / 0.1%", one_way_ms: 25, loss: 0.001, rate: None },
    Profile { name: "25 ms / 1%", one_way_ms: 25, loss: 0.01, rate: None },
    Profile { name: "40 ms / 0.5%, 100 Mbit/s", one_way_ms: 40, loss: 0.005, rate: Some(12_500_000) },
];

/// What becomes of a datagram offered to a [`Path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Lost at random.
    Lost,
    /// Dropped because the bottleneck's queue was full.
    Overflowed,
    /// Arrives at this time.
    Arrives(Instant),
}

/// One direction of a path. Datagrams leave the bottleneck in the order they entered it, so with a constant
/// delay they arrive in order.
#[derive(Debug, Clone)]
pub struct Path {
    delay: Duration,
    loss: f64,
    rate: Option<u64>,
    queue: usize,
    rng: u64,
    /// When the bottleneck has sent everything queued so far.
    busy_until: Instant,
}

impl Path {
    /// A path with this one-way `delay`, random `loss` (probability, drawn from a generator seeded with `seed`),
    /// and an optional bottleneck of `rate` bytes per second whose queue holds `queue` bytes.
    pub fn new(delay: Duration, loss: f64, rate: Option<u64>, queue: usize, seed: u64) -> Path {
        Path { delay, loss, rate, queue, rng: seed.max(1), busy_until: Instant::from_micros(0) }
    }

    /// The path of `profile`, its bottleneck queue one bandwidth-delay product (at least 1 MiB).
    pub fn of(profile: &Profile, seed: u64) -> Path {
        let delay = Duration::from_millis(profile.one_way_ms);
        let queue = profile.rate.map_or(0, |rate| (rate * 2 * profile.one_way_ms / 1000) as usize).max(1 << 20);
        Path::new(delay, profile.loss, profile.rate, queue, seed)
    }

    /// Draws whether a datagram is lost at random (a separate step, so a caller can spare some datagrams,
    /// such as handshakes, from loss but not from the bottleneck).
    pub fn lose(&mut self) -> bool {
        self.loss > 0.0 && chance(&mut self.rng) < self.loss
    }

    /// Puts a datagram of `len` bytes that did not get lost into the bottleneck at `now`: when it arrives, or
    /// `None` when the queue is full.
    pub fn enqueue(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let mut departs = now;
        if let Some(rate) = self.rate {
            let queued = (self.busy_until - now.min(self.busy_until)).total_micros() * rate / 1_000_000;
            if queued as usize + len > self.queue.max(len) {
                return None;
            }
            self.busy_until = self.busy_until.max(now) + Duration::from_micros(len as u64 * 1_000_000 / rate);
            departs = self.busy_until;
        }
        Some(departs + self.delay)
    }

    /// Offers a datagram of `len` bytes at `now`: [`lose`](Path::lose), then [`enqueue`](Path::enqueue).
    pub fn offer(&mut self, now: Instant, len: usize) -> Fate {
        if self.lose() {
            return Fate::Lost;
        }
        match self.enqueue(now, len) {
            Some(at) => Fate::Arrives(at),
            None => Fate::Overflowed,
        }
    }
}

/// xorshift64*: a uniform number in [0, 1).
pub(crate) fn chance(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    #[test]
    fn without_a_bottleneck_every_datagram_takes_the_delay() {
        let mut path = Path::new(Duration::from_millis(25), 0.0, None, 0, 1);
        for t in [0, 1, 1, 7] {
            assert_eq!(path.offer(at(t), 1500), Fate::Arrives(at(t + 25)));
        }
    }

    #[test]
    fn the_bottleneck_spaces_datagrams_and_drops_when_its_queue_is_full() {
        // 1 MB/s: a 1,000-byte datagram takes 1 ms; the queue holds 3,000 bytes.
        let mut path = Path::new(Duration::from_millis(10), 0.0, Some(1_000_000), 3_000, 1);
        assert_eq!(path.offer(at(0), 1_000), Fate::Arrives(at(11)));
        assert_eq!(path.offer(at(0), 1_000), Fate::Arrives(at(12)));
        assert_eq!(path.offer(at(0), 1_000), Fate::Arrives(at(13)));
        assert_eq!(path.offer(at(0), 1_000), Fate::Overflowed);
        // Once the queue drained a little there is room again, behind what is still queued.
        assert_eq!(path.offer(at(1), 1_000), Fate::Arrives(at(14)));
        // An idle bottleneck starts afresh.
        assert_eq!(path.offer(at(100), 1_000), Fate::Arrives(at(111)));
    }

    #[test]
    fn loss_follows_its_probability_and_the_seed() {
        let lost = |seed| {
            let mut path = Path::new(Duration::ZERO, 0.01, None, 0, seed);
            (0..100_000).filter(|_| path.offer(at(0), 100) == Fate::Lost).count()
        };
        let (a, b) = (lost(1), lost(2));
        assert!((800..1_200).contains(&a), "{a} of 100,000 lost at 1%");
        assert_eq!(a, lost(1), "the same seed draws the same losses");
        assert_ne!(a, b);
    }

    #[test]
    fn a_profiles_queue_is_one_bandwidth_delay_product_at_least_a_mebibyte() {
        let slow = PROFILES.iter().find(|p| p.rate.is_some()).unwrap();
        let mut path = Path::of(slow, 1);
        // 12.5 MB/s x 80 ms = 1 MB < 1 MiB: the queue holds 1 MiB, i.e. 1,048,576 / 1,000 whole datagrams.
        let admitted = (0..2_000).filter(|_| path.enqueue(at(0), 1_000).is_some()).count();
        assert_eq!(admitted, 1_048);
    }
}
