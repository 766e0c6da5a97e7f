//! polaredge-agent: the edge half of POLAREDGE. One static binary: userspace WireGuard, the upload API inside
//! the tunnel, Traefik supervision, and forwarders that carry Traefik's backend connections to the cluster.
//!
//! Module map: `config` (the YAML file), `apply` (upload -> live), `store` (atomic files), `forwarders`,
//! `traefik` (static config, supervisor, API client), `http` (control API server), `ports` (port picker),
//! `install` (install-traefik), `admin` (status socket), `agent` (wiring), `cli` (commands). The Traefik
//! dynamic config model, its validation and the backend rewrite live in the `routes` crate.

mod admin;
mod agent;
mod apply;
mod cli;
mod config;
mod forwarders;
mod http;
mod install;
mod logger;
mod ports;
mod store;
mod traefik;

fn main() -> std::process::ExitCode {
    logger::init();
    cli::main(std::env::args().skip(1).collect())
}
