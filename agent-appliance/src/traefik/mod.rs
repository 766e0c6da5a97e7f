//! Everything about Traefik: its static config, its process, and its API.

pub mod api;
pub mod static_config;
pub mod supervisor;
