//! The control API's HTTP/1.1 server: a blocking per-connection loop with keep-alive, limits, and deadlines
//! against slow clients, on the sans-IO head parser of the shared [`protocol::http`]; and the connection
//! [`slots`].

pub mod slots;

use protocol::http::{parse_head, Limits};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// A request as handlers see it.
pub struct Request {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Body (empty without one).
    pub body: Vec<u8>,
}

/// A response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let mut body = serde_json::to_vec_pretty(value).expect("JSON values serialize");
        body.push(b'\n');
        Response { status, content_type: "application/json", body }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: text.into().into_bytes() }
    }
}

/// How long a client may take to send one whole request (head and body).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long an idle keep-alive connection stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

fn write_response(stream: &mut impl Write, response: &Response, keep_alive: bool) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        stream,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )?;
    stream.write_all(&response.body)?;
    stream.flush()
}

/// A stream whose reads can be bounded in time and whose sending half can be closed.
pub trait Timed: Read + Write {
    /// Sets the timeout of the next reads.
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;
    /// Sends FIN, keeps reading possible.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// How long, and how much, an error answer waits for the client to stop sending before the connection closes.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Answers a request that cannot be served and closes "lingering": closing with unread input would reset the
/// connection and could destroy the answer before the client reads it (a 413 for a body still arriving).
fn refuse(stream: &mut impl Timed, response: &Response, chunk: &mut [u8]) {
    if write_response(stream, response, false).is_err() || stream.shutdown_write().is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_timeout(left).is_err() {
            return;
        }
        match stream.read(chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Serves requests on one connection until the client closes it, asks to close, idles out, or errs. `idle` is
/// told when the connection waits for a request (`true`) and when one starts arriving (`false`).
pub fn serve(
    stream: &mut impl Timed,
    limits: Limits,
    handler: &dyn Fn(&Request) -> Response,
    idle: &dyn Fn(bool),
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Idle wait for the first byte of the next request, then a deadline for the whole request.
        let mut deadline: Option<Instant> = if buf.is_empty() { None } else { Some(Instant::now() + REQUEST_DEADLINE) };
        idle(deadline.is_none());
        let head = loop {
            match parse_head(&buf, &limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    refuse(stream, &Response::text(e.status, format!("{}\n", e.message)), &mut chunk);
                    return Ok(());
                }
            }
            let timeout = match deadline {
                None => IDLE_TIMEOUT,
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            if timeout.is_zero() {
                refuse(stream, &Response::text(408, "request not completed in time\n"), &mut chunk);
                return Ok(());
            }
            stream.set_timeout(timeout)?;
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if deadline.is_none() {
                        idle(false);
                        deadline = Some(Instant::now() + REQUEST_DEADLINE);
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if deadline.is_none() {
                        return Ok(()); // idle keep-alive connection
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        idle(false);
        let deadline = deadline.unwrap_or_else(|| Instant::now() + REQUEST_DEADLINE);
        // The parser bounds the length by `limits.max_body`, which may be configured near the integer maximum.
        let Some(total) = head.len.checked_add(head.content_length) else {
            refuse(stream, &Response::text(413, "request body too large\n"), &mut chunk);
            return Ok(());
        };
        while buf.len() < total {
            let timeout = deadline.saturating_duration_since(Instant::now());
            if timeout.is_zero() {
                refuse(stream, &Response::text(408, "request body not received in time\n"), &mut chunk);
                return Ok(());
            }
            stream.set_timeout(timeout)?;
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        let request =
            Request { method: head.method.clone(), path: head.path.clone(), body: buf[head.len..total].to_vec() };
        buf.drain(..total);
        let response = handler(&request);
        write_response(stream, &response, head.keep_alive)?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    const LIMITS: Limits = Limits { max_head: 1024, max_body: 1024 };

    fn handler(request: &Request) -> Response {
        Response::text(200, format!("{} {} {}", request.method, request.path, request.body.len()))
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection_then_honours_close() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve(&mut server, LIMITS, &handler, &|_| {}));
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).unwrap(); // ends because the last request asked to close
        thread.join().unwrap().unwrap();
        let bodies: Vec<&str> = all.split("\r\n\r\n").skip(1).map(|b| b.split("HTTP/1.1").next().unwrap()).collect();
        assert_eq!(bodies, ["GET /a 0", "POST /b 3", "GET /c 0"]);
        assert_eq!(all.matches("Connection: keep-alive").count(), 2);
        assert_eq!(all.matches("Connection: close").count(), 1);
    }

    #[test]
    fn a_refused_request_is_answered_even_while_its_body_keeps_coming() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve(&mut server, LIMITS, &handler, &|_| {}));
        client.write_all(b"POST /upload HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").unwrap();
        let writer = {
            let mut client = client.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = client.write_all(&vec![b'a'; 1 << 20]);
                let _ = client.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut all = String::new();
        client.read_to_string(&mut all).unwrap();
        writer.join().unwrap();
        thread.join().unwrap().unwrap();
        assert!(all.starts_with("HTTP/1.1 413"), "{all}");
    }

    #[test]
    fn a_length_near_the_integer_maximum_is_refused_without_a_panic() {
        let limits = Limits { max_head: 1024, max_body: usize::MAX };
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || serve(&mut server, limits, &handler, &|_| {}));
        write!(client, "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX - 10).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).unwrap();
        thread.join().expect("no panic").unwrap();
        assert!(all.starts_with("HTTP/1.1 413"), "{all}");
    }

    #[test]
    fn idle_is_reported_between_requests() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let states = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&states);
        let thread =
            std::thread::spawn(move || serve(&mut server, LIMITS, &handler, &|idle| seen.lock().unwrap().push(idle)));
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
        let mut first = [0u8; 12];
        client.read_exact(&mut first).unwrap();
        client.write_all(b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut rest = String::new();
        client.read_to_string(&mut rest).unwrap();
        thread.join().unwrap().unwrap();
        let states = states.lock().unwrap().clone();
        assert_eq!(states.first(), Some(&true));
        assert!(states.windows(2).any(|w| w == [true, false]), "{states:?}");
        assert_eq!(states.iter().filter(|&&s| s).count(), 2, "idle before each request: {states:?}");
    }
}
