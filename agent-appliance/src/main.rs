//! polaredge-agent: the edge half of POLAREDGE. One static binary: userspace WireGuard, the upload API inside
//! the tunnel, Traefik supervision, and forwarders that carry Traefik's backend connections to the cluster.
//!
//! Module map: `config` (the YAML file), `apply` (upload -> live), `store` (atomic files), `forwarders`,
//! `traefik` (static config, supervisor, API client), `http` (control API server), `ports` (port picker),
//! `install` (install-traefik), `admin` (status socket), `init` (PID 1 of the appliance image), `agent`
//! (wiring), `cli` (commands). The Traefik dynamic config model, its validation and the backend rewrite live in
//! the `routes` crate.

mod admin;
mod agent;
mod apply;
mod cli;
mod config;
mod forwarders;
mod http;
mod init;
mod install;
mod logger;
mod ports;
mod store;
mod traefik;

fn main() -> std::process::ExitCode {
    logger::init();
    if init::is_pid1() {
        init::main();
    }
    cli::main(std::env::args().skip(1).collect())
}
