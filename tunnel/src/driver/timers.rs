//! The driver's per-connection timers: one min-heap of (when, connection, what), checked lazily. A timer
//! that fires for a connection that has gone, or whose deadline has moved, is simply dropped or re-armed:
//! activity on a connection touches the heap only when it wakes a connection that had gone quiet.

use smoltcp::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The connection's current stage has a deadline (connect, preamble, dial).
    Deadline,
    /// Check whether the spliced connection has gone quiet (release its buffers) or idle (close it).
    Idle,
    /// End the UDP flows that have gone idle (not tied to a connection).
    FlowSweep,
}

/// Pending timers, earliest first.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
}

impl Timers {
    /// Arms `timer` for connection `id` at `at`.
    pub(crate) fn arm(&mut self, at: Instant, id: u64, timer: Timer) {
        self.heap.push(Reverse((at, id, timer)));
    }

    /// When the earliest timer is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the next timer due at or before `now`: (when it was armed for, connection, what).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, u64, Timer)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse((at, id, timer))| (at, id, timer)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_due_in_order_and_not_before_their_time() {
        let mut timers = Timers::default();
        timers.arm(Instant::from_millis(30), 3, Timer::Idle);
        timers.arm(Instant::from_millis(10), 1, Timer::Deadline);
        timers.arm(Instant::from_millis(20), 2, Timer::Deadline);
        assert_eq!(timers.next(), Some(Instant::from_millis(10)));
        assert_eq!(timers.pop_due(Instant::from_millis(5)), None);
        assert_eq!(timers.pop_due(Instant::from_millis(25)), Some((Instant::from_millis(10), 1, Timer::Deadline)));
        assert_eq!(timers.pop_due(Instant::from_millis(25)), Some((Instant::from_millis(20), 2, Timer::Deadline)));
        assert_eq!(timers.pop_due(Instant::from_millis(25)), None);
        assert_eq!(timers.pop_due(Instant::from_millis(30)), Some((Instant::from_millis(30), 3, Timer::Idle)));
        assert_eq!(timers.next(), None);
    }
}
