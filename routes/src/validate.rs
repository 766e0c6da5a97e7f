//! Validation of a parsed document: names, references between its parts, the entrypoints and resolvers the
//! agent offers, and every value Traefik would refuse or that would make the edge spend too much (durations,
//! TLS versions, ports, header names, backends). Traefik keeps its old config when it refuses a file, but the
//! file stays on disk, so anything it would refuse must be refused here first.

use crate::backend::{parse_http_backend, parse_ip_port};
use crate::model::{self, DynamicConfig};
use crate::{duration, problem, Policy, Problem, MARKER_PREFIX};
use std::collections::BTreeSet;
use std::time::Duration;

/// The shortest health-check interval: shorter would have Traefik probe every pod continuously.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Most certificates in one document (each costs a key check here and memory in Traefik).
pub const MAX_CERTIFICATES: usize = 2_000;
/// TLS versions Traefik knows, oldest first.
pub const TLS_VERSIONS: [&str; 4] = ["VersionTLS10", "VersionTLS11", "VersionTLS12", "VersionTLS13"];

/// Checks references, names, entrypoints, values and backends of a parsed document.
pub fn validate(config: &DynamicConfig, policy: &Policy) -> Vec<Problem> {
    let mut problems = Vec::new();
    let tls_options: BTreeSet<&String> = config.tls.iter().flat_map(|t| t.options.keys()).collect();
    let mut routers = 0;
    if let Some(http) = &config.http {
        routers += http.routers.len();
        check_http(&mut problems, http, policy, &tls_options);
    }
    if let Some(tcp) = &config.tcp {
        routers += tcp.routers.len();
        check_tcp(&mut problems, tcp, policy, &tls_options);
    }
    if let Some(udp) = &config.udp {
        if !udp.routers.is_empty() || !udp.services.is_empty() {
            problems.push(problem("udp", "Traefik UDP routers are not served (UDP entrypoints are static Traefik config); put UDP ports in `l4.udp`, which the agent serves itself"));
        }
    }
    if let Some(tls) = &config.tls {
        for (name, options) in &tls.options {
            check_tls_options(&mut problems, &format!("tls.options.{name}"), name, options);
        }
        if tls.certificates.len() > MAX_CERTIFICATES {
            problems.push(problem(
                "tls.certificates",
                format!("{} certificates exceed the limit of {MAX_CERTIFICATES}", tls.certificates.len()),
            ));
        } else {
            let now = (policy.now)();
            for (i, c) in tls.certificates.iter().enumerate() {
                if let Err(message) = crate::certificate::check(&c.cert_file, &c.key_file, now) {
                    problems.push(problem(format!("tls.certificates[{i}]"), message));
                }
            }
        }
    }
    let l4_ports = config.l4.as_ref().map_or(0, |l4| l4.tcp.len() + l4.udp.len());
    if routers == 0 && l4_ports == 0 && config.http.is_none() && config.tcp.is_none() {
        // `{}` is what a broken sender produces; "serve nothing" is said explicitly, as `http: {}`.
        problems.push(problem(
            "",
            "no routers and no sections: this would drop every route, so it is refused (send `{\"http\": {}}` to serve nothing on purpose)",
        ));
    }
    if let Some(l4) = &config.l4 {
        check_l4(&mut problems, l4, policy);
    }
    let pods = crate::backends(config).len() + crate::backend::l4_backends(config).len();
    if pods > policy.max_backends {
        problems.push(problem(
            "",
            format!(
                "{pods} distinct pod backends exceed this agent's limit of {} (each needs a loopback listener)",
                policy.max_backends
            ),
        ));
    }
    problems
}

