//! The `polaredge.io/` annotations an Ingress may carry (README "Annotations").

use super::rules::PathMatch;
use std::collections::BTreeMap;

/// Annotation prefix.
pub const PREFIX: &str = "polaredge.io/";

/// Parsed annotations of one Ingress; unknown values are reported in `problems` and ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// `polaredge.io/entrypoints`: comma-separated entrypoints for the plain routers.
    pub entry_points: Option<Vec<String>>,
    /// `polaredge.io/redirect-to-https: "true"`: plain HTTP on TLS hosts redirects to https.
    pub redirect_to_https: bool,
    /// `polaredge.io/strip-prefix: "true"`: remove the matched path prefix before forwarding.
    pub strip_prefix: bool,
    /// `polaredge.io/priority`: explicit router priority.
    pub priority: Option<i64>,
    /// `polaredge.io/backend-scheme: http|https`.
    pub backend_https: Option<bool>,
    /// `polaredge.io/pass-host-header: "true"|"false"`.
    pub pass_host_header: Option<bool>,
    /// `polaredge.io/sticky-cookie`: cookie name (empty: Traefik's default name).
    pub sticky_cookie: Option<String>,
    /// `polaredge.io/path-match: exact|prefix`: how ImplementationSpecific paths match.
    pub path_match: Option<PathMatch>,
    /// `polaredge.io/tls-passthrough: "true"`: TLS to the hosts goes to the pods untouched, routed by SNI.
    pub tls_passthrough: bool,
    /// Problems found.
    pub problems: Vec<String>,
}

fn boolean(key: &str, value: &str, problems: &mut Vec<String>) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        other => {
            problems.push(format!("{key}: {other:?} is not \"true\" or \"false\""));
            None
        }
    }
}

impl Annotations {
    /// Reads the `polaredge.io/` annotations.
    pub fn parse(all: Option<&BTreeMap<String, String>>) -> Annotations {
        let mut a = Annotations::default();
        for (key, value) in all.into_iter().flatten() {
            let Some(name) = key.strip_prefix(PREFIX) else { continue };
            let value = value.trim();
            let problems = &mut a.problems;
            match name {
                "entrypoints" => {
                    let list: Vec<String> =
                        value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                    if list.is_empty() {
                        problems.push(format!("{key}: empty list"));
                    } else {
                        a.entry_points = Some(list);
                    }
                }
                "redirect-to-https" => a.redirect_to_https = boolean(key, value, problems).unwrap_or(false),
                "strip-prefix" => a.strip_prefix = boolean(key, value, problems).unwrap_or(false),
                "priority" => match value.parse::<i64>() {
                    // The agent refuses priorities above its canary router's.
                    Ok(p) if p > 0 && p <= routes::validate::MAX_PRIORITY => a.priority = Some(p),
                    _ => problems.push(format!(
                        "{key}: {value:?} is not an integer from 1 to {}",
                        routes::validate::MAX_PRIORITY
                    )),
                },
                "backend-scheme" => match value {
                    "http" => a.backend_https = Some(false),
                    "https" => a.backend_https = Some(true),
                    other => problems.push(format!("{key}: {other:?} is not http or https")),
                },
                "pass-host-header" => a.pass_host_header = boolean(key, value, problems),
                "sticky-cookie" => a.sticky_cookie = Some(value.to_string()),
                "tls-passthrough" => a.tls_passthrough = boolean(key, value, problems).unwrap_or(false),
                "path-match" => match value {
                    "exact" => a.path_match = Some(PathMatch::Exact),
                    "prefix" => a.path_match = Some(PathMatch::Prefix),
                    other => problems.push(format!("{key}: {other:?} is not exact or prefix")),
                },
                other => problems.push(format!("unknown annotation {PREFIX}{other}")),
            }
        }
        a
    }
}
