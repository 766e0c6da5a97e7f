//! The one contract between `polaredge-client` (in the cluster) and `polaredge-agent` (on the edge). Both
//! sides depend on this crate, so a change to what one sends and the other reads is a compile error, not a
//! field name that drifts.
//!
//! Module map: [`defaults`] (tunnel addresses and ports), [`generation`] (how an upload is named), [`api`] (the
//! control API's JSON bodies), [`fencing`] (which client replica an agent obeys), [`relay`] (the preamble of every forwarded stream), [`proxy`] (the PROXY protocol header that carries a TCP
//! client's real address to a pod), [`http`] (HTTP/1 request and
//! response heads, sans-IO, for the control API, its client, Traefik's API and the test kits), [`metrics`]
//! (the Prometheus text both sides' `/metrics` serve), [`logging`] (the log lines both write).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod defaults;
pub mod fencing;
pub mod generation;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod relay;

pub use generation::generation_of;
