//! Fuzzes the UDP flow frame decoder (`tunnel::flow::decode`): what a relay reads from every datagram that
//! arrives at its tunnel UDP port. Nothing may panic; whatever decodes must encode back to the same bytes.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run flow_frame` from this folder (cargo-fuzz wants nightly flags).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel::flow::{self, Frame, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let mut header = [0u8; MAX_HEADER];
    let (len, payload) = match flow::decode(data) {
        None => return,
        Some(Frame::ToRelay { flow, target, payload }) => (flow::write_to_relay(&mut header, flow, target), payload),
        Some(Frame::FromRelay { flow, payload }) => (flow::write_from_relay(&mut header, flow), payload),
    };
    let mut again = header[..len].to_vec();
    again.extend_from_slice(payload);
    assert_eq!(again, data, "a decoded frame encodes back to its bytes");
});
