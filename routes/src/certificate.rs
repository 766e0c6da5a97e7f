//! TLS certificates carried in the snapshot (from the cluster's `kubernetes.io/tls` Secrets): PEM certificate
//! chain and private key, checked before they reach Traefik. The client checks each Secret with this before it
//! renders it (a bad one falls back to ACME with a Warning Event) and the agent checks every upload with it (a
//! bad one refuses the upload, the last good config keeps serving).
//!
//! Checked: the PEM holds at least one certificate and exactly one private key (PKCS#1 RSA, SEC1 EC or PKCS#8
//! RSA/ECDSA/Ed25519); the key belongs to the first certificate; that certificate has not expired. A minimal
//! DER reader takes what is needed from the certificate (validity, public key, DNS names); ring derives the
//! key's public half. Messages never quote key material.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM accepted for a certificate chain or a key.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// What a checked certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// DNS names of the first certificate (its subjectAltName).
    pub dns_names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a certificate and key were refused. The messages never quote key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateError {
    /// The certificate or the key is larger than [`MAX_PEM_BYTES`].
    TooLarge,
    /// The certificate field is not PEM; the PEM parser's reason.
    NotPem(String),
    /// The certificate field holds no `CERTIFICATE` block.
    NoCertificate,
    /// The first certificate's DER cannot be read; the reader's reason.
    Unreadable(String),
    /// The key field holds no PKCS#1, SEC1 or PKCS#8 private key.
    NoKey,
    /// The key's algorithm or curve is not supported.
    UnsupportedKey,
    /// The key is not the first certificate's.
    KeyMismatch,
    /// The certificate's validity ended (seconds since the Unix epoch).
    Expired(i64),
}

impl std::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateError::TooLarge => write!(f, "a certificate or key larger than {MAX_PEM_BYTES} bytes"),
            CertificateError::NotPem(why) => write!(f, "the certificate is not valid PEM ({why})"),
            CertificateError::NoCertificate => {
                write!(f, "no certificate (a PEM CERTIFICATE block) in the certificate field")
            }
            CertificateError::Unreadable(why) => write!(f, "the certificate cannot be read: {why}"),
            CertificateError::NoKey => write!(f, "no private key (PKCS#1, SEC1 or PKCS#8 PEM) in the key"),
            CertificateError::UnsupportedKey => {
                write!(f, "the private key cannot be used (RSA, ECDSA P-256/P-384 and Ed25519 are supported)")
            }
            CertificateError::KeyMismatch => write!(f, "the private key does not belong to the certificate"),
            CertificateError::Expired(at) => write!(f, "the certificate expired on {}", iso_date(*at)),
        }
    }
}

impl std::error::Error for CertificateError {}

/// Checks a certificate chain and its key at `now` (seconds since the Unix epoch).
pub fn check(cert_pem: &str, key_pem: &str, now: i64) -> Result<Checked, CertificateError> {
    if cert_pem.len() > MAX_PEM_BYTES || key_pem.len() > MAX_PEM_BYTES {
        return Err(CertificateError::TooLarge);
    }
    let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertificateError::NotPem(e.to_string()))?;
    let leaf = certs.first().ok_or(CertificateError::NoCertificate)?;
    let cert = parse_certificate(leaf).map_err(CertificateError::Unreadable)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| CertificateError::NoKey)?;
    let public = public_key(&key).ok_or(CertificateError::UnsupportedKey)?;
    if public != cert.public_key {
        return Err(CertificateError::KeyMismatch);
    }
    if cert.not_after < now {
        return Err(CertificateError::Expired(cert.not_after));
    }
    Ok(Checked { dns_names: cert.dns_names, not_after: cert.not_after })
}

/// The fields of a certificate that are checked.
struct Certificate {
    not_after: i64,
    /// Contents of subjectPublicKey (without the unused-bits byte).
    public_key: Vec<u8>,
    dns_names: Vec<String>,
}

