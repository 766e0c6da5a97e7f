//! HTTPRoute matches as Traefik rules, and the precedence the Gateway API orders them by. Pure functions.

use super::hostnames;
use crate::render::rules::{self, PathMatch};
use gateway_api::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};

/// Regular-expression text (RE2, as Traefik compiles it) that matches `s` literally.
pub fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How a match's path matches, with the path (a PathPrefix's trailing `/` removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// `Exact`.
    Exact(String),
    /// `PathPrefix`, element-wise.
    Prefix(String),
    /// `RegularExpression` (RE2, as Traefik's PathRegexp).
    Regex(String),
}

impl PathKind {
    /// The match's path; `PathPrefix /` when it names none.
    pub fn of(m: &HttpRouteRulesMatches) -> PathKind {
        let path = m.path.as_ref();
        let value = path.and_then(|p| p.value.clone()).unwrap_or_else(|| "/".into());
        match path.and_then(|p| p.r#type.as_ref()) {
            Some(PathType::Exact) => PathKind::Exact(value),
            Some(PathType::RegularExpression) => PathKind::Regex(value),
            _ => PathKind::Prefix(value.trim_end_matches('/').to_string()),
        }
    }

    /// The prefix a `ReplacePrefixMatch` replaces (`""` for `/`), if this is a PathPrefix match.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            PathKind::Prefix(p) => Some(p),
            _ => None,
        }
    }

    fn matcher(&self) -> String {
        match self {
            PathKind::Exact(p) => rules::path_matcher(PathMatch::Exact, p),
            PathKind::Prefix(p) => rules::path_matcher(PathMatch::Prefix, if p.is_empty() { "/" } else { p }),
            PathKind::Regex(p) => format!("PathRegexp(`{p}`)"),
        }
    }

    /// (kind rank, length): Exact first, then the longest prefix, regular expressions last.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathKind::Exact(p) => (2, p.len()),
            PathKind::Prefix(p) => (1, p.len()),
            PathKind::Regex(_) => (0, 0),
        }
    }
}

/// Precedence of one (host, match) pair, compared in the spec's order (higher wins): host, path, method,
/// number of header matches, number of query matches. Ties go to the older route, then by namespace/name,
/// then by rule and match index ([`Order`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    host: (u8, usize),
    path: (u8, usize),
    method: bool,
    headers: usize,
    query: usize,
}

/// The full order of routers: precedence descending, then the tie-breakers ascending.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    /// The spec's precedence, reversed so that sorting ascending puts the winner first.
    pub precedence: std::cmp::Reverse<Precedence>,
    /// Creation time of the route (seconds; older first).
    pub created: i64,
    /// `namespace/name` of the route.
    pub route: String,
    /// Rule index, then match index.
    pub position: (usize, usize),
}

