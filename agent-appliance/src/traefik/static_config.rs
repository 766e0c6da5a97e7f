//! Traefik's static configuration, generated from the agent's config. Traefik always starts with
//! `--configFile` pointing here: static sources are exclusive, and a stray traefik.yml would otherwise win.

use crate::config::{AgentConfig, Challenge};
use serde_json::json;
use std::path::Path;

/// Name of the ACME resolver routers may use (when an ACME email is configured).
pub use protocol::defaults::ACME_RESOLVER;

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
        let mut resolver = json!({
            "email": acme.email,
            "storage": acme_storage.display().to_string(),
            "keyType": acme.key_type.name(),
        });
        match acme.challenge {
            Challenge::Http => {
                let web = if config.entrypoints.contains_key("web") {
                    "web"
                } else {
                    config.entrypoints.keys().next().map_or("web", |s| s)
                };
                resolver["httpChallenge"] = json!({ "entryPoint": web });
            }
            // Answered by Traefik on whichever entrypoint the CA connects to on port 443.
            Challenge::TlsAlpn => resolver["tlsChallenge"] = json!({}),
        }
        if let Some(ca) = &acme.ca_server {
            resolver["caServer"] = json!(ca);
        }
        if let Some(hours) = acme.certificates_duration_hours {
            resolver["certificatesDuration"] = json!(hours);
        }
        root["certificatesResolvers"] = json!({ ACME_RESOLVER: { "acme": resolver } });
    }
    serde_yaml::to_string(&root).expect("a JSON value always serializes")
}

/// Environment variables Traefik runs with: the ACME server's CA, when configured.
pub fn environment(config: &AgentConfig) -> Vec<(String, String)> {
    let ca = config.acme.as_ref().and_then(|a| a.ca_certificates.as_ref());
    ca.map(|path| ("LEGO_CA_CERTIFICATES".to_string(), path.display().to_string())).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(acme: &str) -> AgentConfig {
        let yaml = format!("wireguard: {{private_key_file: k, client_public_key: x}}\n{acme}");
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn admin_entrypoint_is_loopback_and_the_throttle_short() {
        let text = render(&config(""), 41234, Path::new("/s/dynamic"), Path::new("/s/acme.json"));
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["entryPoints"]["traefik"]["address"], "127.0.0.1:41234");
        assert_eq!(v["entryPoints"]["web"]["address"], ":80");
        assert_eq!(v["providers"]["providersThrottleDuration"], "100ms");
        assert_eq!(v["providers"]["file"]["directory"], "/s/dynamic");
        assert!(v.get("certificatesResolvers").is_none(), "no resolver without an ACME email");
    }

    #[test]
    fn an_acme_email_adds_the_resolver_with_storage_in_the_state_folder() {
        let text = render(&config("acme: {email: ops@example.com}\n"), 1, Path::new("/d"), Path::new("/s/acme.json"));
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let acme = &v["certificatesResolvers"][ACME_RESOLVER]["acme"];
        assert_eq!(acme["email"], "ops@example.com");
        assert_eq!(acme["storage"], "/s/acme.json");
        assert_eq!(acme["httpChallenge"]["entryPoint"], "web");
        assert_eq!(acme["keyType"], "EC256");
        let text = render(&config("acme: {email: a@b.c, challenge: tls-alpn}\n"), 1, Path::new("/d"), Path::new("/a"));
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let acme = &v["certificatesResolvers"][ACME_RESOLVER]["acme"];
        assert!(acme.get("httpChallenge").is_none() && acme.get("tlsChallenge").is_some(), "{text}");
    }

    /// The environment Traefik gets for ACME.
    #[test]
    fn a_private_acme_ca_is_passed_to_traefik() {
        let c = config("acme: {email: a@b.c, ca_certificates: /etc/ca.pem}\n");
        assert_eq!(environment(&c), [("LEGO_CA_CERTIFICATES".to_string(), "/etc/ca.pem".to_string())]);
        assert!(environment(&config("")).is_empty());
    }
}