/// One DER element: tag, contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    let (&first, rest) = rest.split_first().ok_or("truncated")?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first - 0x80);
            if rest.len() < n {
                return Err("truncated length".into());
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return Err("unsupported length form".into()),
    };
    if rest.len() < len {
        return Err("truncated element".into());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Takes the next element from `input`, which must have `tag`; returns its contents.
fn take<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<&'a [u8], String> {
    let (found, contents, rest) = element(input)?;
    if found != tag {
        return Err(format!("expected {what}"));
    }
    *input = rest;
    Ok(contents)
}

fn parse_certificate(der: &[u8]) -> Result<Certificate, String> {
    let mut certificate = take(&mut &der[..], 0x30, "a certificate")?;
    let mut tbs = take(&mut certificate, 0x30, "the certificate body")?;
    if tbs.first() == Some(&0xa0) {
        take(&mut tbs, 0xa0, "the version")?;
    }
    take(&mut tbs, 0x02, "the serial number")?;
    take(&mut tbs, 0x30, "the signature algorithm")?;
    take(&mut tbs, 0x30, "the issuer")?;
    let mut validity = take(&mut tbs, 0x30, "the validity")?;
    let (_, _not_before, rest) = element(validity)?;
    validity = rest;
    let (tag, not_after, _) = element(validity)?;
    let not_after = parse_time(tag, not_after)?;
    take(&mut tbs, 0x30, "the subject")?;
    let mut spki = take(&mut tbs, 0x30, "the public key")?;
    take(&mut spki, 0x30, "the public key algorithm")?;
    let bits = take(&mut spki, 0x03, "the public key bits")?;
    let public_key = bits.get(1..).ok_or("empty public key")?.to_vec();
    let mut dns_names = Vec::new();
    // Optional unique ids ([1], [2]), then the extensions ([3]).
    while let Ok((tag, contents, rest)) = element(tbs) {
        tbs = rest;
        if tag == 0xa3 {
            dns_names = san_dns_names(contents)?;
        }
    }
    Ok(Certificate { not_after, public_key, dns_names })
}

