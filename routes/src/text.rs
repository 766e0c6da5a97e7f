//! Checks every string of a parsed document, names and values alike, after YAML/JSON escapes are decoded: an
//! escape such as `"\u007b{"` in the raw text is a `{{` here. Traefik runs the routes file through Go's
//! text/template before parsing it, so `{{` would execute (`{{ env "PATH" }}` leaks the edge's environment
//! into responses), and its YAML reader refuses control characters, keeping its old config in memory while the
//! bad file waits on disk for the next restart.

use crate::model::DynamicConfig;
use crate::{problem, Problem};
use serde_json::Value;

/// Problems with the strings of `config`, each naming the field.
pub fn check(config: &DynamicConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let value = serde_json::to_value(config).expect("the model always serializes");
    walk(&value, &mut String::new(), &mut problems);
    problems
}

/// Why `text` may not appear in a routes file, if it may not.
pub fn unsafe_reason(text: &str) -> Option<String> {
    if text.contains("{{") {
        return Some("contains `{{`, which Traefik would run as a Go template action".into());
    }
    text.chars().find(|&c| !allowed(c)).map(|c| {
        format!("contains the control character U+{:04X}; Traefik's YAML reader refuses the whole file", c as u32)
    })
}

/// YAML's printable set minus every control character (tab, CR and LF included: no field needs them, and in a
/// header value they would split headers).
fn allowed(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

fn walk(value: &Value, path: &mut String, problems: &mut Vec<Problem>) {
    match value {
        Value::String(s) => {
            // PEM is lines: certificates and keys may hold line breaks, nothing else may.
            let pem =
                path.starts_with("tls.certificates[") && (path.ends_with(".certFile") || path.ends_with(".keyFile"));
            let reason = if pem { unsafe_reason(&s.replace(['\n', '\r'], "")) } else { unsafe_reason(s) };
            if let Some(reason) = reason {
                problems.push(problem(path.clone(), reason));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path, problems);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                if let Some(reason) = unsafe_reason(key) {
                    problems.push(problem(path.clone(), format!("the name {reason}")));
                }
                walk(item, path, problems);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::*;

    #[test]
    fn template_actions_are_refused_after_escapes_are_decoded() {
        // The raw text has no `{{`: the first brace is a JSON escape.
        let doc = r#"{"http": {"routers": {"a": {"rule": "Host(`a.test`)", "service": "s", "middlewares": ["h"]}},
            "services": {"s": {"loadBalancer": {"servers": []}}},
            "middlewares": {"h": {"headers": {"customResponseHeaders": {"X-Env-Path": "\u007b{ env `PATH` }}"}}}}}}"#;
        assert!(!doc.contains("{{"));
        let p = crate::parse(doc, &policy()).unwrap_err();
        assert_eq!(p[0].path, "http.middlewares.h.headers.customResponseHeaders.X-Env-Path", "{p:?}");
        assert!(p[0].message.contains("Go template"), "{p:?}");
        refused_for("http:\n  routers:\n    a: {rule: \"Host(`{{ .X }}`)\", service: s}\n", "Go template");
    }

    #[test]
    fn control_characters_are_refused_in_values_and_names() {
        let doc = "{\"http\": {\"routers\": {\"a\": {\"rule\": \"Host(`a`)\", \"service\": \"s\", \"middlewares\": [\"h\"]}}, \"services\": {\"s\": {\"loadBalancer\": {\"servers\": []}}}, \"middlewares\": {\"h\": {\"headers\": {\"customRequestHeaders\": {\"X-A\": \"\\u008B\", \"X-\\u0001\": \"v\"}}}}}}";
        let p: Vec<String> = crate::parse(doc, &policy()).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            p.iter().any(|m| m.contains("customRequestHeaders.X-A: contains the control character U+008B")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("the name contains the control character U+0001")), "{p:?}");
        refused_for("http:\n  routers:\n    a: {rule: \"Host(`a`)\\n&& Path(`/`)\", service: s}\n", "U+000A");
    }
}
