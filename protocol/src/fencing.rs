//! Fencing between client replicas. Only the replica holding the Lease runs tunnels, but a leader that cannot
//! reach the API server keeps serving (the data plane must not depend on the control plane), so a standby that
//! can reach it may take the Lease meanwhile. Each leader's uploads therefore carry its *term* (the Lease's
//! transition count when it took the Lease), and an agent obeys the highest term it has seen: an upload with a
//! lower one is refused (409, [`crate::api::UploadAnswer::fenced_by`]), and `/status` shows the agent's term,
//! so the replica that lost learns it at its next upload or check and stops.

/// The query parameter naming the term on `/upload`.
pub const QUERY: &str = "term";

/// The upload path of a leader of `term` (`None`: no leader election, e.g. one replica or a local run).
pub fn upload_path(term: Option<u64>) -> String {
    match term {
        Some(term) => format!("/upload?{QUERY}={term}"),
        None => "/upload".to_string(),
    }
}

/// Splits a request target into its path and the term it names (`/upload?term=7` -> `("/upload", Some(7))`).
/// Any other query is refused.
pub fn split_target(target: &str) -> Result<(&str, Option<u64>), String> {
    let Some((path, query)) = target.split_once('?') else { return Ok((target, None)) };
    let term = query
        .strip_prefix(QUERY)
        .and_then(|rest| rest.strip_prefix('='))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| format!("query {query:?}: the only query is `{QUERY}=<number>`"))?;
    Ok((path, Some(term)))
}

/// An agent's side: the highest term it has obeyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    highest: Option<u64>,
}

impl Fence {
    /// Whether an upload of `term` is obeyed: `Err(highest)` when a newer leader has been seen. Uploads without
    /// a term (no leader election) are always obeyed and change nothing.
    pub fn admit(&mut self, term: Option<u64>) -> Result<(), u64> {
        let Some(term) = term else { return Ok(()) };
        match self.highest {
            Some(highest) if highest > term => Err(highest),
            _ => {
                self.highest = Some(term);
                Ok(())
            }
        }
    }

    /// The highest term obeyed so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_term_wins_and_uploads_without_one_are_obeyed() {
        let mut fence = Fence::default();
        assert_eq!(fence.admit(None), Ok(()));
        assert_eq!(fence.highest(), None);
        assert_eq!(fence.admit(Some(3)), Ok(()));
        assert_eq!(fence.admit(Some(3)), Ok(()), "the same leader again");
        assert_eq!(fence.admit(Some(5)), Ok(()), "a newer leader");
        assert_eq!(fence.admit(Some(3)), Err(5), "the old leader is fenced");
        assert_eq!(fence.admit(None), Ok(()));
        assert_eq!(fence.highest(), Some(5));
    }

    #[test]
    fn targets_name_their_term_and_nothing_else() {
        assert_eq!(split_target(&upload_path(Some(7))), Ok(("/upload", Some(7))));
        assert_eq!(split_target(&upload_path(None)), Ok(("/upload", None)));
        assert_eq!(split_target("/status"), Ok(("/status", None)));
        for bad in ["/upload?term=", "/upload?term=-1", "/upload?x=1", "/upload?term=1&x=2", "/upload?termx=1"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
    }
}