/// subjectAltName's dNSName entries from the extensions.
fn san_dns_names(extensions: &[u8]) -> Result<Vec<String>, String> {
    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    let mut list = take(&mut &extensions[..], 0x30, "the extensions")?;
    let mut names = Vec::new();
    while !list.is_empty() {
        let mut extension = take(&mut list, 0x30, "an extension")?;
        if take(&mut extension, 0x06, "an extension id")? != SAN {
            continue;
        }
        if extension.first() == Some(&0x01) {
            take(&mut extension, 0x01, "the critical flag")?;
        }
        let mut value = take(&mut extension, 0x04, "the extension value")?;
        let mut general_names = take(&mut value, 0x30, "the alternative names")?;
        while !general_names.is_empty() {
            let (tag, contents, rest) = element(general_names)?;
            general_names = rest;
            if tag == 0x82 {
                names.push(String::from_utf8_lossy(contents).into_owned());
            }
        }
    }
    Ok(names)
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as seconds since the Unix epoch.
fn parse_time(tag: u8, text: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(text).map_err(|_| "a time that is not text")?;
    let digits = text.strip_suffix('Z').ok_or("a time without Z")?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().map_err(|_| "bad year")?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().map_err(|_| "bad year")?, &digits[4..]),
        _ => return Err("an unsupported time format".into()),
    };
    let field = |i: usize| -> Result<i64, String> { rest[i..i + 2].parse().map_err(|_| "bad time".to_string()) };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err("a date out of range".into());
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of a Unix time (for messages).
fn iso_date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The public half of a private key, encoded as in a certificate's subjectPublicKey.
/// The public half of a supported private key.
fn public_key(key: &PrivateKeyDer) -> Option<Vec<u8>> {
    use ring::signature::{self, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let ecdsa = |pkcs8: &[u8]| {
        [&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &signature::ECDSA_P384_SHA384_ASN1_SIGNING]
            .into_iter()
            .find_map(|alg| signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng).ok())
            .map(|pair| pair.public_key().as_ref().to_vec())
    };
    match key {
        PrivateKeyDer::Pkcs1(der) => {
            signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).ok().map(|pair| pair.public().as_ref().to_vec())
        }
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            ecdsa(der)
                .or_else(|| {
                    signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .ok()
                        .map(|pair| pair.public_key().as_ref().to_vec())
                })
                .or_else(|| signature::RsaKeyPair::from_pkcs8(der).ok().map(|pair| pair.public().as_ref().to_vec()))
        }
        PrivateKeyDer::Sec1(der) => {
            // ring reads EC keys as PKCS#8 only: wrap the SEC1 key for each supported curve.
            const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
            [P256, P384].into_iter().find_map(|curve| ecdsa(&sec1_as_pkcs8(der.secret_sec1_der(), curve)))
        }
        _ => None,
    }
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// `PrivateKeyInfo { version 0, { id-ecPublicKey, curve }, OCTET STRING sec1 }`.
fn sec1_as_pkcs8(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let algorithm = der(0x30, &[EC_PUBLIC_KEY, curve].concat());
    der(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, sec1)].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000; // 2026-11

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn rsa_ec_and_ed25519_keys_in_every_encoding_match_their_certificates() {
        for (cert, key, name) in [
            ("rsa.crt", "rsa-pkcs1.key", "app.test"),
            ("rsa.crt", "rsa-pkcs8.key", "app.test"),
            ("ec.crt", "ec-sec1.key", "ec.test"),
            ("ed25519.crt", "ed25519.key", "ed.test"),
        ] {
            let checked = check(&fixture(cert), &fixture(key), NOW).unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
            assert_eq!(checked.dns_names[0], name);
            assert!(checked.not_after > NOW + 50 * 365 * 86_400, "{cert}");
        }
        assert_eq!(
            check(&fixture("rsa.crt"), &fixture("rsa-pkcs1.key"), NOW).unwrap().dns_names,
            ["app.test", "www.app.test"]
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let e = check(&fixture("rsa.crt"), &fixture("ec-sec1.key"), NOW).unwrap_err();
        assert_eq!(e, CertificateError::KeyMismatch);
        assert_eq!(e.to_string(), "the private key does not belong to the certificate");
        let e = check(&fixture("ec.crt"), &fixture("ed25519.key"), NOW).unwrap_err();
        assert_eq!(e, CertificateError::KeyMismatch);
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_date() {
        let cert = fixture("rsa.crt");
        let not_after = check(&cert, &fixture("rsa-pkcs1.key"), NOW).unwrap().not_after;
        let e = check(&cert, &fixture("rsa-pkcs1.key"), not_after + 1).unwrap_err();
        assert_eq!(e, CertificateError::Expired(not_after));
        assert!(e.to_string().starts_with("the certificate expired on 2126-"), "{e}");
    }

    #[test]
    fn garbage_is_refused_without_quoting_it() {
        let key = fixture("rsa-pkcs1.key");
        for (cert, key) in [
            ("", key.as_str()),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key.as_str()),
            (fixture("rsa.crt").leak() as &str, "not a key"),
        ] {
            let e = check(cert, key, NOW).unwrap_err().to_string();
            assert!(!e.contains("BEGIN") && !e.contains("MII"), "{e}");
        }
        assert_eq!(check(&"x".repeat(MAX_PEM_BYTES + 1), &key, NOW), Err(CertificateError::TooLarge));
    }

    #[test]
    fn time_and_date_arithmetic() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Ok(0));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(parse_time(0x18, b"21261107171139Z").map(iso_date), Ok("2126-11-07".into()));
        assert_eq!(iso_date(NOW), "2026-11-30");
        assert!(parse_time(0x17, b"7001010000Z").is_err());
    }
}
