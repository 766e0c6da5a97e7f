//! Fuzzes the core's datagram input: arbitrary bytes, split into datagrams, fed to a core that has a live
//! session with a peer, interleaved with genuine datagrams the fuzzer may mutate. Nothing may panic, and the
//! core must stay able to poll.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run datagram` from this folder (cargo-fuzz wants nightly flags).

#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::time::Instant;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use tunnel::sim::{Conditions, Pair};
use tunnel::{Cidr, Core, CoreConfig, PrivateKey};

struct State {
    pair: Pair,
    genuine: Vec<Vec<u8>>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let (a_key, b_key) = (PrivateKey::generate(), PrivateKey::generate());
        let now = Instant::from_millis(0);
        let cidr = |s: &str| s.parse::<Cidr>().unwrap();
        let a = Core::new(
            CoreConfig {
                endpoint: Some(Pair::B_ADDR),
                persistent_keepalive: Some(25),
                ..CoreConfig::new(a_key.clone(), b_key.public_key(), vec![cidr("10.88.0.2/30")])
            },
            1,
            now,
        )
        .unwrap();
        let b = Core::new(CoreConfig::new(b_key, a_key.public_key(), vec![cidr("10.88.0.1/30")]), 2, now).unwrap();
        let mut pair = Pair::new(a, b, Conditions::default());
        pair.b.listen(9000);
        let client = pair.a.connect("10.88.0.1:9000".parse().unwrap()).unwrap();
        pair.run_until(smoltcp::time::Duration::from_secs(2), |p| p.a.tcp(client).may_send());
        // A few genuine datagrams for the fuzzer to start from.
        let mut genuine = Vec::new();
        for i in 0..4u8 {
            pair.a.tcp(client).send_slice(&[i; 100]).unwrap();
            let now = pair.now;
            pair.a.poll(now, &mut |_: SocketAddr, d: &[u8]| genuine.push(d.to_vec()));
        }
        Mutex::new(State { pair, genuine })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut state = state().lock().unwrap();
    let State { pair, genuine } = &mut *state;
    let now = pair.now;
    let mut sink = |_: SocketAddr, _: &[u8]| {};
    // Input: [selector][len][bytes...] records. Selector's low bit picks raw bytes or a mutated genuine datagram.
    let mut rest = data;
    while rest.len() >= 2 {
        let (selector, len) = (rest[0], rest[1] as usize);
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        if selector & 1 == 0 {
            pair.b.handle_datagram(now, Pair::A_ADDR, chunk, &mut sink);
        } else {
            let mut datagram = genuine[(selector as usize >> 1) % genuine.len()].clone();
            for (i, byte) in chunk.iter().enumerate() {
                let at = (i * 7 + *byte as usize) % datagram.len();
                datagram[at] ^= byte;
            }
            datagram.truncate(datagram.len() - (len % 3));
            pair.b.handle_datagram(now, Pair::A_ADDR, &datagram, &mut sink);
        }
    }
    pair.b.poll(now, &mut sink);
});
