//! Fuzzes upload handling as the agent does it, up to the file Traefik would read: parse + validate
//! (`routes::parse`), the backend list, the rewrite to forwarders with the marker and canary, and the rendering.
//! Nothing may panic, and whatever is accepted must render to a file without a Go template action or a control
//! character in any string, whose backends all point at forwarders.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run upload` from this folder (seeds in corpus/upload).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = routes::Policy {
        entry_points: ["web".to_string(), "websecure".to_string()].into(),
        cert_resolvers: ["acme".to_string()].into(),
        max_backends: 1000,
        now: || 1_796_000_000,
        ..routes::Policy::default()
    };
    let Ok(config) = routes::parse(text, &policy) else { return };
    let pods = routes::backends(&config);
    assert!(pods.len() <= policy.max_backends);
    let forwarders: BTreeMap<SocketAddr, SocketAddr> =
        pods.iter().enumerate().map(|(i, pod)| (*pod, SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)))).collect();
    let rewritten = routes::rewrite(&config, &forwarders, routes::Marker { generation: "0123456789abcdef", write: 1 }, Some("web"));
    assert!(routes::text::check(&rewritten).is_empty(), "the rewrite added an unsafe string");
    let file = serde_json::to_string_pretty(&rewritten).unwrap();
    assert!(!file.contains("{{"), "a template action in the rendered file");
    assert_eq!(serde_json::from_str::<routes::model::DynamicConfig>(&file).unwrap(), rewritten);
    for pod in routes::backends(&rewritten) {
        assert!(pod.ip().is_loopback(), "backend {pod} was not rewritten to a forwarder");
    }
});
