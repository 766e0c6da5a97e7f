//! POLAREDGE patch: a loss-tolerant congestion controller in the spirit of BBR, without pacing.
//!
//! Reno and CUBIC read every loss as congestion and halve their window; on a path with random loss (a WAN
//! link, Wi-Fi) that collapses throughput to a fraction of what the path carries. This controller instead
//! models the path: it measures the delivery rate once per round trip (acknowledged bytes over the round),
//! keeps the highest rate of the last rounds and the lowest raw RTT sample of the last seconds, and sizes the
//! window from their product, the bandwidth-delay product (BDP). Losses do not shrink the window: the
//! bottleneck's queue is what bounds the damage, and retransmission repairs the holes.
//!
//! Startup grows the window by every acknowledged byte (like slow start) up to two BDPs of the model, where it
//! stops growing without shrinking, until the measured rate stops growing by a quarter for three rounds.
//! Rounds in which the sender had little in flight (application limited) may raise the rate estimate but never
//! lower it.
//!
//! Without pacing the window is what limits the queue, so it is 1.25 BDP after startup (2 BDP kept the
//! bottleneck's queue full: see BENCHMARKS.md), plus room for ACK aggregation as BBR measures it (bytes
//! acknowledged beyond what the rate model expects, the largest of the last two rounds): a receiver that
//! answers a batch of segments at once would otherwise leave a short path idle between bursts. When the
//! minimum RTT is 10 s old the window drops to a few packets for 200 ms (at least two minimum RTTs) so the
//! queue drains and the path's RTT can be measured again, as BBR's ProbeRTT does: taking the smoothed RTT
//! instead let queueing delay inflate the model, which then filled the queue further. The samples come from
//! SACKed segments too (`RttEstimator::on_sacked`): timed only by the cumulative ACK, a segment above a hole
//! read two round trips, and a ProbeRTT on a lossy path doubled the model.

use crate::time::{Duration, Instant};

use super::Controller;
use crate::socket::tcp::RttEstimator;

const DEFAULT_MSS: usize = 1024;
/// Rounds over which the highest delivery rate is kept.
const BW_ROUNDS: usize = 10;
/// How long the lowest RTT stays valid.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Shortest time spent with a drained queue to measure the minimum RTT again.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Startup keeps at most this many bandwidth-delay products in flight. Growing by every acknowledged byte
/// alone, the window reached four BDPs in the three rounds it takes to see the rate stop growing, overflowed a
/// one-BDP bottleneck queue by two, and the burst of losses ended in a retransmission timeout (a second without
/// progress on the 40 ms / 0.5% / 100 Mbit/s profile). BBR's 2.89 still overflowed it; two fills path and queue.
const STARTUP_GAIN: usize = 2;
/// Startup ends after this many rounds without a quarter more rate.
const STARTUP_FLAT_ROUNDS: u8 = 3;
/// Longest burst of ACK aggregation the window makes room for, in time at the path's rate (as BBR caps it).
const MAX_AGGREGATION: Duration = Duration::from_millis(100);
/// Packets in flight allowed whatever the model says.
const MIN_WINDOW_PACKETS: usize = 4;
/// Window at the start, in packets (RFC 6928).
const INITIAL_WINDOW_PACKETS: usize = 10;

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BbrLite {
    mss: usize,
    rwnd: usize,
    cwnd: usize,
    startup: bool,
    /// After a retransmission timeout: growing back towards the model like startup.
    recovering: bool,
    flat_rounds: u8,
    startup_best: u64,
    /// Highest delivery rates (bytes per second) of the last rounds, a ring.
    bw: [u64; BW_ROUNDS],
    bw_next: usize,
    min_rtt_ms: u32,
    min_rtt_at: Instant,
    round_start: Option<Instant>,
    round_acked: usize,
    round_cwnd_limited: bool,
    /// While measuring the minimum RTT again: until when, and the lowest sample seen so far.
    probe_rtt_until: Option<Instant>,
    probe_min_ms: u32,
    /// ACK aggregation (BBR's "extra acked"): since when bytes arrive faster than the rate model expects, how
    /// many, and the largest excess of this round and the last (the window makes room for it).
    aggregation_start: Instant,
    aggregation_delivered: usize,
    extra_acked: [usize; 2],
}

