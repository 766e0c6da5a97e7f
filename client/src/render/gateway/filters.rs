//! HTTPRoute filters as Traefik middlewares. Pure functions.
//!
//! - RequestHeaderModifier / ResponseHeaderModifier: a `headers` middleware. `set` and `add` both set the
//!   header (Traefik's custom headers replace; the spec's `add` appends to an existing value), `remove` sets
//!   it empty, which Traefik takes as "delete".
//! - RequestRedirect: a `redirectRegex` on the whole URL, written per router, since the listener (scheme and
//!   port) and the matched prefix are known there.
//! - URLRewrite: the hostname through a `Host` custom request header, the path through `replacePath` or
//!   `replacePathRegex`.
//! - RequestMirror, CORS and ExtensionRef are not supported: the rule is left out and the route says so.

use super::matching::{escape_regex as escape, PathKind};
use gateway_api::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewrite, HttpRouteRulesFiltersUrlRewritePathType,
};
use routes::model::{self, Middleware};

/// The listener a router serves: what a redirect keeps unless the filter changes it.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The listener's port.
    pub port: i32,
}

/// The middlewares of one router, in the filters' order; or why the rule cannot be served.
pub fn middlewares(
    filters: &[HttpRouteRulesFilters],
    listener: Listener,
    path: &PathKind,
) -> Result<Vec<Middleware>, String> {
    let mut out = Vec::new();
    for filter in filters {
        let middleware = match filter.r#type {
            FilterType::RequestHeaderModifier => {
                let m = filter.request_header_modifier.as_ref().ok_or("requestHeaderModifier is missing")?;
                let pairs = m.set.iter().flatten().map(|h| (&h.name, &h.value));
                let added = m.add.iter().flatten().map(|h| (&h.name, &h.value));
                let headers = model::Headers {
                    custom_request_headers: header_map(pairs.chain(added), m.remove.iter().flatten())?,
                    ..Default::default()
                };
                Middleware { headers: Some(headers), ..Default::default() }
            }
            FilterType::ResponseHeaderModifier => {
                let m = filter.response_header_modifier.as_ref().ok_or("responseHeaderModifier is missing")?;
                let pairs = m.set.iter().flatten().map(|h| (&h.name, &h.value));
                let added = m.add.iter().flatten().map(|h| (&h.name, &h.value));
                let headers = model::Headers {
                    custom_response_headers: header_map(pairs.chain(added), m.remove.iter().flatten())?,
                    ..Default::default()
                };
                Middleware { headers: Some(headers), ..Default::default() }
            }
            FilterType::RequestRedirect => {
                let r = filter.request_redirect.as_ref().ok_or("requestRedirect is missing")?;
                redirect(r, listener, path)?
            }
            FilterType::UrlRewrite => {
                let r = filter.url_rewrite.as_ref().ok_or("urlRewrite is missing")?;
                out.extend(rewrite(r, path)?);
                continue;
            }
            ref other => return Err(format!("filter {other:?} is not supported by this gateway")),
        };
        out.push(middleware);
    }
    if out.is_empty() {
        return Ok(out);
    }
    // Every value as the agent will check it: a refused value would refuse the whole snapshot.
    let mut http = model::Http::default();
    http.middlewares.extend(out.iter().enumerate().map(|(i, m)| (i.to_string(), m.clone())));
    let document = model::DynamicConfig { http: Some(http), ..Default::default() };
    if let Some(problem) = routes::text::check(&document).first() {
        return Err(format!("a filter value {}", problem.message));
    }
    Ok(out)
}

fn header_map<'a>(
    set: impl Iterator<Item = (&'a String, &'a String)>,
    remove: impl Iterator<Item = &'a String>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut map = std::collections::BTreeMap::new();
    for (name, value) in set {
        map.insert(name.clone(), value.clone());
    }
    for name in remove {
        map.insert(name.clone(), String::new());
    }
    if let Some(bad) = map.keys().find(|n| !routes::validate::is_header_name(n)) {
        return Err(format!("{bad:?} is not a header name"));
    }
    Ok(map)
}

