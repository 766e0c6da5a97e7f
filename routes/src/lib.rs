//! The Traefik dynamic configuration POLAREDGE carries from the client to the agent: a typed model
//! ([`model`]), strict parsing and validation (the agent refuses what fails), the list of pod backends, and
//! the rewrite of those backends to the agent's local forwarders. The client renders into the same model and
//! checks its output with the same validation. Pure functions: no I/O.

pub mod model;

use model::DynamicConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Prefix of the generation marker middleware; upload names may not use it.
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

fn problem(path: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { path: path.into(), message: message.into() }
}

/// What the agent allows an upload to use.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Entrypoints routers may name (the public ones). The admin entrypoint is never among them.
    pub entry_points: BTreeSet<String>,
    /// ACME resolvers routers may name.
    pub cert_resolvers: BTreeSet<String>,
}

/// Parses and validates an upload. All problems are reported at once.
pub fn parse(text: &str, policy: &Policy) -> Result<DynamicConfig, Vec<Problem>> {
    if text.contains("{{") {
        // Traefik runs the file through Go templating; a literal `{{` breaks the whole file.
        return Err(vec![problem(
            "",
            "the document contains `{{`, which Traefik's file provider treats as a template",
        )]);
    }
    if text.trim().is_empty() {
        return Err(vec![problem("", "empty document: an empty file would drop every route, so it is refused")]);
    }
    let config: DynamicConfig = serde_yaml::from_str(text).map_err(|e| vec![problem("", format!("invalid: {e}"))])?;
    let problems = validate(&config, policy);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn check_name(problems: &mut Vec<Problem>, path: &str, name: &str) {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        problems
            .push(problem(path, "names may use only letters, digits, '-', '_' and '.' (no '@' provider references)"));
    } else if name.starts_with(MARKER_PREFIX) {
        problems.push(problem(path, format!("names starting with '{MARKER_PREFIX}' are reserved for the agent")));
    }
}

fn check_entry_points(problems: &mut Vec<Problem>, path: &str, names: &[String], policy: &Policy) {
    for name in names {
        if !policy.entry_points.contains(name) {
            let known: Vec<&str> = policy.entry_points.iter().map(String::as_str).collect();
            problems.push(problem(path, format!("unknown entrypoint {name:?}; this agent has {known:?}")));
        }
    }
}

fn check_tls(
    problems: &mut Vec<Problem>,
    path: &str,
    tls: &Option<model::RouterTls>,
    policy: &Policy,
    options: &BTreeSet<&String>,
) {
    let Some(tls) = tls else { return };
    if let Some(resolver) = &tls.cert_resolver {
        if !policy.cert_resolvers.contains(resolver) {
            problems.push(problem(
                format!("{path}.tls.certResolver"),
                format!(
                    "unknown resolver {resolver:?} (an ACME resolver exists only when the agent has an ACME email)"
                ),
            ));
        }
    }
    if let Some(name) = &tls.options {
        if name != "default" && !options.contains(name) {
            problems.push(problem(format!("{path}.tls.options"), format!("no TLS options named {name:?}")));
        }
    }
}

/// Checks references, names, entrypoints and backends of a parsed document.
pub fn validate(config: &DynamicConfig, policy: &Policy) -> Vec<Problem> {
    let mut problems = Vec::new();
    let tls_options: BTreeSet<&String> = config.tls.iter().flat_map(|t| t.options.keys()).collect();
    let mut routers = 0;
    if let Some(http) = &config.http {
        for (name, router) in &http.routers {
            routers += 1;
            let path = format!("http.routers.{name}");
            check_name(&mut problems, &path, name);
            if router.rule.trim().is_empty() {
                problems.push(problem(format!("{path}.rule"), "empty rule"));
            }
            if !http.services.contains_key(&router.service) {
                problems
                    .push(problem(format!("{path}.service"), format!("no http service named {:?}", router.service)));
            }
            for m in &router.middlewares {
                if !http.middlewares.contains_key(m) {
                    problems.push(problem(format!("{path}.middlewares"), format!("no middleware named {m:?}")));
                }
            }
            check_entry_points(&mut problems, &format!("{path}.entryPoints"), &router.entry_points, policy);
            check_tls(&mut problems, &path, &router.tls, policy, &tls_options);
        }
        for (name, service) in &http.services {
            let path = format!("http.services.{name}");
            check_name(&mut problems, &path, name);
            let lb = &service.load_balancer;
            for (i, server) in lb.servers.iter().enumerate() {
                if let Err(message) = parse_http_backend(&server.url) {
                    problems.push(problem(format!("{path}.loadBalancer.servers[{i}].url"), message));
                }
            }
            if let Some(transport) = &lb.servers_transport {
                if !http.servers_transports.contains_key(transport) {
                    problems.push(problem(
                        format!("{path}.loadBalancer.serversTransport"),
                        format!("no servers transport named {transport:?}"),
                    ));
                }
            }
        }
        for (name, middleware) in &http.middlewares {
            let path = format!("http.middlewares.{name}");
            check_name(&mut problems, &path, name);
            if middleware.kinds() != 1 {
                problems.push(problem(
                    path,
                    "a middleware must have exactly one kind (stripPrefix, redirectScheme or headers)",
                ));
            }
        }
        for name in http.servers_transports.keys() {
            check_name(&mut problems, &format!("http.serversTransports.{name}"), name);
        }
    }
    if let Some(tcp) = &config.tcp {
        for (name, router) in &tcp.routers {
            routers += 1;
            let path = format!("tcp.routers.{name}");
            check_name(&mut problems, &path, name);
            if router.rule.trim().is_empty() {
                problems.push(problem(format!("{path}.rule"), "empty rule"));
            }
            if !tcp.services.contains_key(&router.service) {
                problems.push(problem(format!("{path}.service"), format!("no tcp service named {:?}", router.service)));
            }
            check_entry_points(&mut problems, &format!("{path}.entryPoints"), &router.entry_points, policy);
            check_tls(&mut problems, &path, &router.tls, policy, &tls_options);
        }
        for (name, service) in &tcp.services {
            let path = format!("tcp.services.{name}");
            check_name(&mut problems, &path, name);
            for (i, server) in service.load_balancer.servers.iter().enumerate() {
                if let Err(message) = parse_ip_port(&server.address) {
                    problems.push(problem(format!("{path}.loadBalancer.servers[{i}].address"), message));
                }
            }
        }
    }
    if let Some(udp) = &config.udp {
        if !udp.routers.is_empty() || !udp.services.is_empty() {
            problems.push(problem("udp", "UDP routes are not carried through the tunnel yet; remove the udp section"));
        }
    }
    if routers == 0 && config.http.is_none() && config.tcp.is_none() {
        // `{}` is what a broken sender produces; "serve nothing" is said explicitly, as `http: {}`.
        problems.push(problem(
            "",
            "no routers and no sections: this would drop every route, so it is refused (send `http: {}` to serve nothing on purpose)",
        ));
    }
    problems
}

