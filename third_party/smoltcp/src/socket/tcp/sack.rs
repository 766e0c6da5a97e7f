//! POLAREDGE patch: the sender's SACK scoreboard and loss recovery (RFC 2018 blocks, recovery in the spirit of
//! RFC 6675 with a RACK-like check for lost retransmissions).
//!
//! Upstream smoltcp sends SACK blocks but ignores the ones it receives: after a loss it retransmits one segment
//! per three duplicate ACKs, so a window with several losses repairs one hole per round trip and usually ends
//! in a retransmission timeout. With the scoreboard the sender knows which bytes the receiver holds, marks the
//! holes below them as lost once enough data above them arrived, and retransmits every lost hole within the
//! first round trip of the recovery, as far as the congestion window allows; after a timeout it resends only
//! what the receiver does not hold.
//!
//! Everything here is pure bookkeeping on sequence numbers; `tcp.rs` drives it.

use crate::wire::TcpSeqNumber;

/// Most SACKed ranges remembered. Beyond it the highest range is forgotten: it is reported again by later
/// ACKs, and forgetting a range only means its bytes may be sent once more.
const MAX_RANGES: usize = 32;

/// Holes below this many SACKed segments are lost (RFC 6675's DupThresh).
pub(super) const DUP_THRESH: usize = 3;

/// Byte ranges above the cumulative ACK that the receiver reported holding: sorted, disjoint, not adjacent.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Scoreboard {
    ranges: [(TcpSeqNumber, TcpSeqNumber); MAX_RANGES],
    len: usize,
}

/// One loss recovery episode: from the first lost hole until everything sent before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Recovery {
    /// The recovery ends when the cumulative ACK reaches this (the highest sequence sent at its start).
    pub end: TcpSeqNumber,
    /// Lost holes below this were retransmitted in this episode.
    pub rexmit_next: TcpSeqNumber,
    /// The highest sequence sent when the segment at the cumulative ACK was last retransmitted: SACKs for data
    /// beyond it mean that retransmission was lost as well (the path delivers in order).
    pub head_mark: Option<TcpSeqNumber>,
}

