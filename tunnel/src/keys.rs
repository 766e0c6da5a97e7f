//! WireGuard keys in the text form `wg genkey`, `wg pubkey` and `wg genpsk` use: 32 bytes, standard base64 with
//! padding (44 characters).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519;
use std::fmt;
use std::str::FromStr;

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not valid base64.
    NotBase64,
    /// The text decodes, but not to 32 bytes.
    WrongLength(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotBase64 => write!(
                f,
                "not a WireGuard key: expected 44 characters of base64 as printed by `wg genkey` or `polaredge-agent init`"
            ),
            KeyError::WrongLength(n) => write!(f, "not a WireGuard key: decodes to {n} bytes, expected 32"),
        }
    }
}

impl std::error::Error for KeyError {}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

fn random32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        // getrandom(2) blocks only until the kernel's pool is initialised, which is what a key needs.
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom failed ({e}); the kernel has no usable random source"),
        }
    }
    bytes
}

/// A Curve25519 private key. `Display` prints it; keep it out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh key from the kernel's random source, clamped exactly as `wg genkey` does.
    pub fn generate() -> Self {
        let mut k = random32();
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        PrivateKey(k)
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.secret()).to_bytes())
    }

    /// The key as boringtun takes it.
    pub fn secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A Curve25519 public key, which names a WireGuard peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as boringtun takes it.
    pub fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An optional symmetric key mixed into the handshake (`wg genpsk`), for post-quantum resistance.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl PresharedKey {
    /// A fresh key from the kernel's random source.
    pub fn generate() -> Self {
        PresharedKey(random32())
    }

    /// The raw 32 bytes, as boringtun takes them.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

macro_rules! text_form {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&STANDARD.encode(self.0))
            }
        }

        impl FromStr for $t {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                decode32(s).map($t)
            }
        }

        impl From<[u8; 32]> for $t {
            fn from(bytes: [u8; 32]) -> Self {
                $t(bytes)
            }
        }
    };
}

text_form!(PrivateKey);
text_form!(PublicKey);
text_form!(PresharedKey);

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1 test vector, in WireGuard's base64 form.
    const ALICE_PRIVATE_HEX: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC_HEX: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        let private = PrivateKey::from(hex32(ALICE_PRIVATE_HEX));
        assert_eq!(private.public_key().as_bytes(), &hex32(ALICE_PUBLIC_HEX));
    }

    #[test]
    fn text_round_trip_is_44_chars_of_padded_base64() {
        let key = PrivateKey::generate();
        let text = key.to_string();
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('='));
        assert_eq!(text.parse::<PrivateKey>().unwrap(), key);
        let public = key.public_key();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
    }

    #[test]
    fn bad_text_is_rejected_with_a_reason() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::NotBase64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::WrongLength(3)));
        // Surrounding whitespace, as in a key file with a trailing newline, is fine.
        let k = PresharedKey::generate();
        assert_eq!(format!(" {k}\n").parse::<PresharedKey>().unwrap(), k);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let k = PrivateKey::generate();
        assert!(!format!("{k:?}").contains(&k.to_string()));
    }
}