fn parse_ip_port(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not IP:port; backends must be pod addresses (IPv6 as [addr]:port), not host names")
    })
}

/// Splits `http://IP:port` / `https://IP:port` into scheme and address.
pub fn parse_http_backend(url: &str) -> Result<(&str, SocketAddr), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} has no scheme (http:// or https://)"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!("{url:?}: backend URLs carry no path"));
    }
    let addr = match rest.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            // A URL without a port uses the scheme's.
            let host = rest.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = host.parse().map_err(|_| {
                format!(
                    "{url:?}: backends must be pod IP addresses, not host names (the agent cannot resolve cluster DNS)"
                )
            })?;
            SocketAddr::new(ip, if scheme == "https" { 443 } else { 80 })
        }
    };
    Ok((scheme, addr))
}

/// Every distinct pod endpoint the document routes to (all of them TCP).
pub fn backends(config: &DynamicConfig) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    if let Some(http) = &config.http {
        for service in http.services.values() {
            out.extend(
                service.load_balancer.servers.iter().filter_map(|s| parse_http_backend(&s.url).ok().map(|(_, a)| a)),
            );
        }
    }
    if let Some(tcp) = &config.tcp {
        for service in tcp.services.values() {
            out.extend(service.load_balancer.servers.iter().filter_map(|s| s.address.parse::<SocketAddr>().ok()));
        }
    }
    out
}