fn check_http(problems: &mut Vec<Problem>, http: &model::Http, policy: &Policy, tls_options: &BTreeSet<&String>) {
    for (name, router) in &http.routers {
        let path = format!("http.routers.{name}");
        check_name(problems, &path, name);
        if router.rule.trim().is_empty() {
            problems.push(problem(format!("{path}.rule"), "empty rule"));
        }
        if !http.services.contains_key(&router.service) {
            problems.push(problem(format!("{path}.service"), format!("no http service named {:?}", router.service)));
        }
        for m in &router.middlewares {
            if !http.middlewares.contains_key(m) {
                problems.push(problem(format!("{path}.middlewares"), format!("no middleware named {m:?}")));
            }
        }
        check_entry_points(problems, &format!("{path}.entryPoints"), &router.entry_points, policy);
        check_tls(problems, &path, &router.tls, policy, tls_options);
        check_priority(problems, &path, router.priority);
    }
    for (name, service) in &http.services {
        let path = format!("http.services.{name}");
        check_name(problems, &path, name);
        let lb = match (&service.load_balancer, &service.weighted) {
            (Some(lb), None) => lb,
            (None, Some(weighted)) => {
                check_weighted(problems, &path, weighted, http);
                continue;
            }
            _ => {
                problems.push(problem(&path, "a service must have exactly one of loadBalancer and weighted"));
                continue;
            }
        };
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
        if let Some(check) = &lb.health_check {
            check_health(problems, &format!("{path}.loadBalancer.healthCheck"), check);
        }
        if let Some(sticky) = &lb.sticky {
            if let Some(same_site) = &sticky.cookie.same_site {
                if !matches!(same_site.as_str(), "" | "none" | "lax" | "strict") {
                    problems.push(problem(
                        format!("{path}.loadBalancer.sticky.cookie.sameSite"),
                        format!("{same_site:?} is not one of none, lax, strict"),
                    ));
                }
            }
        }
    }
    for (name, middleware) in &http.middlewares {
        let path = format!("http.middlewares.{name}");
        check_name(problems, &path, name);
        if middleware.kinds() != 1 {
            problems.push(problem(
                &path,
                "a middleware must have exactly one kind (stripPrefix, redirectScheme, headers, redirectRegex, \
                 replacePath, replacePathRegex or errors)",
            ));
        }
        check_middleware(problems, &path, middleware);
        if let Some(errors) = &middleware.errors {
            check_errors(problems, &format!("{path}.errors"), errors, http);
        }
    }
    for (name, transport) in &http.servers_transports {
        let path = format!("http.serversTransports.{name}");
        check_name(problems, &path, name);
        if let Some(server_name) = &transport.server_name {
            if !is_host_name(server_name) {
                problems.push(problem(format!("{path}.serverName"), format!("{server_name:?} is not a host name")));
            }
        }
    }
}

fn check_tcp(problems: &mut Vec<Problem>, tcp: &model::Tcp, policy: &Policy, tls_options: &BTreeSet<&String>) {
    for (name, router) in &tcp.routers {
        let path = format!("tcp.routers.{name}");
        check_name(problems, &path, name);
        if router.rule.trim().is_empty() {
            problems.push(problem(format!("{path}.rule"), "empty rule"));
        }
        if !tcp.services.contains_key(&router.service) {
            problems.push(problem(format!("{path}.service"), format!("no tcp service named {:?}", router.service)));
        }
        check_entry_points(problems, &format!("{path}.entryPoints"), &router.entry_points, policy);
        check_tls(problems, &path, &router.tls, policy, tls_options);
    }
    for (name, service) in &tcp.services {
        let path = format!("tcp.services.{name}");
        check_name(problems, &path, name);
        for (i, server) in service.load_balancer.servers.iter().enumerate() {
            if let Err(message) = parse_ip_port(&server.address) {
                problems.push(problem(format!("{path}.loadBalancer.servers[{i}].address"), message));
            }
        }
    }
}

/// Most public ports in `l4`.
pub const MAX_L4_PORTS: usize = 1_000;

fn check_l4(problems: &mut Vec<Problem>, l4: &model::L4, policy: &Policy) {
    if l4.tcp.len() + l4.udp.len() > MAX_L4_PORTS {
        problems
            .push(problem("l4", format!("{} ports exceed the limit of {MAX_L4_PORTS}", l4.tcp.len() + l4.udp.len())));
        return;
    }
    for (protocol, ports) in l4.by_protocol() {
        for (port_text, service) in ports {
            let path = format!("l4.{protocol}.{port_text}");
            match port_text.parse::<u16>() {
                Ok(0) => problems.push(problem(&path, "port 0 is not a port (1-65535)")),
                Ok(port) => problems.extend(l4_port_refusal(protocol, port, &service.service, policy)),
                Err(_) => problems.push(problem(&path, format!("{port_text:?} is not a port (1-65535)"))),
            }
            for (i, server) in service.servers.iter().enumerate() {
                if let Err(message) = parse_ip_port(server) {
                    problems.push(problem(format!("{path}.servers[{i}]"), message));
                }
            }
            match service.proxy_protocol {
                Some(_) if protocol == "udp" => problems.push(problem(
                    format!("{path}.proxyProtocol"),
                    "the PROXY protocol is for TCP; a UDP port cannot carry it",
                )),
                Some(version) if !matches!(version, 1 | 2) => problems.push(problem(
                    format!("{path}.proxyProtocol"),
                    format!("{version} is not a PROXY protocol version (1 or 2)"),
                )),
                _ => {}
            }
        }
    }
}

