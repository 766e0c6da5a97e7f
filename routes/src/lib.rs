//! The Traefik dynamic configuration POLAREDGE carries from the client to the agent: a typed model
//! ([`model`]), strict parsing and validation (the agent refuses what fails), the list of pod backends, and
//! the rewrite of those backends to the agent's local forwarders. The client renders into the same model and
//! checks its output with the same validation. Pure functions: no I/O.
//!
//! Module map: [`model`] (the typed document), [`validate`] (references, names and values), [`text`] (every
//! string: no Go template actions, nothing Traefik's YAML reader refuses), [`duration`] (Go durations),
//! [`certificate`] (TLS certificates from Secrets: PEM, key match, expiry),
//! [`backend`] (pod addresses, the backend list and the rewrite to forwarders).
//!
//! Uploads are JSON (what the client sends; JSON is also YAML, so Traefik reads the rewritten file as is).
//! YAML input is refused on purpose: its anchors and aliases expand a small upload into a huge document, and
//! its parser is slow on deep nesting. serde_json has neither problem and stops at 128 levels.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod certificate;
pub mod duration;
pub mod model;
pub mod text;
pub mod validate;

pub use backend::{backends, parse_http_backend, rewrite, Marker, CANARY_HOST};
pub use validate::validate;

use model::DynamicConfig;
use std::collections::BTreeSet;
use std::fmt;

/// Prefix of the names the agent adds (generation marker, canary router); upload names may not use it.
pub const MARKER_PREFIX: &str = "gen-";

/// One reason an upload is refused. `path` names the offending part, e.g. `http.routers.app.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A problem at `path`; the message is any text or typed error (its `Display`).
pub(crate) fn problem(path: impl Into<String>, message: impl std::fmt::Display) -> Problem {
    Problem { path: path.into(), message: message.to_string() }
}

/// What the agent allows an upload to use.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Entrypoints routers may name (the public ones). The admin entrypoint is never among them.
    pub entry_points: BTreeSet<String>,
    /// ACME resolvers routers may name.
    pub cert_resolvers: BTreeSet<String>,
    /// Most distinct pod backends: each costs the agent a loopback listener (a file descriptor).
    pub max_backends: usize,
    /// The clock certificates are checked against (seconds since the Unix epoch): [`system_now`] in
    /// production, a fixed time in tests.
    pub now: fn() -> i64,
    /// Public TCP ports the agent may serve itself (`l4`), as inclusive ranges.
    pub l4_ports: Vec<(u16, u16)>,
    /// Ports no `l4` entry may take (Traefik's entrypoints, WireGuard).
    pub reserved_ports: BTreeSet<u16>,
}

impl Default for Policy {
    /// No entrypoints or resolvers, the default backend limit, the system clock, every TCP port allowed.
    fn default() -> Policy {
        Policy {
            entry_points: BTreeSet::new(),
            cert_resolvers: BTreeSet::new(),
            max_backends: DEFAULT_MAX_BACKENDS,
            now: system_now,
            l4_ports: vec![(1, 65535)],
            reserved_ports: BTreeSet::new(),
        }
    }
}

/// The system clock as [`Policy::now`] wants it.
pub fn system_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Default of [`Policy::max_backends`].
pub const DEFAULT_MAX_BACKENDS: usize = 20_000;

/// A parsed upload that an agent serves, and the `l4` ports it leaves out.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The document to serve, without the withheld ports.
    pub config: DynamicConfig,
    /// Why each withheld `l4` port is not served (see [`validate::withhold_refused_l4`]).
    pub withheld: Vec<validate::WithheldPort>,
}

/// Parses and validates an upload as an agent serves it: `l4` ports its policy refuses are withheld and
/// reported, everything else must be valid. All problems found are reported at once.
pub fn accept(text: &str, policy: &Policy) -> Result<Accepted, Vec<Problem>> {
    let mut config = deserialize(text)?;
    let withheld = validate::withhold_refused_l4(&mut config, policy);
    let mut problems = text::check(&config);
    problems.extend(validate(&config, policy));
    if problems.is_empty() {
        Ok(Accepted { config, withheld })
    } else {
        Err(problems)
    }
}