/// The document Traefik gets: every pod backend replaced by its local forwarder, plus the marker middleware
/// `gen-<generation>` that tells the agent, through Traefik's API, that this exact file is live.
pub fn rewrite(
    config: &DynamicConfig,
    forwarders: &BTreeMap<SocketAddr, SocketAddr>,
    generation: &str,
) -> DynamicConfig {
    let mut out = config.clone();
    let local = |addr: SocketAddr| forwarders.get(&addr).copied();
    let http = out.http.get_or_insert_with(Default::default);
    for service in http.services.values_mut() {
        for server in &mut service.load_balancer.servers {
            if let Ok((scheme, addr)) = parse_http_backend(&server.url) {
                if let Some(forwarder) = local(addr) {
                    server.url = format!("{scheme}://{forwarder}");
                }
            }
        }
    }
    let mut headers = model::Headers::default();
    headers.custom_response_headers.insert("X-Polaredge-Generation".into(), generation.into());
    http.middlewares.insert(
        format!("{MARKER_PREFIX}{generation}"),
        model::Middleware { headers: Some(headers), ..Default::default() },
    );
    if let Some(tcp) = &mut out.tcp {
        for service in tcp.services.values_mut() {
            for server in &mut service.load_balancer.servers {
                if let Some(forwarder) = server.address.parse().ok().and_then(local) {
                    server.address = forwarder.to_string();
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            entry_points: ["web".to_string(), "websecure".to_string()].into(),
            cert_resolvers: ["acme".to_string()].into(),
        }
    }

    const GOOD: &str = r#"
http:
  routers:
    app:
      rule: "Host(`app.test`)"
      service: app
      entryPoints: [web]
      middlewares: [strip]
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://10.1.2.3:8080"
          - url: "https://[fd00::5]"
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/api"]
tcp:
  routers:
    db:
      rule: "HostSNI(`*`)"
      service: db
  services:
    db:
      loadBalancer:
        servers:
          - address: "10.1.2.4:5432"
"#;

    #[test]
    fn a_good_document_parses_and_lists_its_backends() {
        let config = parse(GOOD, &policy()).unwrap();
        let backends: Vec<String> = backends(&config).iter().map(|a| a.to_string()).collect();
        assert_eq!(backends, ["10.1.2.3:8080", "10.1.2.4:5432", "[fd00::5]:443"]);
    }

    #[test]
    fn rewrite_points_backends_at_forwarders_and_adds_the_marker() {
        let config = parse(GOOD, &policy()).unwrap();
        let forwarders: BTreeMap<SocketAddr, SocketAddr> = backends(&config)
            .into_iter()
            .enumerate()
            .map(|(i, a)| (a, SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16))))
            .collect();
        let out = rewrite(&config, &forwarders, "abc123");
        let http = out.http.as_ref().unwrap();
        let urls: Vec<&str> = http.services["app"].load_balancer.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:40000", "https://127.0.0.1:40002"]);
        assert_eq!(out.tcp.as_ref().unwrap().services["db"].load_balancer.servers[0].address, "127.0.0.1:40001");
        assert!(http.middlewares.contains_key("gen-abc123"));
        // The output is valid YAML that reads back to the same thing.
        let text = serde_yaml::to_string(&out).unwrap();
        assert_eq!(serde_yaml::from_str::<DynamicConfig>(&text).unwrap(), out);
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, &policy()).expect_err("must be refused").iter().map(ToString::to_string).collect()
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let p = problems("http:\n  routers:\n    a:\n      rule: x\n      service: s\n      entrypoint: [web]\n");
        assert!(p[0].contains("unknown field `entrypoint`"), "{p:?}");
    }

    #[test]
    fn dangling_references_are_refused() {
        let p = problems(
            "http:\n  routers:\n    a:\n      rule: x\n      service: missing\n      middlewares: [nope]\n  services: {}\n",
        );
        assert_eq!(
            p,
            [
                "http.routers.a.service: no http service named \"missing\"",
                "http.routers.a.middlewares: no middleware named \"nope\""
            ]
        );
    }

    #[test]
    fn empty_documents_are_refused_but_an_explicit_empty_section_is_not() {
        assert!(problems("")[0].contains("empty document"));
        assert!(problems("   \n")[0].contains("empty document"));
        assert!(problems("{}\n")[0].contains("no routers"));
        assert!(problems("null\n")[0].contains("invalid"));
        // An explicit empty section is a deliberate "serve nothing" (the last Ingress was deleted).
        assert!(parse("http: {}\n", &policy()).is_ok());
    }

    #[test]
    fn host_names_and_paths_as_backends_are_refused() {
        let doc = |url: &str| {
            format!("http:\n  routers:\n    a: {{rule: x, service: s}}\n  services:\n    s:\n      loadBalancer:\n        servers: [{{url: \"{url}\"}}]\n")
        };
        // `{{` in the format string above is an escaped brace; the document itself has single braces.
        assert!(problems(&doc("http://my-svc.default:80"))[0].contains("not host names"));
        assert!(problems(&doc("http://10.0.0.1:80/x"))[0].contains("no path"));
        assert!(problems(&doc("ftp://10.0.0.1:21"))[0].contains("scheme"));
        let tcp = "tcp:\n  routers:\n    a: {rule: x, service: s}\n  services:\n    s:\n      loadBalancer:\n        servers: [{address: \"db:5432\"}]\n";
        assert!(problems(tcp)[0].contains("not IP:port"));
    }

    #[test]
    fn reserved_names_foreign_references_admin_entrypoint_and_templates_are_refused() {
        let p = problems("http:\n  routers:\n    gen-x: {rule: x, service: api@internal, entryPoints: [traefik]}\n");
        assert!(p.iter().any(|m| m.contains("reserved")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("no http service named \"api@internal\"")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("unknown entrypoint \"traefik\"")), "{p:?}");
        assert!(
            problems("http:\n  routers:\n    a: {rule: \"Host(`{{ .X }}`)\", service: s}\n")[0].contains("template")
        );
    }

    #[test]
    fn middlewares_need_exactly_one_kind_and_resolvers_must_exist() {
        let p = problems(
            "http:\n  routers:\n    a: {rule: x, service: s, middlewares: [m], tls: {certResolver: le}}\n  services:\n    s: {loadBalancer: {servers: []}}\n  middlewares:\n    m: {}\n",
        );
        assert!(p.iter().any(|m| m.contains("exactly one kind")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("unknown resolver \"le\"")), "{p:?}");
    }

    #[test]
    fn udp_is_refused_until_it_is_carried() {
        let p = problems("udp:\n  routers:\n    a: {service: s}\n  services:\n    s: {loadBalancer: {servers: [{address: \"10.0.0.1:53\"}]}}\n");
        assert!(p.iter().any(|m| m.contains("UDP")), "{p:?}");
    }
}
