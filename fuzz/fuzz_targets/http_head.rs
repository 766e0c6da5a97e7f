//! Fuzzes the control API's HTTP/1.1 server: the head parser on arbitrary bytes, and the whole connection loop
//! (keep-alive, bodies, limits) on a stream that delivers the input in fuzzer-chosen pieces, with a body limit
//! the fuzzer picks too (up to the integer maximum). Nothing may panic; every parsed head must respect the
//! limits; every answer must be a well-formed response.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run http_head` from this folder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::http::{parse_head, Limits};
use polaredge_agent::http::{serve, Response, Timed};
use std::io::{self, Read, Write};
use std::time::Duration;

/// A connection whose peer sends `input` in pieces of the given sizes, then closes.
struct Scripted<'a> {
    input: &'a [u8],
    pieces: &'a [u8],
    output: Vec<u8>,
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = match self.pieces.split_first() {
            Some((&n, rest)) => {
                self.pieces = rest;
                usize::from(n).max(1)
            }
            None => usize::MAX,
        };
        let n = piece.min(buf.len()).min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Timed for Scripted<'_> {
    fn set_timeout(&self, _: Duration) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (control, rest) = data.split_at(9);
    let max_body = usize::from_le_bytes(control[..8].try_into().unwrap());
    let limits = Limits { max_head: 16 * 1024, max_body };
    let pieces_len = usize::from(control[8]).min(rest.len());
    let (pieces, input) = rest.split_at(pieces_len);

    if let Ok(Some(head)) = parse_head(input, &limits) {
        assert!(head.len <= input.len() && head.len <= limits.max_head);
        assert!(head.content_length <= limits.max_body);
        assert!(head.path.starts_with('/'));
    }

    let mut stream = Scripted { input, pieces, output: Vec::new() };
    let handler = |request: &polaredge_agent::http::Request| Response::text(200, format!("{}", request.body.len()));
    let _ = serve(&mut stream, limits, &handler, &|_| {});
    let mut output = stream.output.as_slice();
    while !output.is_empty() {
        assert!(output.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(output));
        let end = output.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
        let head = std::str::from_utf8(&output[..end]).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("every answer has a length");
        output = &output[end + length..];
    }
});
