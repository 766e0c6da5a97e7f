//! Which sockets a poll visits: the sans-IO schedule behind [`crate::Core::poll`].
//!
//! smoltcp's own poll asks every socket whether it has something to send, and its `poll_at` asks every socket
//! for its next timer: with 10,000 connections each poll cost 1-2 ms, and the tunnel's driver fell seconds
//! behind. A socket can only have something new to send when it took a segment, when its owner wrote to it,
//! read from it or closed it, or when one of its timers (retransmission, delayed ACK, keep-alive, TIME-WAIT)
//! is due. The core tells the schedule of the first two ([`Egress::touch`]) and of each visited socket's next
//! timer ([`Egress::set_timer`]); a poll visits what [`Egress::take_due`] returns, so its cost follows the
//! busy sockets, not all of them.

use smoltcp::iface::SocketHandle;
use smoltcp::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The sockets to visit on the next poll, and every socket's next timer.
#[derive(Debug, Default)]
pub(crate) struct Egress {
    /// To visit on the next poll, each once.
    due: Vec<SocketHandle>,
    /// By socket slot: whether it is in `due`.
    queued: Vec<bool>,
    /// By socket slot: the socket's next timer, the one live entry of `timers` for it.
    deadline: Vec<Option<(Instant, SocketHandle)>>,
    /// Timers by time; an entry whose time is not its slot's `deadline` any more is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, SocketHandle)>>,
    /// Live entries in `timers`, to know when stale ones are worth sweeping out.
    live_timers: usize,
}

/// Stale timer entries tolerated beyond twice the live ones before the heap is rebuilt; at least one per socket
/// slot too, since a rebuild reads every slot: with thousands of idle sockets and a few busy ones it would
/// otherwise run every few dozen packets.
const STALE_SLACK: usize = 64;

impl Egress {
    /// `handle` may have something to send: the next poll visits it.
    pub(crate) fn touch(&mut self, handle: SocketHandle) {
        let slot = handle.index();
        if self.queued.len() <= slot {
            self.queued.resize(slot + 1, false);
        }
        if !self.queued[slot] {
            self.queued[slot] = true;
            self.due.push(handle);
        }
    }

    /// Records when `handle` must be visited next (`None`: only a segment or its owner can give it work).
    pub(crate) fn set_timer(&mut self, handle: SocketHandle, at: Option<Instant>) {
        let slot = handle.index();
        if self.deadline.len() <= slot {
            self.deadline.resize(slot + 1, None);
        }
        let entry = at.map(|at| (at, handle));
        if self.deadline[slot] == entry {
            return;
        }
        match (self.deadline[slot], at) {
            (None, Some(_)) => self.live_timers += 1,
            (Some(_), None) => self.live_timers -= 1,
            _ => {}
        }
        self.deadline[slot] = entry;
        if let Some(at) = at {
            self.timers.push(Reverse((at, handle)));
            if self.timers.len() > 2 * self.live_timers + STALE_SLACK.max(self.deadline.len()) {
                self.sweep();
            }
        }
    }

    /// Forgets a removed socket's timer (its slot may be reused by a new socket).
    pub(crate) fn forget(&mut self, handle: SocketHandle) {
        self.set_timer(handle, None);
    }

    /// The earliest time a poll has work: `now` if a socket is waiting for a visit, else the next timer.
    pub(crate) fn next_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.due.is_empty() {
            return Some(now);
        }
        self.drop_stale();
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Moves every socket to visit now (touched ones and those whose timer is due) into `into`, each once.
    pub(crate) fn take_due(&mut self, now: Instant, into: &mut Vec<SocketHandle>) {
        while let Some(&Reverse((at, handle))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.deadline[handle.index()] == Some((at, handle)) {
                self.deadline[handle.index()] = None;
                self.live_timers -= 1;
                self.touch(handle);
            }
        }
        for handle in self.due.drain(..) {
            self.queued[handle.index()] = false;
            into.push(handle);
        }
    }

    /// Drops stale entries from the top of the heap, so that `next_at` tells a live time.
    fn drop_stale(&mut self) {
        while let Some(&Reverse((at, handle))) = self.timers.peek() {
            if self.deadline[handle.index()] == Some((at, handle)) {
                break;
            }
            self.timers.pop();
        }
    }