/// Why this agent does not serve `port` (`protocol` "tcp" or "udp") for `service` (a port of its own, or
/// outside its `l4.ports`), if it does not. A well-formed port the policy refuses is withheld on its own by
/// [`withhold_refused_l4`]. Reserved ports are refused for both protocols: WireGuard's is UDP, the entrypoints'
/// are TCP today and UDP too once HTTP/3 is served.
fn l4_port_refusal(protocol: &str, port: u16, service: &str, policy: &Policy) -> Option<Problem> {
    let path = format!("l4.{protocol}.{port}");
    if policy.reserved_ports.contains(&port) {
        Some(problem(
            path,
            format!("port {port} (Service {service}) is the edge's own (an entrypoint or WireGuard); pick another"),
        ))
    } else if !policy.l4_ports.iter().any(|(low, high)| (*low..=*high).contains(&port)) {
        Some(problem(
            path,
            format!(
                "port {port} (Service {service}) is outside the ports this agent may serve ({:?}: `l4.ports` in \
                 its config)",
                policy.l4_ports
            ),
        ))
    } else {
        None
    }
}

/// An `l4` port left out of a snapshot by [`withhold_refused_l4`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithheldPort {
    /// `"tcp"` or `"udp"`.
    pub protocol: &'static str,
    /// The port.
    pub port: u16,
    /// The Service that asked for it (`namespace/name`).
    pub service: String,
    /// Why (`l4.<protocol>.<port>`: the reason).
    pub problem: Problem,
}

impl std::fmt::Display for WithheldPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.problem.fmt(f)
    }
}

/// Takes the `l4` ports this agent's policy refuses out of `config` and says why for each: one Service asking
/// for a port the edge keeps for itself, or that this edge does not open, must not stop every other route from
/// being served. Ports that are not well-formed stay in, for [`validate`] to refuse the document.
pub fn withhold_refused_l4(config: &mut DynamicConfig, policy: &Policy) -> Vec<WithheldPort> {
    let Some(l4) = &mut config.l4 else { return Vec::new() };
    let mut withheld = Vec::new();
    for (protocol, ports) in [("tcp", &mut l4.tcp), ("udp", &mut l4.udp)] {
        ports.retain(|port_text, service| {
            let Some(port) = port_text.parse::<u16>().ok().filter(|port| *port != 0) else { return true };
            match l4_port_refusal(protocol, port, &service.service, policy) {
                Some(problem) => {
                    withheld.push(WithheldPort { protocol, port, service: service.service.clone(), problem });
                    false
                }
                None => true,
            }
        });
    }
    withheld
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
    for (i, domain) in tls.domains.iter().enumerate() {
        for (j, host) in std::iter::once(&domain.main).chain(&domain.sans).enumerate() {
            if !is_host_name(host) {
                let field = if j == 0 { "main".to_string() } else { format!("sans[{}]", j - 1) };
                problems
                    .push(problem(format!("{path}.tls.domains[{i}].{field}"), format!("{host:?} is not a host name")));
            }
        }
    }
}

fn check_tls_options(problems: &mut Vec<Problem>, path: &str, name: &str, options: &model::TlsOptions) {
    if name != "default" {
        check_name(problems, path, name);
    }
    let rank = |field: &str, version: &Option<String>, problems: &mut Vec<Problem>| {
        let version = version.as_ref()?;
        let rank = TLS_VERSIONS.iter().position(|v| v == version);
        if rank.is_none() {
            problems.push(problem(
                format!("{path}.{field}"),
                format!("{version:?} is not a TLS version; use one of {}", TLS_VERSIONS.join(", ")),
            ));
        }
        rank
    };
    let min = rank("minVersion", &options.min_version, problems);
    let max = rank("maxVersion", &options.max_version, problems);
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            problems.push(problem(path, "minVersion is newer than maxVersion: no client could connect"));
        }
    }
}