/// Parses and validates an upload (JSON), strictly: a refused `l4` port is a problem too. All problems found
/// are reported at once.
pub fn parse(text: &str, policy: &Policy) -> Result<DynamicConfig, Vec<Problem>> {
    let config = deserialize(text)?;
    let mut problems = text::check(&config);
    problems.extend(validate(&config, policy));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// The JSON document, deserialized with field paths in its errors (no value checks yet).
fn deserialize(text: &str) -> Result<DynamicConfig, Vec<Problem>> {
    let body = text.trim_start();
    if body.is_empty() {
        return Err(vec![problem("", "empty document: an empty file would drop every route, so it is refused")]);
    }
    if !body.starts_with('{') {
        return Err(vec![problem(
            "",
            "the upload must be a JSON object (what polaredge-client sends); YAML is refused because its aliases \
             and deep nesting can make a small upload cost the edge gigabytes or minutes (convert with `yq -o json`)",
        )]);
    }
    let mut json = serde_json::Deserializer::from_str(text);
    let config: DynamicConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![problem(path, format!("invalid: {}", e.inner()))]
    })?;
    json.end().map_err(|e| vec![problem("", format!("invalid: {e}"))])?;
    Ok(config)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn policy() -> Policy {
        Policy {
            entry_points: ["web".to_string(), "websecure".to_string()].into(),
            cert_resolvers: ["acme".to_string()].into(),
            max_backends: 100,
            now: || 1_796_000_000, // 2026-11
            l4_ports: vec![(1, 65535)],
            reserved_ports: [80, 443, 51820].into(),
        }
    }

    /// A test document written as YAML, as the JSON an upload is.
    pub fn json(yaml: &str) -> String {
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("test YAML");
        serde_json::to_string(&value).unwrap()
    }

    /// The problems of a document that must be refused, as text.
    pub fn problems(yaml: &str) -> Vec<String> {
        parse(&json(yaml), &policy()).expect_err("must be refused").iter().map(ToString::to_string).collect()
    }

    /// Refused, with some problem containing `needle`.
    pub fn refused_for(yaml: &str, needle: &str) {
        let p = problems(yaml);
        assert!(p.iter().any(|m| m.contains(needle)), "expected a problem with {needle:?}, got {p:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let p = problems("http:\n  routers:\n    a:\n      rule: x\n      service: s\n      entrypoint: [web]\n");
        assert!(p[0].starts_with("http.routers.a"), "{p:?}");
        assert!(p[0].contains("unknown field `entrypoint`"), "{p:?}");
        let p = problems("http:\n  routers:\n    a: {rule: x, service: s, priority: high}\n");
        assert!(p[0].starts_with("http.routers.a.priority: invalid"), "{p:?}");
    }

    #[test]
    fn empty_documents_are_refused_but_an_explicit_empty_section_is_not() {
        let text =
            |t: &str| -> Vec<String> { parse(t, &policy()).unwrap_err().iter().map(ToString::to_string).collect() };
        assert!(text("")[0].contains("empty document"));
        assert!(text("   \n")[0].contains("empty document"));
        assert!(text("{}\n")[0].contains("no routers"));
        assert!(text("null\n")[0].contains("JSON object"));
        // An explicit empty section is a deliberate "serve nothing" (the last Ingress was deleted).
        assert!(parse("{\"http\": {}}\n", &policy()).is_ok());
    }

    #[test]
    fn yaml_is_refused_so_aliases_and_deep_nesting_cannot_cost_the_edge() {
        // 60 KB of aliases: serde_yaml would expand this a hundredfold before giving up.
        let mut bomb =
            String::from("a: &a [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"]\n");
        for i in 0..2000 {
            bomb.push_str(&format!("b{i}: &b{i} [*a, *a, *a, *a, *a, *a, *a, *a]\n"));
        }
        let p = parse(&bomb, &policy()).unwrap_err();
        assert!(p[0].message.contains("JSON"), "{p:?}");
        // Deep nesting: rejected at the first wrong token, in linear time, within serde_json's 128 levels.
        let deep = format!("{{\"http\": {}", "[".repeat(200_000));
        let started = std::time::Instant::now();
        let p = parse(&deep, &policy()).unwrap_err();
        assert!(p[0].message.contains("invalid"), "{p:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "parsing took {:?}", started.elapsed());
        let deep_objects = "{\"http\": ".repeat(100_000);
        assert!(parse(&deep_objects, &policy()).is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse("{\"http\": {}} {\"tcp\": {}}", &policy()).is_err());
    }

    #[test]
    fn duplicate_names_are_refused_instead_of_the_last_one_winning() {
        let doc = "{\"http\": {\"routers\": {\"a\": {\"rule\": \"x\", \"service\": \"s\"}, \"a\": {\"rule\": \"y\", \"service\": \"s\"}}, \"services\": {\"s\": {\"loadBalancer\": {\"servers\": []}}}}}";
        let p = parse(doc, &policy()).unwrap_err();
        assert!(p[0].to_string().contains("duplicate key \"a\""), "{p:?}");
        assert!(p[0].path.starts_with("http.routers"), "{p:?}");
        let fields = "{\"http\": {\"routers\": {\"a\": {\"rule\": \"x\", \"rule\": \"y\", \"service\": \"s\"}}}}";
        assert!(parse(fields, &policy()).unwrap_err()[0].message.contains("duplicate field"));
    }
}