/// A redirect as a `redirectRegex` over `scheme://host[:port]/path[?query]` (groups: 1 scheme, 2 host,
/// 3 `:port`, 4 the path after the matched prefix, 5 `?query`).
fn redirect(
    r: &HttpRouteRulesFiltersRequestRedirect,
    listener: Listener,
    path: &PathKind,
) -> Result<Middleware, String> {
    let scheme = match &r.scheme {
        Some(HttpRouteRulesFiltersRequestRedirectScheme::Http) => "http",
        Some(HttpRouteRulesFiltersRequestRedirectScheme::Https) => "https",
        None => listener.scheme,
    };
    let host = r.hostname.clone().unwrap_or_else(|| "${2}".into());
    // No port: the well-known one of a scheme the filter names, else the listener's.
    let port = r.port.unwrap_or(if r.scheme.is_some() { well_known(scheme) } else { listener.port });
    let port = if port == well_known(scheme) { String::new() } else { format!(":{port}") };
    let (prefix, new_path) = match &r.path {
        None => (String::new(), "${4}".to_string()),
        Some(p) => match p.r#type {
            HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => {
                (String::new(), p.replace_full_path.clone().ok_or("replaceFullPath is missing")?)
            }
            HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => {
                let matched = path.prefix().ok_or("ReplacePrefixMatch needs a PathPrefix match")?;
                let new = p.replace_prefix_match.clone().ok_or("replacePrefixMatch is missing")?;
                (escape(matched), format!("{}${{4}}", new.trim_end_matches('/')))
            }
        },
    };
    let path_group = if prefix.is_empty() { "(/[^?]*)?".to_string() } else { format!("{prefix}(/[^?]*)?") };
    let regex = format!("^(https?)://([^/:]+)(:[0-9]+)?{path_group}(\\?.*)?$");
    let replacement = format!("{scheme}://{host}{port}{new_path}${{5}}");
    let permanent = matches!(r.status_code, Some(301 | 308));
    Ok(Middleware {
        redirect_regex: Some(model::RedirectRegex { regex, replacement, permanent: Some(permanent) }),
        ..Default::default()
    })
}

fn well_known(scheme: &str) -> i32 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