fn check_health(problems: &mut Vec<Problem>, path: &str, check: &model::HealthCheck) {
    if !check.path.starts_with('/') {
        problems.push(problem(format!("{path}.path"), format!("{:?} must start with '/'", check.path)));
    }
    if let Some(interval) = &check.interval {
        match duration::parse(interval) {
            Ok(d) if d < MIN_HEALTH_INTERVAL => problems.push(problem(
                format!("{path}.interval"),
                format!(
                    "{interval:?} is shorter than {MIN_HEALTH_INTERVAL:?}: Traefik would probe every pod continuously"
                ),
            )),
            Ok(_) => {}
            Err(e) => problems.push(problem(format!("{path}.interval"), e)),
        }
    }
    if let Some(timeout) = &check.timeout {
        match duration::parse(timeout) {
            Ok(d) if d.is_zero() => {
                problems.push(problem(format!("{path}.timeout"), "a zero timeout fails every check"))
            }
            Ok(_) => {}
            Err(e) => problems.push(problem(format!("{path}.timeout"), e)),
        }
    }
}

fn check_middleware(problems: &mut Vec<Problem>, path: &str, middleware: &model::Middleware) {
    if let Some(strip) = &middleware.strip_prefix {
        for (i, prefix) in strip.prefixes.iter().enumerate() {
            if !prefix.starts_with('/') {
                problems.push(problem(
                    format!("{path}.stripPrefix.prefixes[{i}]"),
                    format!("{prefix:?} must start with '/'"),
                ));
            }
        }
    }
    if let Some(redirect) = &middleware.redirect_scheme {
        if !matches!(redirect.scheme.as_str(), "http" | "https") {
            problems.push(problem(
                format!("{path}.redirectScheme.scheme"),
                format!("{:?} must be http or https", redirect.scheme),
            ));
        }
        if let Some(port) = &redirect.port {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                problems
                    .push(problem(format!("{path}.redirectScheme.port"), format!("{port:?} is not a port (1-65535)")));
            }
        }
    }
    if let Some(replace) = &middleware.replace_path {
        if !replace.path.starts_with('/') {
            problems
                .push(problem(format!("{path}.replacePath.path"), format!("{:?} must start with '/'", replace.path)));
        }
    }
    for (field, regex) in [
        ("redirectRegex.regex", middleware.redirect_regex.as_ref().map(|r| &r.regex)),
        ("replacePathRegex.regex", middleware.replace_path_regex.as_ref().map(|r| &r.regex)),
    ] {
        // Traefik compiles these with Go's RE2 (linear time, so no catastrophic backtracking); it refuses an
        // empty or oversized one at load time, so refuse those here.
        if let Some(regex) = regex {
            if regex.is_empty() || regex.len() > MAX_REGEX_LEN {
                problems
                    .push(problem(format!("{path}.{field}"), format!("empty or longer than {MAX_REGEX_LEN} bytes")));
            }
        }
    }
    if let Some(headers) = &middleware.headers {
        for (field, map) in [
            ("customRequestHeaders", &headers.custom_request_headers),
            ("customResponseHeaders", &headers.custom_response_headers),
        ] {
            for name in map.keys() {
                if !is_header_name(name) {
                    problems.push(problem(
                        format!("{path}.headers.{field}.{name}"),
                        "a header name is letters, digits and !#$%&'*+-.^_`|~ only",
                    ));
                }
            }
        }
    }
}

/// The longest regular expression a middleware may carry.
pub const MAX_REGEX_LEN: usize = 1_024;
/// The highest router priority an upload may use: the agent's canary router sits above it, so that no route
/// can take the canary's requests.
pub const MAX_PRIORITY: i64 = i32::MAX as i64 - 1;
/// Most members of one weighted service.
pub const MAX_WEIGHTED_MEMBERS: usize = 64;
/// The highest weight of a weighted member (Gateway API's own limit).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The only Traefik-internal service an upload may name (in an `errors` middleware): it answers "OK" and
/// exposes nothing, unlike `api@internal` or `dashboard@internal`.
pub const ERROR_PAGE_SERVICE: &str = "ping@internal";

