//! Just enough HTTP/1.1 client to ask Traefik, on the loopback admin entrypoint, whether a generation is live,
//! which routers report errors and whether it answers at all, and to send the canary request through a public
//! entrypoint.

use crate::apply::Confirm;
use protocol::http::{parse_response, Response};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one request to Traefik may take: loopback, so a Traefik that needs longer is not well.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One GET to `addr` with `host` as Host header, answered within `timeout`.
pub fn request(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer from {addr} within {timeout:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&response).map_err(|e| io::Error::other(format!("{addr}: {e}")))
}

/// One GET to Traefik's API; returns status code and body.
pub fn get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let r = request(SocketAddr::from(([127, 0, 0, 1], port)), "127.0.0.1", path, REQUEST_TIMEOUT)?;
    Ok((r.status, r.text()))
}

/// Traefik's API on the loopback admin entrypoint.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    /// Port of the `traefik` entrypoint.
    pub port: u16,
}

impl Api {
    /// Whether Traefik answers its ping within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<(), String> {
        match request(SocketAddr::from(([127, 0, 0, 1], self.port)), "127.0.0.1", "/ping", timeout) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("ping answered {}", r.status)),
            Err(e) => Err(format!("ping: {e}")),
        }
    }
}

impl Confirm for Api {
    /// Polls until the marker middleware of `marker.generation` exists in Traefik with the write number of
    /// `marker` (this write of the file is live) or `timeout`.
    fn shows(&self, marker: routes::Marker<'_>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let path = format!("/api/http/middlewares/{}{}@file", routes::MARKER_PREFIX, marker.generation);
        loop {
            if let Ok((200, body)) = get(self.port, &path) {
                if write_of(&body) == Some(marker.write) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Errors Traefik reports for routers and services of the file provider, as `name: error` lines.
    fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for kind in ["http/routers", "http/services", "http/middlewares", "tcp/routers", "tcp/services"] {
            let Ok((200, body)) = get(self.port, &format!("/api/{kind}?per_page=1000")) else { continue };
            let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
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
}

/// The write number in Traefik's answer for a marker middleware, if it holds one.
fn write_of(middleware: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(middleware).ok()?;
    value["headers"]["customRequestHeaders"][routes::backend::WRITE_HEADER].as_str()?.parse().ok()
}

/// The canary request through a public entrypoint at `addr`: the generation Traefik serves there (the marker
/// header of the canary router), or why there is none.
pub fn canary(addr: SocketAddr, timeout: Duration) -> Result<Option<String>, String> {
    let r = request(addr, routes::CANARY_HOST, routes::backend::CANARY_PATH, timeout)
        .map_err(|e| format!("canary through {addr}: {e}"))?;
    match r.status {
        200 => Ok(r.header(routes::backend::GENERATION_HEADER).map(str::to_string)),
        404 => Ok(None), // Traefik answers, without the canary router: it serves no file of ours
        status => Err(format!("canary through {addr} answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_number_is_read_from_traefiks_answer_for_the_marker_middleware() {
        // As Traefik 3.7's API answers /api/http/middlewares/gen-<generation>@file.
        let answer = r#"{"headers":{"customRequestHeaders":{"X-Polaredge-Write":"1764671234000000007"},
            "customResponseHeaders":{"X-Polaredge-Generation":"8412973121161e98"}},"status":"enabled",
            "usedBy":["gen-8412973121161e98@file"],"name":"gen-8412973121161e98@file","provider":"file",
            "type":"headers"}"#;
        assert_eq!(write_of(answer), Some(1_764_671_234_000_000_007));
        assert_eq!(write_of(r#"{"headers":{"customResponseHeaders":{}}}"#), None, "a file of an older agent");
        assert_eq!(write_of("404 page not found"), None);
    }
}
