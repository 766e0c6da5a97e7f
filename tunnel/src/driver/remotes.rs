//! Where a forwarder's streams go: one tunnel address, or one per client replica (an agent serving several
//! replicas, [`crate::CoreConfig::other_peers`]). Streams take the replicas in turn, skipping a suspected one:
//! a replica whose connection went unanswered is suspected until it is heard from again, and that stream moves
//! on to the next replica. So a replica that dies costs the streams of that moment a short wait, not a failure.
//! The choice is sans-IO ([`pick`]); the driver keeps the suspicions.

use std::net::SocketAddr;
use std::sync::Arc;

/// How long a forwarded stream waits for its tunnel connection to be answered before it moves to another
/// replica (when there is one). Above a WAN round trip with a lost SYN's first retransmission in mind; a
/// replica that is merely slow loses nothing but this stream.
pub const MOVE_AFTER: std::time::Duration = std::time::Duration::from_millis(1000);

/// The tunnel addresses a forwarder's streams may go to.
#[derive(Debug, Clone)]
pub struct Remotes(Arc<[SocketAddr]>);

impl Remotes {
    /// The addresses, in the order streams take them.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl From<SocketAddr> for Remotes {
    fn from(address: SocketAddr) -> Remotes {
        Remotes(Arc::new([address]))
    }
}

impl From<Vec<SocketAddr>> for Remotes {
    /// Several replicas' addresses. An empty list is a forwarder whose every stream is refused.
    fn from(addresses: Vec<SocketAddr>) -> Remotes {
        Remotes(addresses.into())
    }
}

/// What the choice knows of one remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its peer's outer address is known: something can be sent.
    pub reachable: bool,
    /// A connection to it went unanswered, and it has not been heard from since.
    pub suspected: bool,
}

/// The remote for a stream: the first from `next` on (cyclically) that is reachable and not suspected, else the
/// first that is reachable; never `avoid` (the one a moving stream leaves). `None`: nowhere to go.
pub(crate) fn pick(candidates: &[Candidate], next: usize, avoid: Option<usize>) -> Option<usize> {
    let n = candidates.len();
    let order = (0..n).map(|i| (next + i) % n).filter(|&i| Some(i) != avoid);
    let good = order.clone().find(|&i| candidates[i].reachable && !candidates[i].suspected);
    good.or_else(|| order.clone().find(|&i| candidates[i].reachable))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Candidate = Candidate { reachable: true, suspected: false };
    const SUSPECTED: Candidate = Candidate { reachable: true, suspected: true };
    const UNKNOWN: Candidate = Candidate { reachable: false, suspected: false };

    #[test]
    fn streams_take_the_live_replicas_in_turn() {
        let all = [UP, UP, UP];
        assert_eq!((0..4).map(|next| pick(&all, next, None)).collect::<Vec<_>>(), [Some(0), Some(1), Some(2), Some(0)]);
        assert_eq!(pick(&[UP], 0, None), Some(0));
        assert_eq!(pick(&[], 0, None), None, "no remote at all");
    }

    #[test]
    fn a_suspected_or_unreachable_replica_is_skipped_while_another_is_up() {
        assert_eq!(pick(&[SUSPECTED, UP], 0, None), Some(1));
        assert_eq!(pick(&[UNKNOWN, SUSPECTED, UP], 0, None), Some(2));
        // Only suspects left: still try one (it may be back), rather than refuse.
        assert_eq!(pick(&[SUSPECTED, UNKNOWN], 1, None), Some(0));
        assert_eq!(pick(&[UNKNOWN, UNKNOWN], 0, None), None, "no peer has shown up yet");
    }

    #[test]
    fn a_moving_stream_never_goes_back_to_the_replica_it_leaves() {
        assert_eq!(pick(&[UP, UP], 0, Some(0)), Some(1));
        assert_eq!(pick(&[UP, SUSPECTED], 1, Some(0)), Some(1), "a suspect beats going back");
        assert_eq!(pick(&[UP], 0, Some(0)), None, "a single replica has nowhere to move to");
    }
}