impl Default for Scoreboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Scoreboard {
    pub const fn new() -> Self {
        Scoreboard { ranges: [(TcpSeqNumber(0), TcpSeqNumber(0)); MAX_RANGES], len: 0 }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ranges(&self) -> &[(TcpSeqNumber, TcpSeqNumber)] {
        &self.ranges[..self.len]
    }

    /// Records the SACK blocks of an ACK whose cumulative acknowledgement is `una`; blocks reaching beyond
    /// `limit` (more than was ever sent) are bogus and ignored. Returns how many more bytes are SACKed than
    /// before (0 if a full board forgot more than it learnt).
    pub fn update(&mut self, una: TcpSeqNumber, blocks: &[Option<(u32, u32)>], limit: TcpSeqNumber) -> usize {
        self.prune(una);
        let before = self.sacked_bytes();
        for &(left, right) in blocks.iter().flatten() {
            let (left, right) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
            // Empty, below the cumulative ACK (a D-SACK or a stale block) or beyond what was sent: ignore.
            if left >= right || right <= una || right > limit {
                continue;
            }
            self.insert(left.max(una), right);
        }
        // A full board forgets its highest range, so the total may also shrink.
        self.sacked_bytes().saturating_sub(before)
    }

    /// Forgets what the cumulative ACK `una` covers.
    fn prune(&mut self, una: TcpSeqNumber) {
        let gone = self.ranges().iter().take_while(|r| r.1 <= una).count();
        self.ranges.copy_within(gone..self.len, 0);
        self.len -= gone;
        if self.len > 0 && self.ranges[0].0 < una {
            self.ranges[0].0 = una;
        }
    }

    fn insert(&mut self, left: TcpSeqNumber, right: TcpSeqNumber) {
        // Ranges [first, last) touch the new one and merge with it.
        let first = self.ranges().iter().take_while(|r| r.1 < left).count();
        let last = first + self.ranges()[first..].iter().take_while(|r| r.0 <= right).count();
        if first < last {
            let merged = (self.ranges[first].0.min(left), self.ranges[last - 1].1.max(right));
            self.ranges[first] = merged;
            self.ranges.copy_within(last..self.len, first + 1);
            self.len -= last - first - 1;
            return;
        }
        if self.len == MAX_RANGES {
            if first == MAX_RANGES {
                return; // the new range would be the highest: it is the one to forget
            }
            self.len -= 1;
        }
        self.ranges.copy_within(first..self.len, first + 1);
        self.ranges[first] = (left, right);
        self.len += 1;
    }

    /// Bytes SACKed in all.
    pub fn sacked_bytes(&self) -> usize {
        self.ranges().iter().map(|&(l, r)| r - l).sum()
    }

    /// Bytes SACKed below `seq`.
    pub fn sacked_below(&self, seq: TcpSeqNumber) -> usize {
        self.ranges().iter().take_while(|r| r.0 < seq).map(|&(l, r)| r.min(seq) - l).sum()
    }

    /// The highest SACKed sequence (the end of the last range).
    pub fn highest(&self) -> Option<TcpSeqNumber> {
        self.ranges().last().map(|r| r.1)
    }

    /// If `seq` lies in a SACKed range, where that range ends.
    pub fn sacked_end(&self, seq: TcpSeqNumber) -> Option<TcpSeqNumber> {
        self.ranges().iter().find(|r| r.0 <= seq && seq < r.1).map(|r| r.1)
    }

    /// The start of the first SACKed range above `seq`.
    pub fn next_sacked_after(&self, seq: TcpSeqNumber) -> Option<TcpSeqNumber> {
        self.ranges().iter().find(|r| r.0 > seq).map(|r| r.0)
    }

    /// Lost holes at or after `from`, lowest first, as `(start, end)`: a hole (bytes between `una` and the
    /// highest SACKed range that the receiver does not hold) is lost once at least `thresh` bytes above it are
    /// SACKed.
    pub fn lost_holes(
        &self,
        una: TcpSeqNumber,
        from: TcpSeqNumber,
        thresh: usize,
    ) -> impl Iterator<Item = (TcpSeqNumber, TcpSeqNumber)> + '_ {
        let mut above = self.sacked_bytes();
        let mut hole_start = una;
        self.ranges()
            .iter()
            .map_while(move |&(l, r)| {
                if above < thresh {
                    return None;
                }
                let hole = (hole_start.max(from), l);
                above -= r - l;
                hole_start = r;
                Some(hole)
            })
            .filter(|&(start, end)| start < end)
    }

