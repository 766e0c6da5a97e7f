//! The relay preamble: the first bytes of every stream the agent forwards to the client, naming the pod
//! endpoint the stream is for. The client checks the endpoint against its last rendered snapshot before
//! dialing it (a compromised edge must not reach arbitrary cluster addresses).
//!
//! Format: one ASCII line, `PE1 <ip>:<port>\n` (IPv6 as `[addr]:port`), at most [`MAX_LEN`] bytes. Nothing
//! is answered: the relay either splices the stream to the pod or resets it.

use std::net::SocketAddr;

/// Longest valid preamble, newline included.
pub const MAX_LEN: usize = 64;
const MAGIC: &str = "PE1 ";

/// The preamble for a stream to `target`.
pub fn encode(target: SocketAddr) -> Vec<u8> {
    format!("{MAGIC}{target}\n").into_bytes()
}

/// Why a preamble was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreambleError {
    /// No newline within [`MAX_LEN`] bytes.
    TooLong,
    /// The line is not `PE1 <ip>:<port>`.
    Malformed(String),
}

impl std::fmt::Display for PreambleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreambleError::TooLong => write!(f, "relay preamble longer than {MAX_LEN} bytes"),
            PreambleError::Malformed(line) => write!(f, "relay preamble {line:?} is not `PE1 <ip>:<port>`"),
        }
    }
}

impl std::error::Error for PreambleError {}

/// Reads a preamble from the start of `buf`: `Ok(None)` if more bytes are needed, else the target and how many
/// bytes the preamble took (what follows is payload).
pub fn decode(buf: &[u8]) -> Result<Option<(SocketAddr, usize)>, PreambleError> {
    let Some(newline) = buf.iter().take(MAX_LEN).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LEN { Err(PreambleError::TooLong) } else { Ok(None) };
    };
    let line = String::from_utf8_lossy(&buf[..newline]);
    let target = line
        .strip_prefix(MAGIC)
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .ok_or_else(|| PreambleError::Malformed(line.to_string()))?;
    Ok(Some((target, newline + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6_and_leaves_the_payload() {
        for target in ["10.1.2.3:8080", "[fd00::1:2]:443"] {
            let target: SocketAddr = target.parse().unwrap();
            let mut bytes = encode(target);
            assert!(bytes.len() <= MAX_LEN);
            let len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(decode(&bytes), Ok(Some((target, len))));
        }
    }

    #[test]
    fn needs_more_until_the_newline_and_refuses_junk() {
        let full = encode("10.0.0.1:80".parse().unwrap());
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut]), Ok(None));
        }
        assert_eq!(decode(&[b'x'; MAX_LEN]), Err(PreambleError::TooLong));
        assert!(matches!(decode(b"PE1 my-service:80\n"), Err(PreambleError::Malformed(_))));
        assert!(matches!(decode(b"GET / HTTP/1.1\n"), Err(PreambleError::Malformed(_))));
    }
}
