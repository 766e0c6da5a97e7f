//! Just enough HTTP/1.1 client to ask Traefik's API on the loopback admin entrypoint whether a generation is
//! live and which routers report errors.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One GET; returns status code and body. Loopback only, so a short timeout is plenty.
pub fn get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("Traefik sent a response without a status line"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Polls until the marker middleware of `generation` exists in Traefik (the file is live) or `timeout`.
pub fn wait_for_generation(port: u16, generation: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let path = format!("/api/http/middlewares/{}{generation}@file", routes::MARKER_PREFIX);
    loop {
        if matches!(get(port, &path), Ok((200, _))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Errors Traefik reports for routers and services of the file provider, as `name: error` lines.
pub fn file_provider_errors(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["http/routers", "http/services", "http/middlewares", "tcp/routers", "tcp/services"] {
        let Ok((200, body)) = get(port, &format!("/api/{kind}?per_page=1000")) else { continue };
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        for item in items {
            if item["provider"] != "file" {
                continue;
            }
            if let Some(errors) = item["error"].as_array() {
                for e in errors {
                    out.push(format!(
                        "{} {}: {}",
                        kind,
                        item["name"].as_str().unwrap_or("?"),
                        e.as_str().unwrap_or("?")
                    ));
                }
            }
        }
    }
    out
}