impl BbrLite {
    pub fn new() -> Self {
        BbrLite {
            mss: DEFAULT_MSS,
            rwnd: 64 * 1024,
            cwnd: INITIAL_WINDOW_PACKETS * DEFAULT_MSS,
            startup: true,
            recovering: false,
            flat_rounds: 0,
            startup_best: 0,
            bw: [0; BW_ROUNDS],
            bw_next: 0,
            min_rtt_ms: u32::MAX,
            min_rtt_at: Instant::from_millis(0),
            round_start: None,
            round_acked: 0,
            round_cwnd_limited: false,
            probe_rtt_until: None,
            probe_min_ms: u32::MAX,
            aggregation_start: Instant::from_millis(0),
            aggregation_delivered: 0,
            extra_acked: [0; 2],
        }
    }

    fn max_bw(&self) -> u64 {
        self.bw.iter().copied().max().unwrap_or(0)
    }

    /// The model's bandwidth-delay product and its room for ACK aggregation, in bytes; none before the first
    /// RTT measurement.
    fn bdp_and_room(&self) -> Option<(usize, usize)> {
        if self.min_rtt_ms == u32::MAX {
            return None;
        }
        let bdp = (self.max_bw().saturating_mul(u64::from(self.min_rtt_ms)) / 1000) as usize;
        Some((bdp, self.extra_acked[0].max(self.extra_acked[1])))
    }

    /// 1.25 bandwidth-delay products plus the room for ACK aggregation, at least a few packets; nothing before
    /// the first RTT measurement.
    fn model_window(&self) -> usize {
        let window = self.bdp_and_room().map_or(0, |(bdp, room)| bdp * 5 / 4 + room);
        window.max(MIN_WINDOW_PACKETS * self.mss)
    }

    /// The most startup may have in flight: [`STARTUP_GAIN`] times the model's bandwidth-delay product (a round
    /// behind the window, which doubles per round while the rate grows), plus the room for ACK aggregation; no
    /// limit before the first rate measurement.
    fn startup_cap(&self) -> usize {
        match self.bdp_and_room() {
            Some((bdp, room)) if self.max_bw() > 0 => bdp.saturating_mul(STARTUP_GAIN) + room,
            _ => usize::MAX,
        }
    }

    /// Measures the minimum RTT again once it is old: returns whether the window is held small for that.
    fn probe_rtt(&mut self, now: Instant, sample: u32) -> bool {
        match self.probe_rtt_until {
            None if !self.startup && now >= self.min_rtt_at + MIN_RTT_WINDOW => {
                let two_rtts = Duration::from_millis(2 * u64::from(self.min_rtt_ms));
                self.probe_rtt_until = Some(now + PROBE_RTT_TIME.max(two_rtts));
                self.probe_min_ms = u32::MAX;
            }
            None => return false,
            Some(until) if now >= until => {
                self.probe_rtt_until = None;
                if self.probe_min_ms != u32::MAX {
                    self.min_rtt_ms = self.probe_min_ms;
                }
                self.min_rtt_at = now;
                // The window returns to the model at once; this round saw little in flight.
                self.round_start = Some(now);
                self.round_acked = 0;
                self.round_cwnd_limited = false;
                self.cwnd = self.model_window().min(self.rwnd.max(MIN_WINDOW_PACKETS * self.mss));
                return false;
            }
            Some(_) => self.probe_min_ms = self.probe_min_ms.min(sample),
        }
        self.cwnd = MIN_WINDOW_PACKETS * self.mss;
        true
    }

    fn end_round(&mut self, now: Instant, elapsed: Duration) {
        let micros = elapsed.total_micros().max(1);
        let sample = self.round_acked as u64 * 1_000_000 / micros;
        if self.round_cwnd_limited || sample > self.max_bw() {
            self.bw[self.bw_next] = sample;
            self.bw_next = (self.bw_next + 1) % BW_ROUNDS;
        }
        if self.startup {
            let best = self.max_bw();
            if best >= self.startup_best + self.startup_best / 4 {
                self.startup_best = best;
                self.flat_rounds = 0;
            } else {
                self.flat_rounds += 1;
                if self.flat_rounds >= STARTUP_FLAT_ROUNDS {
                    self.startup = false;
                }
            }
        }
        self.round_start = Some(now);
        self.round_acked = 0;
        self.round_cwnd_limited = false;
        self.extra_acked = [0, self.extra_acked[0]];
    }

