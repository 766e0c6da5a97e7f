//! Ingress host and path semantics as Traefik rules, and the priorities that make the most specific rule win.
//! Pure functions.

/// How an Ingress path matches (after annotations have resolved ImplementationSpecific).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMatch {
    /// The path exactly (pathType Exact).
    Exact,
    /// Element-wise prefix, as the Kubernetes spec defines pathType Prefix: `/foo` matches `/foo` and
    /// `/foo/bar`, never `/foobar`.
    Prefix,
}

/// The host matcher: none for an empty host, one label for a wildcard.
pub fn host_matcher(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    Some(match host.strip_prefix("*.") {
        // `*.example.com` matches exactly one label (the Ingress spec), so not `a.b.example.com`.
        Some(suffix) => format!("HostRegexp(`^[^.]+\\.{}$`)", suffix.replace('.', "\\.")),
        None => format!("Host(`{host}`)"),
    })
}

/// The path matcher.
pub fn path_matcher(kind: PathMatch, path: &str) -> String {
    match kind {
        PathMatch::Exact => format!("Path(`{path}`)"),
        PathMatch::Prefix => {
            let trimmed = path.trim_end_matches('/');
            if trimmed.is_empty() {
                "PathPrefix(`/`)".to_string()
            } else {
                // Element-wise: the path itself, or the path followed by a separator.
                format!("(Path(`{trimmed}`) || PathPrefix(`{trimmed}/`))")
            }
        }
    }
}

/// A whole rule: host and path joined.
pub fn rule(host: &str, kind: PathMatch, path: &str) -> String {
    let path = path_matcher(kind, path);
    match host_matcher(host) {
        Some(host) => format!("{host} && {path}"),
        None => path,
    }
}

/// Priority of a rule: a concrete host beats a wildcard beats no host; then a longer path beats a shorter
/// one; then Exact beats Prefix for the same path. Always above 1, which the default backend takes.
pub fn priority(host: &str, kind: PathMatch, path: &str) -> i64 {
    let host_rank = if host.is_empty() {
        1
    } else if host.starts_with("*.") {
        2
    } else {
        3
    };
    let path_len = path.trim_end_matches('/').len().min(9_999) as i64;
    host_rank * 1_000_000 + path_len * 10 + if kind == PathMatch::Exact { 5 } else { 0 } + 10
}

/// Priority of a default backend: below every rule.
pub const DEFAULT_BACKEND_PRIORITY: i64 = 1;

/// Whether a string is safe inside a Traefik rule's backtick literal.
pub fn literal_ok(s: &str) -> bool {
    !s.contains('`') && !s.contains("{{")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_the_ingress_spec() {
        let table = [
            ("app.example.com", PathMatch::Prefix, "/", "Host(`app.example.com`) && PathPrefix(`/`)"),
            (
                "app.example.com",
                PathMatch::Prefix,
                "/v1",
                "Host(`app.example.com`) && (Path(`/v1`) || PathPrefix(`/v1/`))",
            ),
            (
                "app.example.com",
                PathMatch::Prefix,
                "/v1/",
                "Host(`app.example.com`) && (Path(`/v1`) || PathPrefix(`/v1/`))",
            ),
            ("", PathMatch::Exact, "/healthz", "Path(`/healthz`)"),
            ("*.example.com", PathMatch::Prefix, "/", "HostRegexp(`^[^.]+\\.example\\.com$`) && PathPrefix(`/`)"),
        ];
        for (host, kind, path, expected) in table {
            assert_eq!(rule(host, kind, path), expected, "{host} {kind:?} {path}");
        }
    }

    #[test]
    fn more_specific_rules_get_higher_priorities() {
        let p = priority;
        assert!(p("a.example.com", PathMatch::Prefix, "/") > p("*.example.com", PathMatch::Prefix, "/api/v1/long"));
        assert!(p("*.example.com", PathMatch::Prefix, "/") > p("", PathMatch::Prefix, "/api/v1/long"));
        assert!(p("h", PathMatch::Prefix, "/api/v1") > p("h", PathMatch::Prefix, "/api"));
        assert!(p("h", PathMatch::Exact, "/api") > p("h", PathMatch::Prefix, "/api"));
        assert!(p("", PathMatch::Prefix, "/") > DEFAULT_BACKEND_PRIORITY);
    }
}