    /// Rebuilds the heap from the live timers, in its own memory (no allocation per packet).
    fn sweep(&mut self) {
        let mut entries = std::mem::take(&mut self.timers).into_vec();
        entries.clear();
        entries.extend(self.deadline.iter().flatten().map(|&entry| Reverse(entry)));
        self.timers = BinaryHeap::from(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::iface::SocketSet;
    use smoltcp::socket::udp;

    /// `n` socket handles, as smoltcp hands them out.
    fn handles(n: usize) -> Vec<SocketHandle> {
        let mut set = SocketSet::new(Vec::new());
        (0..n)
            .map(|_| {
                set.add(udp::Socket::new(
                    udp::PacketBuffer::new(vec![], vec![]),
                    udp::PacketBuffer::new(vec![], vec![]),
                ))
            })
            .collect()
    }

    fn due(egress: &mut Egress, now: i64) -> Vec<SocketHandle> {
        let mut into = Vec::new();
        egress.take_due(Instant::from_millis(now), &mut into);
        into
    }

    #[test]
    fn a_touched_socket_is_visited_once_on_the_next_poll() {
        let h = handles(3);
        let mut egress = Egress::default();
        assert_eq!(egress.next_at(Instant::from_millis(5)), None, "nothing to do, no timer");
        egress.touch(h[2]);
        egress.touch(h[0]);
        egress.touch(h[2]);
        assert_eq!(egress.next_at(Instant::from_millis(5)), Some(Instant::from_millis(5)), "a visit is due now");
        assert_eq!(due(&mut egress, 5), vec![h[2], h[0]]);
        assert_eq!(due(&mut egress, 5), vec![], "visited once");
        egress.touch(h[2]);
        assert_eq!(due(&mut egress, 6), vec![h[2]], "and again once touched again");
    }

    #[test]
    fn a_timer_brings_its_socket_in_when_due_and_not_before() {
        let h = handles(2);
        let mut egress = Egress::default();
        egress.set_timer(h[1], Some(Instant::from_millis(200)));
        egress.set_timer(h[0], Some(Instant::from_millis(100)));
        assert_eq!(egress.next_at(Instant::from_millis(0)), Some(Instant::from_millis(100)));
        assert_eq!(due(&mut egress, 99), vec![]);
        assert_eq!(due(&mut egress, 150), vec![h[0]]);
        assert_eq!(egress.next_at(Instant::from_millis(150)), Some(Instant::from_millis(200)));
        assert_eq!(due(&mut egress, 500), vec![h[1]]);
        assert_eq!(egress.next_at(Instant::from_millis(500)), None, "a timer fires once");
    }

    #[test]
    fn a_moved_or_cleared_timer_leaves_no_visit_at_the_old_time() {
        let h = handles(2);
        let mut egress = Egress::default();
        egress.set_timer(h[0], Some(Instant::from_millis(100)));
        egress.set_timer(h[0], Some(Instant::from_millis(300)));
        egress.set_timer(h[1], Some(Instant::from_millis(100)));
        egress.set_timer(h[1], None);
        assert_eq!(egress.next_at(Instant::from_millis(0)), Some(Instant::from_millis(300)), "stale entries skipped");
        assert_eq!(due(&mut egress, 200), vec![]);
        assert_eq!(due(&mut egress, 300), vec![h[0]]);
    }

    #[test]
    fn a_forgotten_socket_keeps_no_timer_for_the_next_holder_of_its_slot() {
        let h = handles(1);
        let mut egress = Egress::default();
        egress.set_timer(h[0], Some(Instant::from_millis(100)));
        egress.forget(h[0]);
        assert_eq!(due(&mut egress, 1000), vec![]);
        assert_eq!(egress.next_at(Instant::from_millis(1000)), None);
    }

    #[test]
    fn rescheduling_without_end_keeps_the_heap_bounded() {
        let h = handles(10);
        let mut egress = Egress::default();
        // Every ACK moves a retransmission timer later: one stale entry each time.
        for n in 0..100_000u64 {
            egress.set_timer(h[(n % 10) as usize], Some(Instant::from_millis(1000 + n as i64)));
        }
        assert!(egress.timers.len() <= 2 * 10 + STALE_SLACK + 1, "{} entries", egress.timers.len());
        let fired = due(&mut egress, 1_000_000);
        assert_eq!(fired.len(), 10, "each socket's latest timer fires, once");

        // Beside 1,000 socket slots, a rebuild (which reads every slot) waits for about as many stale entries.
        let h = handles(1000);
        let mut egress = Egress::default();
        egress.set_timer(h[999], None);
        for n in 0..100_000u64 {
            egress.set_timer(h[(n % 10) as usize], Some(Instant::from_millis(1000 + n as i64)));
        }
        assert!(egress.timers.len() <= 2 * 10 + 1000 + 1, "{} entries", egress.timers.len());
        assert_eq!(due(&mut egress, 1_000_000).len(), 10);
    }
}
