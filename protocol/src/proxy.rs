//! The PROXY protocol header (HAProxy's, versions 1 and 2) that tells a TCP service who really connected: the
//! edge writes it as the first bytes of a stream to a pod whose Service asks for it, so a PROXY-aware server
//! (PostgreSQL behind pgbouncer, nginx, HAProxy, Traefik, many MQTT brokers) logs and filters by the public
//! client's address instead of the relay's. Only the edge can set it: a pod must trust it only on ports the
//! Service exposes through the edge.

use std::net::SocketAddr;

/// The header of version `version` (1 or 2) for a connection from `client` to `server` (the edge's public
/// address the client connected to).
pub fn header(version: u8, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    match version {
        1 => v1(client, server),
        _ => v2(client, server),
    }
}

/// Version 1: one text line.
pub fn v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            format!("PROXY TCP4 {} {} {} {}\r\n", c.ip(), s.ip(), c.port(), s.port()).into_bytes()
        }
        (SocketAddr::V6(c), SocketAddr::V6(s)) => {
            format!("PROXY TCP6 {} {} {} {}\r\n", c.ip(), s.ip(), c.port(), s.port()).into_bytes()
        }
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2: binary.
pub fn v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY command
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.extend_from_slice(&[0x11, 0, 12]); // TCP over IPv4, 12 address bytes
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
        (SocketAddr::V6(c), SocketAddr::V6(s)) => {
            out.extend_from_slice(&[0x21, 0, 36]); // TCP over IPv6, 36 address bytes
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
        _ => out.extend_from_slice(&[0x00, 0, 0]), // UNSPEC: the receiver uses the connection's own addresses
    }
    out
}

/// Reads a header at the start of `buf` (either version): the client address and the header's length;
/// `Ok(None)` when more bytes are needed. For tests and for PROXY-aware test servers.
pub fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, String> {
    if buf.starts_with(b"PROXY ") {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() > 107 { Err("a v1 line longer than 107 bytes".into()) } else { Ok(None) };
        };
        let line = std::str::from_utf8(&buf[..end]).map_err(|_| "a v1 line that is not text")?;
        let parts: Vec<&str> = line.split(' ').collect();
        return match parts.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Ok(Some((None, end + 2))),
            ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
                let ip = src.parse().map_err(|_| format!("bad source {src:?}"))?;
                let port = sport.parse().map_err(|_| format!("bad source port {sport:?}"))?;
                Ok(Some((Some(SocketAddr::new(ip, port)), end + 2)))
            }
            _ => Err(format!("malformed v1 line {line:?}")),
        };
    }
    if buf.len() < 16 {
        return if V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) {
            Ok(None)
        } else {
            Err("no PROXY header".into())
        };
    }
    if buf[..12] != V2_SIGNATURE || buf[12] >> 4 != 2 {
        return Err("no PROXY header".into());
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < len {
        return Ok(None);
    }
    let a = &buf[16..len];
    let client = match buf[13] >> 4 {
        1 if a.len() >= 12 => {
            Some(SocketAddr::from((<[u8; 4]>::try_from(&a[..4]).unwrap(), u16::from_be_bytes([a[8], a[9]]))))
        }
        2 if a.len() >= 36 => {
            Some(SocketAddr::from((<[u8; 16]>::try_from(&a[..16]).unwrap(), u16::from_be_bytes([a[32], a[33]]))))
        }
        _ => None,
    };
    Ok(Some((client, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_lines() {
        let (c, s) = ("203.0.113.7:51234".parse().unwrap(), "198.51.100.1:5432".parse().unwrap());
        assert_eq!(v1(c, s), b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 5432\r\n");
        let (c6, s6) = ("[2001:db8::7]:4000".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(v1(c6, s6), b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n");
        assert_eq!(v1(c, s6), b"PROXY UNKNOWN\r\n");
        assert_eq!(parse(&v1(c, s)).unwrap(), Some((Some(c), v1(c, s).len())));
    }

    #[test]
    fn version_2_bytes_round_trip() {
        let (c, s): (SocketAddr, SocketAddr) =
            ("203.0.113.7:51234".parse().unwrap(), "198.51.100.1:5432".parse().unwrap());
        let h = v2(c, s);
        assert_eq!(&h[..16], b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c");
        assert_eq!(h.len(), 28);
        let mut stream = h.clone();
        stream.extend_from_slice(b"payload");
        assert_eq!(parse(&stream).unwrap(), Some((Some(c), 28)));
        assert_eq!(parse(&h[..20]).unwrap(), None, "incomplete");
        let c6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let h6 = v2(c6, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(h6.len(), 52);
        assert_eq!(parse(&h6).unwrap(), Some((Some(c6), 52)));
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
