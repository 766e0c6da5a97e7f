//! Connection slots of the control API. A bounded number of connections may be open; when all slots are taken,
//! a new connection takes the slot of the connection that has been idle (waiting between keep-alive requests)
//! the longest, which is closed. Only when every connection is in the middle of a request is the new one
//! refused, and those end by the request deadline. Idle connections can never lock the API out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Closes a connection from another thread (its blocked read returns end-of-file).
pub type Closer = Box<dyn Fn() + Send>;

struct Slot {
    idle_since: Option<Instant>,
    close: Closer,
}

/// The slots.
pub struct Slots {
    max: usize,
    open: Mutex<(u64, BTreeMap<u64, Slot>)>,
}

/// A taken slot; dropping it frees the slot.
pub struct Taken {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    /// At most `max` connections.
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { max, open: Mutex::new((0, BTreeMap::new())) })
    }

    /// Takes a slot for a new connection, closing the longest-idle connection if all are taken; `None` when
    /// every connection is busy with a request.
    pub fn take(self: &Arc<Slots>, close: Closer) -> Option<Taken> {
        let mut open = self.open.lock().unwrap();
        if open.1.len() >= self.max {
            let oldest = open.1.iter().filter_map(|(id, s)| s.idle_since.map(|t| (t, *id))).min()?.1;
            let evicted = open.1.remove(&oldest).expect("found above");
            (evicted.close)();
        }
        open.0 += 1;
        let id = open.0;
        // A new connection counts as idle until its first byte: one that never sends is evicted first.
        open.1.insert(id, Slot { idle_since: Some(Instant::now()), close });
        Some(Taken { slots: Arc::clone(self), id })
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap().1.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Taken {
    /// The connection waits for a request (`true`) or is receiving or answering one (`false`).
    pub fn idle(&self, idle: bool) {
        if let Some(slot) = self.slots.open.lock().unwrap().1.get_mut(&self.id) {
            slot.idle_since = match (idle, slot.idle_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(Instant::now()),
                (false, _) => None,
            };
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.slots.open.lock().unwrap().1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn closer(counter: &Arc<AtomicUsize>, id: usize) -> Closer {
        let counter = Arc::clone(counter);
        Box::new(move || counter.store(id, Ordering::SeqCst))
    }

    #[test]
    fn a_new_connection_evicts_the_longest_idle_one() {
        let slots = Slots::new(2);
        let closed = Arc::new(AtomicUsize::new(0));
        let first = slots.take(closer(&closed, 1)).unwrap();
        let second = slots.take(closer(&closed, 2)).unwrap();
        second.idle(false); // busy with a request
        let third = slots.take(closer(&closed, 3)).expect("the idle one makes room");
        assert_eq!(closed.load(Ordering::SeqCst), 1);
        assert_eq!(slots.len(), 2);
        third.idle(false);
        assert!(slots.take(closer(&closed, 4)).is_none(), "every connection is busy");
        drop(first); // already evicted: dropping its guard changes nothing
        assert_eq!(slots.len(), 2);
        drop(second);
        assert!(slots.take(closer(&closed, 5)).is_some());
    }
}