fn rewrite(r: &HttpRouteRulesFiltersUrlRewrite, path: &PathKind) -> Result<Vec<Middleware>, String> {
    let mut out = Vec::new();
    if let Some(host) = &r.hostname {
        let mut headers = model::Headers::default();
        headers.custom_request_headers.insert("Host".into(), host.clone());
        out.push(Middleware { headers: Some(headers), ..Default::default() });
    }
    if let Some(p) = &r.path {
        out.push(match p.r#type {
            HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                let path = p.replace_full_path.clone().ok_or("replaceFullPath is missing")?;
                Middleware { replace_path: Some(model::ReplacePath { path }), ..Default::default() }
            }
            HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                let matched = path.prefix().ok_or("ReplacePrefixMatch needs a PathPrefix match")?;
                let new = p.replace_prefix_match.clone().ok_or("replacePrefixMatch is missing")?;
                Middleware {
                    replace_path_regex: Some(model::ReplacePathRegex {
                        regex: format!("^{}(/.*)?$", escape(matched)),
                        // `/prefix` -> `/new`, `/prefix/x` -> `/new/x`; with `/` as the new prefix, `/prefix`
                        // becomes the empty path, which Traefik sends as `/`.
                        replacement: format!("{}${{1}}", new.trim_end_matches('/')),
                    }),
                    ..Default::default()
                }
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: Listener = Listener { scheme: "http", port: 80 };

    fn filters(yaml: &str) -> Vec<HttpRouteRulesFilters> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn redirect_of(yaml: &str, path: &PathKind) -> model::RedirectRegex {
        middlewares(&filters(yaml), WEB, path).unwrap().remove(0).redirect_regex.unwrap()
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let m = middlewares(
            &filters(
                "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Set, value: a}], \
                 add: [{name: X-Add, value: b}], remove: [X-Gone]}}, {type: ResponseHeaderModifier, \
                 responseHeaderModifier: {set: [{name: X-Resp, value: c}]}}]",
            ),
            WEB,
            &PathKind::Prefix(String::new()),
        )
        .unwrap();
        let request = &m[0].headers.as_ref().unwrap().custom_request_headers;
        assert_eq!(request["X-Set"], "a");
        assert_eq!(request["X-Add"], "b");
        assert_eq!(request["X-Gone"], "");
        assert_eq!(m[1].headers.as_ref().unwrap().custom_response_headers["X-Resp"], "c");
        let bad = "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: a}]}}]";
        assert!(middlewares(&filters(bad), WEB, &PathKind::Prefix(String::new())).is_err());
    }

    #[test]
    fn redirects_keep_what_the_filter_does_not_change() {
        let any = PathKind::Prefix(String::new());
        let r = redirect_of("[{type: RequestRedirect, requestRedirect: {hostname: example.org}}]", &any);
        assert_eq!(r.regex, "^(https?)://([^/:]+)(:[0-9]+)?(/[^?]*)?(\\?.*)?$");
        assert_eq!(r.replacement, "http://example.org${4}${5}");
        assert_eq!(r.permanent, Some(false));
        let r = redirect_of("[{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]", &any);
        assert_eq!(r.replacement, "https://${2}${4}${5}");
        assert_eq!(r.permanent, Some(true));
        let r = redirect_of("[{type: RequestRedirect, requestRedirect: {port: 8083}}]", &any);
        assert_eq!(r.replacement, "http://${2}:8083${4}${5}");
        let r = redirect_of("[{type: RequestRedirect, requestRedirect: {scheme: https, port: 443}}]", &any);
        assert_eq!(r.replacement, "https://${2}${4}${5}");
        let full =
            "[{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full}}}]";
        assert_eq!(redirect_of(full, &any).replacement, "http://${2}/full${5}");
        let prefix = "[{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, \
                      replacePrefixMatch: /replacement-prefix}}}]";
        let r = redirect_of(prefix, &PathKind::Prefix("/original-prefix".into()));
        assert_eq!(r.regex, "^(https?)://([^/:]+)(:[0-9]+)?/original-prefix(/[^?]*)?(\\?.*)?$");
        assert_eq!(r.replacement, "http://${2}/replacement-prefix${4}${5}");
        assert!(middlewares(&filters(prefix), WEB, &PathKind::Exact("/x".into())).is_err());
    }

    #[test]
    fn rewrites_replace_the_host_and_the_path() {
        let yaml = "[{type: URLRewrite, urlRewrite: {hostname: one.example.org, path: {type: ReplacePrefixMatch, \
                    replacePrefixMatch: /}}}]";
        let m = middlewares(&filters(yaml), WEB, &PathKind::Prefix("/strip.prefix".into())).unwrap();
        assert_eq!(m[0].headers.as_ref().unwrap().custom_request_headers["Host"], "one.example.org");
        let r = m[1].replace_path_regex.as_ref().unwrap();
        assert_eq!((r.regex.as_str(), r.replacement.as_str()), ("^/strip\\.prefix(/.*)?$", "${1}"));
        let yaml = "[{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]";
        let m = middlewares(&filters(yaml), WEB, &PathKind::Prefix("/x".into())).unwrap();
        assert_eq!(m[0].replace_path.as_ref().unwrap().path, "/one");
    }

    #[test]
    fn unsupported_filters_and_unsafe_values_are_refused() {
        let mirror = "[{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]";
        assert!(middlewares(&filters(mirror), WEB, &PathKind::Prefix(String::new())).is_err());
        let template =
            "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X, value: '{{ env `A` }}'}]}}]";
        assert!(middlewares(&filters(template), WEB, &PathKind::Prefix(String::new())).is_err());
    }
}