fn check_priority(problems: &mut Vec<Problem>, path: &str, priority: Option<i64>) {
    if let Some(p) = priority {
        if !(0..=MAX_PRIORITY).contains(&p) {
            problems.push(problem(format!("{path}.priority"), format!("{p} is outside 0..={MAX_PRIORITY}")));
        }
    }
}

/// A weighted service names load-balancer services of the same document (no nesting: no cycles to follow).
fn check_weighted(problems: &mut Vec<Problem>, path: &str, weighted: &model::Weighted, http: &model::Http) {
    if weighted.services.is_empty() || weighted.services.len() > MAX_WEIGHTED_MEMBERS {
        problems.push(problem(
            format!("{path}.weighted.services"),
            format!("{} members; 1 to {MAX_WEIGHTED_MEMBERS} allowed", weighted.services.len()),
        ));
    }
    for (i, member) in weighted.services.iter().enumerate() {
        let at = format!("{path}.weighted.services[{i}]");
        match http.services.get(&member.name) {
            Some(s) if s.load_balancer.is_some() => {}
            Some(_) => problems.push(problem(&at, format!("{:?} is not a loadBalancer service", member.name))),
            None => problems.push(problem(&at, format!("no http service named {:?}", member.name))),
        }
        if member.weight > MAX_WEIGHT {
            problems.push(problem(format!("{at}.weight"), format!("{} exceeds {MAX_WEIGHT}", member.weight)));
        }
    }
}

fn check_errors(problems: &mut Vec<Problem>, path: &str, errors: &model::Errors, http: &model::Http) {
    if errors.service != ERROR_PAGE_SERVICE && !http.services.contains_key(&errors.service) {
        problems.push(problem(
            format!("{path}.service"),
            format!(
                "no http service named {:?} (of the internal ones only {ERROR_PAGE_SERVICE} is allowed)",
                errors.service
            ),
        ));
    }
    let ranges = errors.status.iter().chain(errors.status_rewrites.keys());
    for range in ranges {
        if !is_status_range(range) {
            problems
                .push(problem(format!("{path}.status"), format!("{range:?} is not a status or a range like 500-599")));
        }
    }
    for (range, status) in &errors.status_rewrites {
        if !(100..=599).contains(status) {
            problems.push(problem(format!("{path}.statusRewrites.{range}"), format!("{status} is not an HTTP status")));
        }
    }
    if let Some(query) = &errors.query {
        if !query.starts_with('/') {
            problems.push(problem(format!("{path}.query"), format!("{query:?} must start with '/'")));
        }
    }
}

/// `500` or `500-599`, within 100-599.
fn is_status_range(text: &str) -> bool {
    let status = |s: &str| s.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n));
    match text.split_once('-') {
        Some((low, high)) => status(low) && status(high) && low.parse::<u16>().ok() <= high.parse::<u16>().ok(),
        None => status(text),
    }
}

