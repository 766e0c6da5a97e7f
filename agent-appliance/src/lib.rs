//! polaredge-agent's library: the edge half of POLAREDGE. One static binary: userspace WireGuard, the upload API inside
//! the tunnel, Traefik supervision, and forwarders that carry Traefik's backend connections to the cluster.
//!
//! Module map: `config` (the YAML file), `apply` (upload -> live), `store` (atomic files), `forwarders`,
//! `traefik` (static config, supervisor, API client), `http` (control API server), `ports` (port picker), `l4` (public TCP ports of LoadBalancer Services),
//! `install` (install-traefik), `admin` (status socket), `watchdog` (Traefik health, routes file repair), `agent`
//! (wiring), `cli` (commands). PID 1 of the appliance image is the `init` crate; the log lines are `protocol::logging`'s. The Traefik dynamic config model, its validation and the backend rewrite live in
//! the `routes` crate.

#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod apply;
pub mod cli;
pub mod config;
pub mod forwarders;
pub mod http;
pub mod install;
pub mod l4;
pub mod ports;
pub mod store;
pub mod traefik;
pub mod watchdog;
