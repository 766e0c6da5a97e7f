//! Gateway API hostnames: the intersection of a listener's hostname with a route's hostnames, and the Traefik
//! host matcher of the result. Pure functions.
//!
//! Unlike an Ingress host, a Gateway API wildcard is a suffix match: `*.example.com` matches `a.example.com`
//! and `a.b.example.com`, never `example.com`.

/// The hosts a route serves on a listener: `Some(vec![""])` for every host (neither names one), `None` when
/// the two have no host in common (the route does not attach to that listener).
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(listener) = listener.filter(|l| !l.is_empty()).map(str::to_ascii_lowercase) else {
        return Some(if route.is_empty() { vec![String::new()] } else { route });
    };
    if route.is_empty() {
        return Some(vec![listener]);
    }
    let mut out: Vec<String> = route.iter().filter_map(|r| common(&listener, r)).collect();
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

/// The more specific of two hostnames when one covers the other.
fn common(listener: &str, route: &str) -> Option<String> {
    match (wildcard_suffix(listener), wildcard_suffix(route)) {
        (None, None) => (listener == route).then(|| route.to_string()),
        (Some(suffix), None) => covers(suffix, route).then(|| route.to_string()),
        (None, Some(suffix)) => covers(suffix, listener).then(|| listener.to_string()),
        (Some(l), Some(r)) => {
            if r == l || covers(l, &r[1..]) {
                Some(route.to_string())
            } else if covers(r, &l[1..]) {
                Some(listener.to_string())
            } else {
                None
            }
        }
    }
}

/// `.example.com` for `*.example.com`.
fn wildcard_suffix(host: &str) -> Option<&str> {
    host.strip_prefix('*')
}

/// Whether a wildcard's suffix (`.example.com`) covers `host`: at least one label before it.
fn covers(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

/// The Traefik host matcher: none for every host, a suffix regexp for a wildcard.
pub fn matcher(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    Some(match wildcard_suffix(host) {
        Some(suffix) => format!("HostRegexp(`^.+{}$`)", suffix.replace('.', "\\.")),
        None => format!("Host(`{host}`)"),
    })
}

/// Precedence of a host (higher first): any exact host beats every wildcard, a longer host beats a shorter
/// one, and no host comes last (the Gateway API's "characters in a matching non-wildcard hostname, then in a
/// matching hostname").
pub fn rank(host: &str) -> (u8, usize) {
    match host {
        "" => (0, 0),
        h if h.starts_with('*') => (1, h.len()),
        h => (2, h.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listener_and_route_hostnames_intersect_as_the_spec_says() {
        // Neither names a host: every host.
        assert_eq!(intersect(None, &[]), Some(hosts(&[""])));
        assert_eq!(intersect(None, &hosts(&["a.test"])), Some(hosts(&["a.test"])));
        assert_eq!(intersect(Some("a.test"), &[]), Some(hosts(&["a.test"])));
        assert_eq!(intersect(Some("a.test"), &hosts(&["A.test", "b.test"])), Some(hosts(&["a.test"])));
        assert_eq!(intersect(Some("a.test"), &hosts(&["b.test"])), None);
        // A wildcard listener takes the route's more specific names, at any depth, never the bare suffix.
        assert_eq!(
            intersect(Some("*.example.com"), &hosts(&["foo.example.com", "a.b.example.com", "example.com"])),
            Some(hosts(&["a.b.example.com", "foo.example.com"]))
        );
        // A wildcard route on a concrete listener serves the listener's name.
        assert_eq!(intersect(Some("foo.example.com"), &hosts(&["*.example.com"])), Some(hosts(&["foo.example.com"])));
        // Two wildcards: the narrower one.
        assert_eq!(
            intersect(Some("*.example.com"), &hosts(&["*.foo.example.com"])),
            Some(hosts(&["*.foo.example.com"]))
        );
        assert_eq!(
            intersect(Some("*.foo.example.com"), &hosts(&["*.example.com"])),
            Some(hosts(&["*.foo.example.com"]))
        );
        assert_eq!(intersect(Some("*.example.com"), &hosts(&["*.example.org"])), None);
    }

    #[test]
    fn a_wildcard_matches_any_depth_and_exact_hosts_rank_first() {
        assert_eq!(matcher("*.example.com").unwrap(), "HostRegexp(`^.+\\.example\\.com$`)");
        assert_eq!(matcher("a.test").unwrap(), "Host(`a.test`)");
        assert_eq!(matcher(""), None);
        assert!(rank("a.io") > rank("*.very-long-name.example.com"));
        assert!(rank("*.b.example.com") > rank("*.example.com"));
        assert!(rank("*.example.com") > rank(""));
    }
}