/// An RFC 9110 token: what a header name may be.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A DNS name, possibly with a leading wildcard label.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

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
    fn reserved_names_foreign_references_and_the_admin_entrypoint_are_refused() {
        let p = problems("http:\n  routers:\n    gen-x: {rule: x, service: api@internal, entryPoints: [traefik]}\n");
        assert!(p.iter().any(|m| m.contains("reserved")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("no http service named \"api@internal\"")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("unknown entrypoint \"traefik\"")), "{p:?}");
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
        refused_for(
            "udp:\n  routers:\n    a: {service: s}\n  services:\n    s: {loadBalancer: {servers: [{address: \"10.0.0.1:53\"}]}}\n",
            "UDP",
        );
    }

    fn service_with(lb_extra: &str) -> String {
        format!("http:\n  routers:\n    a: {{rule: x, service: s}}\n  services:\n    s:\n      loadBalancer:\n        servers: []\n{lb_extra}")
    }

    #[test]
    fn values_traefik_would_refuse_are_refused_here_with_their_field() {
        refused_for(
            &service_with("        healthCheck: {path: /h, interval: abc}\n"),
            "healthCheck.interval: \"abc\" is not a duration",
        );
        refused_for(&service_with("        healthCheck: {path: /h, interval: 1ms}\n"), "probe every pod continuously");
        refused_for(&service_with("        healthCheck: {path: /h, timeout: \"0s\"}\n"), "zero timeout");
        refused_for(&service_with("        healthCheck: {path: h}\n"), "healthCheck.path");
        refused_for(&service_with("        sticky: {cookie: {sameSite: maybe}}\n"), "sameSite");
        let tls = "http:\n  routers:\n    a: {rule: x, service: s, tls: {options: o}}\n  services:\n    s: {loadBalancer: {servers: []}}\ntls:\n  options:\n";
        refused_for(
            &format!("{tls}    o: {{minVersion: TLS1.2}}\n"),
            "tls.options.o.minVersion: \"TLS1.2\" is not a TLS version",
        );
        refused_for(
            &format!("{tls}    o: {{minVersion: VersionTLS13, maxVersion: VersionTLS12}}\n"),
            "newer than maxVersion",
        );
        let mw = |kind: &str| {
            format!("http:\n  routers:\n    a: {{rule: x, service: s, middlewares: [m]}}\n  services:\n    s: {{loadBalancer: {{servers: []}}}}\n  middlewares:\n    m: {kind}\n")
        };
        refused_for(&mw("{redirectScheme: {scheme: https, port: \"0\"}}"), "redirectScheme.port: \"0\" is not a port");
        refused_for(&mw("{redirectScheme: {scheme: https, port: \"70000\"}}"), "is not a port");
        refused_for(&mw("{redirectScheme: {scheme: gopher}}"), "must be http or https");
        refused_for(&mw("{stripPrefix: {prefixes: [api]}}"), "must start with '/'");
        refused_for(&mw("{headers: {customRequestHeaders: {\"X Bad\": v}}}"), "a header name");
        refused_for(
            "http:\n  routers:\n    a: {rule: x, service: s, tls: {domains: [{main: \"bad host\"}]}}\n  services:\n    s: {loadBalancer: {servers: []}}\n",
            "tls.domains[0].main",
        );
        let good = format!("{tls}    o: {{minVersion: VersionTLS12, maxVersion: VersionTLS13}}\n");
        assert!(crate::parse(&json(&good), &policy()).is_ok());
        assert!(crate::parse(
            &json(&service_with("        healthCheck: {path: /h, interval: 10s, timeout: 3s}\n")),
            &policy()
        )
        .is_ok());
    }

    #[test]
    fn the_number_of_backends_is_bounded() {
        let servers: Vec<String> =
            (0..101).map(|i| format!("{{url: \"http://10.0.{}.{}:80\"}}", i / 250, i % 250 + 1)).collect();
        let doc = format!("http:\n  routers:\n    a: {{rule: x, service: s}}\n  services:\n    s:\n      loadBalancer:\n        servers: [{}]\n", servers.join(", "));
        refused_for(&doc, "101 distinct pod backends exceed this agent's limit of 100");
    }

    #[test]
    fn certificates_are_checked_and_their_keys_never_quoted() {
        let fixture =
            |name: &str| std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let doc = |cert: &str, key: &str| {
            let value = serde_json::json!({
                "http": {"routers": {"a": {"rule": "Host(`app.test`)", "service": "s", "tls": {}}},
                         "services": {"s": {"loadBalancer": {"servers": []}}}},
                "tls": {"certificates": [{"certFile": cert, "keyFile": key}]}
            });
            value.to_string()
        };
        let good = doc(&fixture("rsa.crt"), &fixture("rsa-pkcs1.key"));
        let config = crate::parse(&good, &policy()).expect("a valid certificate with its key");
        assert!(!format!("{config:?}").contains("PRIVATE KEY"), "Debug never prints the key");
        let bad = doc(&fixture("rsa.crt"), &fixture("ec-sec1.key"));
        let p = crate::parse(&bad, &policy()).unwrap_err();
        assert_eq!(p[0].to_string(), "tls.certificates[0]: the private key does not belong to the certificate");
        // Line breaks belong in PEM only.
        let p = crate::parse(&doc(&fixture("rsa.crt"), &fixture("rsa-pkcs1.key").replace('\n', "\n\u{1}")), &policy());
        assert!(p.unwrap_err()[0]
            .to_string()
            .contains("tls.certificates[0].keyFile: contains the control character U+0001"));
    }

    #[test]
    fn l4_ports_are_checked_and_left_out_of_traefiks_file() {
        let doc = |port: &str, servers: &str, proxy: &str| {
            format!("http: {{}}\nl4:\n  tcp:\n    \"{port}\": {{service: db/pg, servers: [{servers}]{proxy}}}\n")
        };
        let config = crate::parse(&json(&doc("5432", "\"10.1.0.5:5432\"", ", proxyProtocol: 2")), &policy()).unwrap();
        let pods: Vec<String> = crate::backend::l4_backends(&config).iter().map(|a| a.to_string()).collect();
        assert_eq!(pods, ["10.1.0.5:5432"]);
        assert!(crate::backends(&config).is_empty(), "no loopback forwarders for l4 pods");
        assert_eq!(
            crate::rewrite(&config, &Default::default(), crate::Marker { generation: "g", write: 0 }, None).l4,
            None
        );
        refused_for(&doc("443", "\"10.1.0.5:5432\"", ""), "the edge's own");
        refused_for(&doc("0", "", ""), "port 0");
        refused_for(&doc("70000", "", ""), "is not a port");
        refused_for(&doc("5432", "\"db:5432\"", ""), "l4.tcp.5432.servers[0]");
        refused_for(&doc("5432", "", ", proxyProtocol: 3"), "not a PROXY protocol version");
        let narrow = crate::Policy { l4_ports: vec![(10000, 10100)], ..policy() };
        let p = crate::parse(&json(&doc("5432", "", "")), &narrow).unwrap_err();
        assert!(p[0].to_string().contains("outside the ports this agent may serve"), "{p:?}");
    }

    #[test]
    fn udp_ports_are_checked_like_tcp_ones_and_never_carry_a_proxy_header() {
        let doc = |port: &str, servers: &str, proxy: &str| {
            format!("http: {{}}\nl4:\n  udp:\n    \"{port}\": {{service: dns/coredns, servers: [{servers}]{proxy}}}\n")
        };
        let config = crate::parse(&json(&doc("53", "\"10.1.0.9:53\"", "")), &policy()).unwrap();
        let pods: Vec<String> = crate::backend::l4_backends(&config).iter().map(|a| a.to_string()).collect();
        assert_eq!(pods, ["10.1.0.9:53"]);
        assert_eq!(
            crate::rewrite(&config, &Default::default(), crate::Marker { generation: "g", write: 0 }, None).l4,
            None,
            "not Traefik's"
        );
        refused_for(&doc("51820", "", ""), "l4.udp.51820");
        refused_for(&doc("53", "\"10.1.0.9\"", ""), "l4.udp.53.servers[0]");
        refused_for(&doc("53", "", ", proxyProtocol: 1"), "l4.udp.53.proxyProtocol: the PROXY protocol is for TCP");
        // The same number may be a TCP port and a UDP port (DNS serves both).
        let both = "l4:\n  tcp:\n    \"53\": {service: dns/coredns}\n  udp:\n    \"53\": {service: dns/coredns}\n";
        let parsed = crate::parse(&json(both), &policy());
        assert!(parsed.is_ok(), "{parsed:?}");
        let narrow = crate::Policy { l4_ports: vec![(10000, 10100)], ..policy() };
        let accepted = crate::accept(&json(&format!("http: {{}}\n{both}")), &narrow).unwrap();
        let reasons: Vec<String> = accepted.withheld.iter().map(ToString::to_string).collect();
        assert!(reasons.len() == 2 && reasons[1].starts_with("l4.udp.53"), "{reasons:?}");
    }

    #[test]
    fn an_agent_serves_the_rest_without_the_l4_ports_its_policy_refuses() {
        let doc = r#"{"http": {"routers": {"r": {"rule": "Host(`a.example`)", "service": "s"}},
            "services": {"s": {"loadBalancer": {"servers": [{"url": "http://10.0.0.1:80"}]}}}},
            "l4": {"tcp": {"443": {"service": "web/proxy", "servers": ["10.1.0.5:443"]},
                           "5432": {"service": "db/pg", "servers": ["10.1.0.6:5432"]},
                           "20000": {"service": "db/other", "servers": ["10.1.0.7:5432"]}}}}"#;
        let narrow = crate::Policy { l4_ports: vec![(5000, 6000)], ..policy() };
        let accepted = crate::accept(doc, &narrow).unwrap();
        let kept: Vec<&String> = accepted.config.l4.as_ref().unwrap().tcp.keys().collect();
        assert_eq!(kept, ["5432"]);
        assert_eq!(accepted.config.http.as_ref().unwrap().routers.len(), 1, "the HTTP routes stay");
        let reasons: Vec<String> = accepted.withheld.iter().map(ToString::to_string).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("l4.tcp.20000") && reasons[0].contains("db/other"), "{reasons:?}");
        assert!(reasons[1].contains("web/proxy") && reasons[1].contains("the edge's own"), "{reasons:?}");
        // A port that is not well-formed is still a problem with the whole upload.
        let bad = doc.replace("\"5432\"", "\"0\"");
        assert!(crate::accept(&bad, &narrow).is_err());
        // The strict parse refuses the same document.
        assert!(crate::parse(doc, &narrow).is_err());
    }
}

