//! HTTP/1.1 heads, parsed without I/O: requests as the control API reads them (Content-Length bodies,
//! keep-alive, hard limits), and responses as the client, the agent's Traefik API client and the test kits
//! read them (the whole response, read until the server closes).

/// Limits against oversized or malicious requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line + headers).
    pub max_head: usize,
    /// Largest body.
    pub max_body: usize,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, e.g. `/upload`.
    pub path: String,
    /// Body length (0 when absent on methods without a body).
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes the head took, including the blank line.
    pub len: usize,
}

/// A request that cannot be served, with the status code that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Status code to answer with.
    pub status: u16,
    /// Explanation for the body.
    pub message: String,
}

fn error(status: u16, message: impl Into<String>) -> HttpError {
    HttpError { status, message: message.into() }
}

/// Parses a head from the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > limits.max_head {
            Err(error(431, format!("request head larger than {} bytes", limits.max_head)))
        } else {
            Ok(None)
        };
    };
    if end + 4 > limits.max_head {
        return Err(error(431, format!("request head larger than {} bytes", limits.max_head)));
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| error(400, "request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) if !m.is_empty() && p.starts_with('/') => (m, p, v),
        _ => return Err(error(400, format!("malformed request line {request_line:?}"))),
    };
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(error(505, format!("unsupported version {version:?}"))),
    };
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| error(400, format!("malformed header {line:?}")))?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = value.parse().map_err(|_| error(400, format!("bad Content-Length {value:?}")))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(error(400, "conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(error(411, "chunked bodies are not accepted; send Content-Length"));
            }
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
    }
    let content_length = match (method, content_length) {
        ("POST" | "PUT", None) => return Err(error(411, "a request body needs a Content-Length header")),
        (_, n) => n.unwrap_or(0),
    };
    if content_length > limits.max_body {
        return Err(error(
            413,
            format!("body of {content_length} bytes exceeds the limit of {} bytes", limits.max_body),
        ));
    }
    Ok(Some(Head { method: method.into(), path: path.into(), content_length, keep_alive, len: end + 4 }))
}

/// A whole response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields as (lower-case name, trimmed value), in order.
    pub headers: Vec<(String, String)>,
    /// The body (as much as `Content-Length` says, when it says).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The connection closed before the blank line that ends the head.
    NoHead,
    /// The head is not UTF-8.
    NotUtf8,
    /// The first line is not `HTTP/1.x <code> ...`.
    BadStatusLine(String),
    /// The connection closed before `Content-Length` bytes of body arrived.
    ShortBody {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::NoHead => write!(f, "the response has no complete head (the server closed early)"),
            ResponseError::NotUtf8 => write!(f, "the response head is not UTF-8"),
            ResponseError::BadStatusLine(line) => write!(f, "malformed status line {line:?}"),
            ResponseError::ShortBody { got, expected } => write!(f, "the body ended after {got} of {expected} bytes"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// Parses a complete response (read until the server closed the connection). Chunked bodies are not
/// supported: the servers this talks to (the agent, Traefik's API) send `Content-Length`.
pub fn parse_response(bytes: &[u8]) -> Result<Response, ResponseError> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or(ResponseError::NoHead)?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| ResponseError::NotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let bad_status = || ResponseError::BadStatusLine(status_line.to_string());
    let status = match status_line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().map_err(|_| bad_status())?,
        _ => return Err(bad_status()),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    if let Some(length) = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()) {
        if body.len() < length {
            return Err(ResponseError::ShortBody { got: body.len(), expected: length });
        }
        body.truncate(length);
    }
    Ok(Response { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head: 256, max_body: 1000 };

    #[test]
    fn a_post_with_a_body_and_keep_alive() {
        let req = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_head(req, &LIMITS).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/upload");
        assert_eq!(head.content_length, 5);
        assert!(head.keep_alive);
        assert_eq!(&req[head.len..], b"hello");
    }

    #[test]
    fn incomplete_heads_ask_for_more_until_the_limit() {
        let req = b"GET /status HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(parse_head(req, &LIMITS), Ok(None));
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 300]].concat();
        assert_eq!(parse_head(&endless, &LIMITS).unwrap_err().status, 431);
    }

    #[test]
    fn bodies_need_a_length_within_the_limit() {
        let status = |r: &[u8]| parse_head(r, &LIMITS).unwrap_err().status;
        assert_eq!(status(b"POST /upload HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(status(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(status(b"POST /upload HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n"), 413);
        assert_eq!(status(b"POST /upload HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let head = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &LIMITS).unwrap().unwrap();
        assert!(!head.keep_alive);
        let head = parse_head(b"GET / HTTP/1.0\r\n\r\n", &LIMITS).unwrap().unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn responses_with_headers_and_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello and more",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.text().as_str(), r.header("x-a"), r.header("Content-Type")),
            (200, "hello", Some("b"), Some("text/plain"))
        );
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nno length").unwrap();
        assert_eq!((r.status, r.text().as_str()), (404, "no length"));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            Err(ResponseError::ShortBody { got: 5, expected: 9 })
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n"), Err(ResponseError::BadStatusLine("garbage".into())));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Err(ResponseError::NoHead));
    }
}