/// A match as a Traefik rule on `host` (empty: any host), with its precedence; or why Traefik cannot
/// express it safely.
pub fn rule(host: &str, m: &HttpRouteRulesMatches) -> Result<(String, Precedence), String> {
    let path = PathKind::of(m);
    let mut parts: Vec<String> = hostnames::matcher(host).into_iter().collect();
    let mut literals: Vec<&str> = vec![host];
    parts.push(path.matcher());
    let (PathKind::Exact(p) | PathKind::Prefix(p) | PathKind::Regex(p)) = &path;
    literals.push(p);
    if !matches!(path, PathKind::Regex(_)) && !p.is_empty() && !p.starts_with('/') {
        return Err(format!("path {p:?} does not start with '/'"));
    }
    let method = m.method.as_ref().map(|method| {
        let name = serde_json::to_value(method).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        parts.push(format!("Method(`{name}`)"));
    });
    let headers = m.headers.as_deref().unwrap_or_default();
    for h in headers {
        literals.extend([h.name.as_str(), h.value.as_str()]);
        parts.push(match h.r#type {
            Some(HeaderType::RegularExpression) => format!("HeaderRegexp(`{}`, `{}`)", h.name, h.value),
            _ => format!("Header(`{}`, `{}`)", h.name, h.value),
        });
    }
    let query = m.query_params.as_deref().unwrap_or_default();
    for q in query {
        literals.extend([q.name.as_str(), q.value.as_str()]);
        parts.push(match q.r#type {
            Some(QueryType::RegularExpression) => format!("QueryRegexp(`{}`, `{}`)", q.name, q.value),
            _ => format!("Query(`{}`, `{}`)", q.name, q.value),
        });
    }
    if let Some(bad) = literals.iter().find(|l| !rules::literal_ok(l) || routes::text::unsafe_reason(l).is_some()) {
        return Err(format!(
            "{bad:?} cannot be written into a Traefik rule (backquotes, `{{{{` or control characters)"
        ));
    }
    let precedence = Precedence {
        host: hostnames::rank(host),
        path: path.rank(),
        method: method.is_some(),
        headers: headers.len(),
        query: query.len(),
    };
    Ok((parts.join(" && "), precedence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> HttpRouteRulesMatches {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn matches_become_traefik_rules() {
        let (r, _) = rule("a.test", &parse("{}")).unwrap();
        assert_eq!(r, "Host(`a.test`) && PathPrefix(`/`)");
        let (r, _) = rule("", &parse("{path: {type: PathPrefix, value: /v1/}}")).unwrap();
        assert_eq!(r, "(Path(`/v1`) || PathPrefix(`/v1/`))");
        let (r, _) = rule("*.example.com", &parse("{path: {type: Exact, value: /login}, method: POST}")).unwrap();
        assert_eq!(r, "HostRegexp(`^.+\\.example\\.com$`) && Path(`/login`) && Method(`POST`)");
        let yaml = "{path: {type: RegularExpression, value: '/v[0-9]+'}, headers: [{name: version, value: two}, \
                    {type: RegularExpression, name: env, value: 'can.*'}], queryParams: [{name: animal, value: whale}]}";
        let (r, _) = rule("", &parse(yaml)).unwrap();
        assert_eq!(
            r,
            "PathRegexp(`/v[0-9]+`) && Header(`version`, `two`) && HeaderRegexp(`env`, `can.*`) && Query(`animal`, `whale`)"
        );
    }

    #[test]
    fn unsafe_literals_are_refused() {
        assert!(rule("", &parse("{headers: [{name: a, value: 'x`) || Path(`/'}]}")).is_err());
        assert!(rule("", &parse("{path: {type: Exact, value: '/{{ env `X` }}'}}")).is_err());
        assert!(rule("", &parse("{path: {type: Exact, value: 'relative'}}")).is_err());
    }

    #[test]
    fn precedence_follows_the_spec_order() {
        let p = |host: &str, yaml: &str| rule(host, &parse(yaml)).unwrap().1;
        // Host first: an exact host beats a wildcard whatever the paths.
        assert!(p("a.test", "{}") > p("*.test", "{path: {type: Exact, value: /long/path}}"));
        // Exact beats any prefix; a longer prefix beats a shorter one; regular expressions come last.
        assert!(p("", "{path: {type: Exact, value: /a}}") > p("", "{path: {type: PathPrefix, value: /a/b/c}}"));
        assert!(p("", "{path: {type: PathPrefix, value: /a/b}}") > p("", "{path: {type: PathPrefix, value: /a}}"));
        assert!(p("", "{path: {type: PathPrefix, value: /}}") > p("", "{path: {type: RegularExpression, value: /.*}}"));
        // Then a method, then more headers, then more query parameters.
        assert!(p("", "{method: GET}") > p("", "{headers: [{name: a, value: b}, {name: c, value: d}]}"));
        assert!(
            p("", "{headers: [{name: a, value: b}, {name: c, value: d}]}") > p("", "{headers: [{name: a, value: b}]}")
        );
        assert!(p("", "{headers: [{name: a, value: b}]}") > p("", "{queryParams: [{name: a, value: b}]}"));
    }
}
