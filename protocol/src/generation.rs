//! How an upload is named: the first 16 hex digits of the SHA-256 of its exact bytes. The client computes it
//! for what it sends, the agent for what it receives, and both compare it with what is live.

/// The generation of an upload.
pub fn generation_of(upload: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, upload);
    hex(&digest.as_ref()[..8])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex of the whole SHA-256 of `bytes` (checksums of downloads and binaries).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe() {
        assert_eq!(generation_of(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
