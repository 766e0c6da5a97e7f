//! GRPCRoute as the HTTPRoute it amounts to at the edge: a gRPC call is an HTTP/2 POST to `/{service}/{method}`,
//! so method matches become path matches (service and method: Exact; service only: a PathPrefix on
//! `/{service}`; method only or regular expressions: a path regular expression), header matches and header
//! filters carry over, and the backends are reached with h2c (HTTP/2 without TLS, what gRPC pods serve).
//! Pure.
//!
//! Precedence: the spec orders GRPCRoute matches by hostname, then the characters of service and method,
//! then header matches. As paths, Exact service+method beats a service prefix, and a longer one a shorter
//! one, which is that order for everything but regular expressions (last here).

use super::matching::escape_regex as escape;
use super::{GrpcRoute, HttpRoute};
use gateway_api::grpcroutes::{GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType};
use gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType, HttpRouteSpec,
};
use kube::core::Object;

/// The path match of a gRPC method match.
fn path(method: &GrpcRouteRulesMatchesMethod) -> HttpRouteRulesMatchesPath {
    let regex = matches!(method.r#type, Some(GrpcRouteRulesMatchesMethodType::RegularExpression));
    let (r#type, value) = match (&method.service, &method.method) {
        _ if regex => {
            let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "[^/]+".into());
            (
                HttpRouteRulesMatchesPathType::RegularExpression,
                format!("^/{}/{}$", part(&method.service), part(&method.method)),
            )
        }
        (Some(service), Some(m)) => (HttpRouteRulesMatchesPathType::Exact, format!("/{service}/{m}")),
        (Some(service), None) => (HttpRouteRulesMatchesPathType::PathPrefix, format!("/{service}")),
        (None, Some(m)) => (HttpRouteRulesMatchesPathType::RegularExpression, format!("^/[^/]+/{}$", escape(m))),
        (None, None) => (HttpRouteRulesMatchesPathType::PathPrefix, "/".into()),
    };
    HttpRouteRulesMatchesPath { r#type: Some(r#type), value: Some(value) }
}

/// The HTTPRoute a GRPCRoute amounts to (same metadata, parents and hostnames).
pub fn as_http(route: &GrpcRoute) -> HttpRoute {
    // The shared parts (parentRefs, header matches, header filters, backendRefs) have the same fields in both
    // kinds: carried over through their serde form.
    fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned + Default>(a: &A) -> B {
        serde_json::to_value(a).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }
    let rules = route.spec.rules.as_ref().map(|rules| {
        rules
            .iter()
            .map(|rule| HttpRouteRules {
                backend_refs: rule.backend_refs.as_ref().map(convert),
                filters: rule.filters.as_ref().map(convert),
                matches: rule.matches.as_ref().map(|matches| {
                    matches
                        .iter()
                        .map(|m| HttpRouteRulesMatches {
                            headers: m.headers.as_ref().map(convert),
                            path: Some(m.method.as_ref().map(path).unwrap_or_else(|| path(&Default::default()))),
                            ..Default::default()
                        })
                        .collect()
                }),
                name: rule.name.clone(),
                timeouts: None,
            })
            .collect()
    });
    let spec = HttpRouteSpec {
        hostnames: route.spec.hostnames.clone(),
        parent_refs: route.spec.parent_refs.as_ref().map(convert),
        rules,
    };
    Object { types: None, metadata: route.metadata.clone(), spec, status: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(yaml: &str) -> (HttpRouteRulesMatchesPathType, String) {
        let method: GrpcRouteRulesMatchesMethod = serde_yaml::from_str(yaml).unwrap();
        let p = path(&method);
        (p.r#type.unwrap(), p.value.unwrap())
    }

    #[test]
    fn method_matches_become_paths() {
        use HttpRouteRulesMatchesPathType::*;
        assert_eq!(path_of("{service: echo.Echo, method: Say}"), (Exact, "/echo.Echo/Say".into()));
        assert_eq!(path_of("{service: echo.Echo}"), (PathPrefix, "/echo.Echo".into()));
        assert_eq!(path_of("{method: Say.It}"), (RegularExpression, "^/[^/]+/Say\\.It$".into()));
        assert_eq!(
            path_of("{type: RegularExpression, service: 'echo\\..*'}"),
            (RegularExpression, "^/echo\\..*/[^/]+$".into())
        );
    }

    #[test]
    fn a_grpc_route_keeps_its_parents_hosts_headers_filters_and_backends() {
        let route: GrpcRoute = serde_yaml::from_str(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: n}\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [grpc.test]\n  rules:\n  - matches: [{method: {service: echo.Echo, method: Say}, headers: [{name: x-env, value: canary}]}]\n    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: b}]}}]\n    backendRefs: [{name: echo, port: 50051, weight: 3}]\n",
        )
        .unwrap();
        let http = as_http(&route);
        assert_eq!(http.metadata.name.as_deref(), Some("g"));
        assert_eq!(http.spec.parent_refs.as_ref().unwrap()[0].section_name.as_deref(), Some("http"));
        assert_eq!(http.spec.hostnames, Some(vec!["grpc.test".to_string()]));
        let rule = &http.spec.rules.as_ref().unwrap()[0];
        let m = &rule.matches.as_ref().unwrap()[0];
        assert_eq!(m.path.as_ref().unwrap().value.as_deref(), Some("/echo.Echo/Say"));
        assert_eq!(m.headers.as_ref().unwrap()[0].value, "canary");
        assert_eq!(rule.filters.as_ref().unwrap().len(), 1);
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(3));
    }
}