    /// Tracks how far deliveries run ahead of the rate model: a receiver that acknowledges a batch of segments
    /// at once (the tunnel's driver reads up to 128 datagrams per wake-up) makes the sender idle between
    /// bursts unless the window holds the burst on top of the bandwidth-delay product.
    fn track_aggregation(&mut self, now: Instant, len: usize) {
        let bw = self.max_bw();
        let elapsed = (now - self.aggregation_start.min(now)).total_micros();
        let expected = (bw.saturating_mul(elapsed) / 1_000_000) as usize;
        if self.aggregation_delivered <= expected {
            // Deliveries fell back to the model's pace: a new epoch starts here.
            self.aggregation_start = now;
            self.aggregation_delivered = 0;
        }
        self.aggregation_delivered += len;
        let expected = if self.aggregation_start == now { 0 } else { expected };
        let cap = (bw.saturating_mul(MAX_AGGREGATION.total_micros()) / 1_000_000) as usize;
        let extra = self.aggregation_delivered.saturating_sub(expected).min(cap);
        self.extra_acked[0] = self.extra_acked[0].max(extra);
    }
}

impl Controller for BbrLite {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }

    fn on_delivered(&mut self, now: Instant, len: usize, in_flight: usize, rtt: &RttEstimator) {
        if len == 0 {
            return;
        }
        // smoltcp keeps RTTs in whole milliseconds: a sub-millisecond path reads as 1.
        let srtt = rtt.smoothed_rtt().max(1);
        let sample = match rtt.latest_rtt() {
            0 => srtt,
            sample => sample,
        };
        if sample <= self.min_rtt_ms {
            self.min_rtt_ms = sample;
            self.min_rtt_at = now;
        }
        if self.probe_rtt(now, sample) {
            return;
        }
        self.round_acked += len;
        self.track_aggregation(now, len);
        if in_flight + len >= self.cwnd / 2 {
            self.round_cwnd_limited = true;
        }
        let round_length = Duration::from_millis(u64::from(srtt));
        match self.round_start {
            None => self.round_start = Some(now),
            Some(start) if now >= start + round_length => self.end_round(now, now - start),
            Some(_) => {}
        }
        let model = self.model_window();
        self.cwnd = if self.startup {
            // Growth stops at the cap, but the window never shrinks to it (as Linux BBR): a connection that
            // was application-limited has a small model, and its next burst should not start below its window.
            self.cwnd.saturating_add(len).min(self.startup_cap()).max(self.cwnd).max(model)
        } else if self.recovering {
            let grown = self.cwnd.saturating_add(len);
            self.recovering = grown < model;
            grown.min(model)
        } else {
            model
        };
        self.cwnd = self.cwnd.min(self.rwnd.max(MIN_WINDOW_PACKETS * self.mss));
    }

    fn on_rto(&mut self, _now: Instant, _in_flight: usize) {
        // Everything unacknowledged goes out again: start small and grow back to the model (which is kept).
        self.cwnd = INITIAL_WINDOW_PACKETS * self.mss;
        self.recovering = !self.startup;
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
        if self.startup && self.max_bw() == 0 {
            self.cwnd = INITIAL_WINDOW_PACKETS * mss;
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MSS: usize = 1400;

    /// A path that acknowledges `rate` bytes per second after `rtt_ms`, in acknowledgements of `batch` bytes
    /// (a receiver that answers a wake-up's batch at once). Drives the controller for `seconds` with the
    /// sender always window-limited, shows it to `each` after every acknowledgement, and returns it.
    fn drive_with(rate: u64, rtt_ms: u32, batch: usize, seconds: u64, mut each: impl FnMut(&BbrLite)) -> BbrLite {
        let mut bbr = BbrLite::new();
        bbr.set_mss(MSS);
        bbr.set_remote_window(64 * 1024 * 1024);
        let mut rtt = RttEstimator::default();
        let gap_micros = batch as u64 * 1_000_000 / rate;
        let mut now = Instant::from_millis(1000);
        let end = now + Duration::from_secs(seconds);
        while now < end {
            rtt.sample(rtt_ms);
            bbr.on_delivered(now, batch, bbr.window(), &rtt);
            each(&bbr);
            now += Duration::from_micros(gap_micros);
        }
        bbr
    }

    fn drive(rate: u64, rtt_ms: u32, batch: usize, seconds: u64) -> BbrLite {
        drive_with(rate, rtt_ms, batch, seconds, |_| {})
    }

    #[test]
    fn an_application_limited_start_keeps_its_initial_window() {
        // Requests of 200 bytes every 100 ms on an 80 ms path: the rounds measure a tiny rate, so the startup
        // cap is a few hundred bytes; the window the next burst may use must not shrink to it.
        let mut bbr = BbrLite::new();
        bbr.set_mss(MSS);
        bbr.set_remote_window(1 << 20);
        let mut rtt = RttEstimator::default();
        let mut now = Instant::from_millis(1000);
        for _ in 0..3 {
            rtt.sample(80);
            bbr.on_delivered(now, 200, 0, &rtt);
            now += Duration::from_millis(100);
        }
        assert!(bbr.startup);
        assert!(bbr.startup_cap() < MSS, "the cap is tiny: {}", bbr.startup_cap());
        assert!(bbr.window() >= INITIAL_WINDOW_PACKETS * MSS, "window {}", bbr.window());
    }

    #[test]
    fn startup_keeps_at_most_two_bandwidth_delay_products_in_flight() {
        // 12.5 MB/s x 80 ms = 1 MB. Growing by every acknowledged byte through the three rounds that show the
        // rate has stopped growing, the window reached 4 MB: two more than path and a one-BDP queue hold.
        let mut peak = 0;
        let bbr = drive_with(12_500_000, 80, MSS, 5, |b| {
            if b.startup {
                peak = peak.max(b.window());
            }
        });
        assert!(!bbr.startup, "startup ends once the rate stops growing");
        let bdp = 1_000_000;
        assert!(peak <= 2 * bdp + bdp / 10, "startup peaked at {peak}");
        assert!(peak >= 3 * bdp / 2, "startup still fills the path and more: {peak}");
    }

    #[test]
    fn window_settles_above_the_bandwidth_delay_product_on_a_smooth_path() {
        // 12.5 MB/s x 80 ms = 1 MB; deliveries of one segment each, so almost no aggregation.
        let bbr = drive(12_500_000, 80, MSS, 5);
        assert!(!bbr.startup, "startup ends once the rate stops growing");
        let bdp = 1_000_000;
        assert!(bbr.window() >= bdp * 5 / 4, "window {} < 1.25 BDP", bbr.window());
        assert!(bbr.window() <= bdp * 3 / 2, "window {} > 1.5 BDP", bbr.window());
    }

    #[test]
    fn room_for_aggregation_on_a_short_path_holds_a_receiver_batch() {
        // 100 MB/s x 2 ms = 200 kB; the receiver answers 128 datagrams (180 kB) at once.
        let batch = 128 * MSS;
        let bbr = drive(100_000_000, 2, batch, 3);
        let bdp = 200_000;
        assert!(bbr.window() >= bdp * 5 / 4 + batch * 9 / 10, "window {}", bbr.window());
        assert!(bbr.window() <= bdp * 5 / 4 + batch * 2, "window {}", bbr.window());
    }

    #[test]
    fn losses_do_not_shrink_the_window_and_a_timeout_grows_back_to_the_model() {
        let mut bbr = drive(12_500_000, 80, MSS, 5);
        let settled = bbr.window();
        bbr.on_loss(Instant::from_millis(6000), settled);
        assert_eq!(bbr.window(), settled, "a loss is not read as congestion");
        bbr.on_rto(Instant::from_millis(6000), settled);
        assert_eq!(bbr.window(), INITIAL_WINDOW_PACKETS * MSS);
        let mut rtt = RttEstimator::default();
        rtt.sample(80);
        let mut now = Instant::from_millis(6100);
        for _ in 0..2000 {
            bbr.on_delivered(now, MSS, bbr.window(), &rtt);
            now += Duration::from_micros(112);
        }
        assert_eq!(bbr.window(), settled, "grown back to the kept model");
    }

    #[test]
    fn an_old_minimum_rtt_is_measured_again_with_a_small_window() {
        let mut bbr = drive(12_500_000, 80, MSS, 5);
        let mut rtt = RttEstimator::default();
        rtt.sample(80);
        // 10 s after the last minimum sample (the run above sampled 80 ms to its end), with queueing delay.
        rtt.sample(120);
        let later = Instant::from_millis(1000 + 5000 + 10_001);
        bbr.on_delivered(later, MSS, 0, &rtt);
        assert_eq!(bbr.window(), MIN_WINDOW_PACKETS * MSS, "drained for ProbeRTT");
        rtt.sample(81);
        bbr.on_delivered(later + Duration::from_millis(100), MSS, 0, &rtt);
        assert_eq!(bbr.window(), MIN_WINDOW_PACKETS * MSS, "held for 200 ms");
        bbr.on_delivered(later + Duration::from_millis(201), MSS, 0, &rtt);
        assert_eq!(bbr.min_rtt_ms, 81, "the minimum is what the drained path showed");
        assert!(bbr.window() > 1_000_000, "back to the model: {}", bbr.window());
    }
}