    /// Bytes in lost holes at or after `from`.
    pub fn lost_bytes(&self, una: TcpSeqNumber, from: TcpSeqNumber, thresh: usize) -> usize {
        self.lost_holes(una, from, thresh).map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn seq(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    fn board(una: i32, blocks: &[(u32, u32)]) -> Scoreboard {
        let mut b = Scoreboard::new();
        let blocks: Vec<_> = blocks.iter().map(|&b| Some(b)).collect();
        b.update(seq(una), &blocks, seq(1_000_000));
        b
    }

    #[test]
    fn merges_overlapping_and_adjacent_blocks() {
        let mut b = board(0, &[(100, 200), (300, 400)]);
        assert_eq!(b.sacked_bytes(), 200);
        assert_eq!(b.update(seq(0), &[Some((200, 300))], seq(1000)), 100);
        assert_eq!(b.ranges(), &[(seq(100), seq(400))]);
        assert_eq!(b.update(seq(0), &[Some((50, 450))], seq(1000)), 100);
        assert_eq!(b.ranges(), &[(seq(50), seq(450))]);
    }

    #[test]
    fn the_cumulative_ack_prunes_and_clips() {
        let mut b = board(0, &[(100, 200), (300, 400)]);
        b.update(seq(350), &[], seq(1000));
        assert_eq!(b.ranges(), &[(seq(350), seq(400))]);
        b.update(seq(400), &[], seq(1000));
        assert!(b.is_empty());
    }

    #[test]
    fn bogus_and_stale_blocks_are_ignored() {
        let mut b = Scoreboard::new();
        let blocks = [Some((10, 20)), Some((30, 30)), Some((900, 2000))];
        assert_eq!(b.update(seq(50), &blocks, seq(1000)), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let start = (i32::MAX - 50) as u32;
        let mut b = Scoreboard::new();
        let right = start.wrapping_add(200);
        b.update(
            TcpSeqNumber(start as i32),
            &[Some((start.wrapping_add(100), right))],
            TcpSeqNumber(start as i32) + 1000,
        );
        assert_eq!(b.sacked_bytes(), 100);
        assert_eq!(b.highest(), Some(TcpSeqNumber(right as i32)));
    }

    #[test]
    fn a_full_board_forgets_its_highest_range() {
        let mut b = Scoreboard::new();
        for i in 0..MAX_RANGES as u32 + 3 {
            b.update(seq(0), &[Some((i * 100 + 50, i * 100 + 60))], seq(1_000_000));
        }
        assert_eq!(b.len, MAX_RANGES);
        assert_eq!(b.highest(), Some(seq((MAX_RANGES as i32 - 1) * 100 + 60)));
        // A range below the others still gets in, at the cost of the highest (which was as large).
        assert_eq!(b.update(seq(0), &[Some((10, 20))], seq(1_000_000)), 0);
        assert_eq!(b.ranges()[0], (seq(10), seq(20)));
        assert_eq!(b.highest(), Some(seq((MAX_RANGES as i32 - 2) * 100 + 60)));
    }

    #[test]
    fn random_blocks_keep_the_board_sorted_disjoint_and_bounded() {
        // Hostile or garbled SACK blocks (any 32-bit values) must never panic or corrupt the board.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut board = Scoreboard::new();
        let mut una = TcpSeqNumber(i32::MAX - 5_000);
        for _ in 0..20_000 {
            let near = |r: u64| (una.0 as u32).wrapping_add((r % 20_000) as u32);
            let blocks = [0, 1, 2].map(|_| {
                let (a, b) = (next(), next());
                if a % 8 == 0 {
                    Some((a as u32, b as u32))
                } else {
                    Some((near(a), near(a).wrapping_add((b % 3_000) as u32)))
                }
            });
            let limit = una + 15_000;
            board.update(una, &blocks, limit);
            let ranges = board.ranges();
            assert!(ranges.len() <= MAX_RANGES);
            for (i, &(l, r)) in ranges.iter().enumerate() {
                assert!(una <= l && l < r && r <= limit, "{l:?}..{r:?} outside {una:?}..{limit:?}");
                if i > 0 {
                    assert!(ranges[i - 1].1 < l, "ranges touch or overlap: {ranges:?}");
                }
            }
            let _ = board.lost_holes(una, una + (next() % 10_000) as usize, 3_000).count();
            una = una + (next() % 700) as usize;
        }
    }

    #[test]
    fn holes_are_lost_once_enough_is_sacked_above_them() {
        // una 0; held: 100-200, 300-350, 400-500. Holes: 0-100, 200-300, 350-400.
        let b = board(0, &[(100, 200), (300, 350), (400, 500)]);
        let holes: Vec<_> = b.lost_holes(seq(0), seq(0), 150).collect();
        // Above 0-100: 250 bytes; above 200-300: 150; above 350-400: 100 (< 150, not lost yet).
        assert_eq!(holes, [(seq(0), seq(100)), (seq(200), seq(300))]);
        assert_eq!(b.lost_bytes(seq(0), seq(0), 150), 200);
        // Holes partly retransmitted already start where retransmission stopped.
        let holes: Vec<_> = b.lost_holes(seq(0), seq(250), 150).collect();
        assert_eq!(holes, [(seq(250), seq(300))]);
        assert_eq!(b.lost_bytes(seq(0), seq(250), 1), 100);
    }

    #[test]
    fn finds_ranges_around_a_sequence_number() {
        let b = board(0, &[(100, 200), (300, 400)]);
        assert_eq!(b.sacked_end(seq(150)), Some(seq(200)));
        assert_eq!(b.sacked_end(seq(200)), None);
        assert_eq!(b.next_sacked_after(seq(200)), Some(seq(300)));
        assert_eq!(b.next_sacked_after(seq(300)), None);
        assert_eq!(b.sacked_below(seq(350)), 150);
        assert_eq!(b.sacked_below(seq(50)), 0);
    }
}