#[cfg(test)]
mod gateway_kinds {
    use crate::testing::*;

    /// Weighted services, the 500 responder of invalid backends, redirects and rewrites: what Gateway API
    /// routes render to.
    const GOOD: &str = r#"
http:
  routers:
    split:
      rule: "Host(`app.test`)"
      service: split
      entryPoints: [web]
      middlewares: [invalid-backend, moved, full, prefix]
      priority: 2147483646
  services:
    split:
      weighted:
        services: [{name: v1, weight: 3}, {name: v2, weight: 0}]
    v1: {loadBalancer: {servers: [{url: "http://10.1.0.1:80"}]}}
    v2: {loadBalancer: {servers: []}}
  middlewares:
    invalid-backend:
      errors: {status: ["500-599"], service: "ping@internal", query: "/ping", statusRewrites: {"500-599": 500}}
    moved:
      redirectRegex: {regex: "^(https?)://([^/:]+)(:[0-9]+)?(/.*)?$", replacement: "https://${2}${4}", permanent: true}
    full: {replacePath: {path: "/new"}}
    prefix: {replacePathRegex: {regex: "^/old(/.*)?$", replacement: "/new${1}"}}
"#;

    #[test]
    fn gateway_shapes_are_accepted() {
        crate::parse(&json(GOOD), &policy()).expect("valid");
    }

