//! polaredge-client, the cluster half of POLAREDGE, as a library (the binary is a thin CLI over it).
//!
//! Module map: [`render`] (Ingress semantics -> Traefik routes; pure), [`manifests`] (YAML files as renderer
//! input), [`sender`] (send policy, sans-IO, and uploads), [`relay`] (agent streams -> pods, allow-listed),
//! [`status`] (Ingress status and Events to write; sans-IO), [`watch`] (kube-rs reflectors and writes), [`config`], and [`run`] (wiring).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod kube_api;
pub mod leader;
pub mod manifests;
pub mod ops;
pub mod relay;
pub mod render;
pub mod run;
pub mod sender;
pub mod status;
pub mod watch;
