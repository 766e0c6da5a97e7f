//! Everything about Traefik: its static config, its process, its API, and the judgement of its health.

pub mod api;
pub mod health;
pub mod static_config;
pub mod supervisor;