    #[test]
    fn a_weighted_service_names_load_balancers_of_the_document_only() {
        refused_for(
            &GOOD.replace("{name: v2, weight: 0}", "{name: nope, weight: 1}"),
            "no http service named \"nope\"",
        );
        refused_for(&GOOD.replace("{name: v2, weight: 0}", "{name: split, weight: 1}"), "not a loadBalancer service");
        refused_for(&GOOD.replace("weight: 3}", "weight: 3000000}"), "exceeds 1000000");
        refused_for(
            &GOOD.replace(
                "v2: {loadBalancer: {servers: []}}",
                "v2: {loadBalancer: {servers: []}, weighted: {services: []}}",
            ),
            "exactly one of loadBalancer and weighted",
        );
        refused_for(
            &GOOD.replace("v2: {loadBalancer: {servers: []}}", "v2: {}"),
            "exactly one of loadBalancer and weighted",
        );
    }

    #[test]
    fn an_error_page_may_come_from_ping_only_among_traefiks_internal_services() {
        refused_for(&GOOD.replace("ping@internal", "api@internal"), "only ping@internal is allowed");
        refused_for(&GOOD.replace("\"500-599\": 500", "\"500-599\": 700"), "700 is not an HTTP status");
        refused_for(&GOOD.replace("status: [\"500-599\"]", "status: [\"599-500\"]"), "not a status or a range");
    }

    #[test]
    fn no_route_may_outrank_the_agents_canary() {
        refused_for(&GOOD.replace("2147483646", "2147483647"), "outside 0..=2147483646");
        refused_for(&GOOD.replace("2147483646", "-1"), "outside 0..=2147483646");
    }

    #[test]
    fn rewrites_and_redirects_are_checked() {
        refused_for(&GOOD.replace("path: \"/new\"", "path: \"new\""), "must start with '/'");
        refused_for(&GOOD.replace("regex: \"^/old(/.*)?$\"", "regex: \"\""), "empty or longer than");
        refused_for(&GOOD.replace("replacement: \"/new${1}\"", "replacement: \"{{ env `PATH` }}\""), "Go template");
    }
}
