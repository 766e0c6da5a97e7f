//! Traefik's static configuration, generated from the agent's config. Traefik always starts with
//! `--configFile` pointing here: static sources are exclusive, and a stray traefik.yml would otherwise win.

use crate::config::AgentConfig;
use serde_json::json;
use std::path::Path;

/// Name of the ACME resolver routers may use (when an ACME email is configured).
pub const ACME_RESOLVER: &str = "acme";

/// The static configuration as YAML. `admin_port` is the loopback port of the `traefik` entrypoint that
/// carries ping, the API and metrics; `dynamic_dir` is the watched folder holding routes.yaml.
pub fn render(config: &AgentConfig, admin_port: u16, dynamic_dir: &Path, acme_storage: &Path) -> String {
    let mut entry_points = serde_json::Map::new();
    for (name, address) in &config.entrypoints {
        entry_points.insert(name.clone(), json!({ "address": address }));
    }
    // Without an explicit `traefik` entrypoint Traefik would open :8080 on every interface.
    entry_points.insert("traefik".into(), json!({ "address": format!("127.0.0.1:{admin_port}") }));
    let mut root = json!({
        "global": { "checkNewVersion": false, "sendAnonymousUsage": false },
        "entryPoints": entry_points,
        "providers": {
            // The default 2 s throttle would delay every upload; 100 ms still coalesces bursts.
            "providersThrottleDuration": "100ms",
            "file": { "directory": dynamic_dir.display().to_string(), "watch": true },
        },
        // The API is served on the loopback `traefik` entrypoint only.
        "api": { "insecure": true, "dashboard": false },
        "ping": { "entryPoint": "traefik" },
        "metrics": { "prometheus": { "entryPoint": "traefik" } },
        "log": { "level": config.traefik.log_level },
    });
    if let Some(acme) = &config.acme {
        let web = if config.entrypoints.contains_key("web") {
            "web"
        } else {
            config.entrypoints.keys().next().map_or("web", |s| s)
        };
        let mut resolver = json!({
            "email": acme.email,
            "storage": acme_storage.display().to_string(),
            "httpChallenge": { "entryPoint": web },
        });
        if let Some(ca) = &acme.ca_server {
            resolver["caServer"] = json!(ca);
        }
        root["certificatesResolvers"] = json!({ ACME_RESOLVER: { "acme": resolver } });
    }
    serde_yaml::to_string(&root).expect("a JSON value always serializes")
}
