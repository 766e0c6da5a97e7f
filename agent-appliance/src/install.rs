//! `polaredge-agent install-traefik`: download Traefik (a release .tar.gz or a bare binary) over HTTPS, check
//! its SHA-256, check that it runs, and install it atomically.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Largest download accepted (Traefik is ~185 MB unpacked, ~50 MB packed).
const MAX_DOWNLOAD: u64 = 512 << 20;

use protocol::generation::sha256_hex;

/// Plain HTTP is refused except to loopback (tests, a local mirror through an SSH tunnel).
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    if loopback.iter().any(|p| url.starts_with(p)) {
        return Ok(());
    }
    Err(format!("{url:?}: only https:// URLs are accepted (plain http only from loopback)"))
}

/// Downloads, verifies and installs; returns the installed binary's `traefik version` line.
pub fn install_traefik(url: &str, sha256: Option<&str>, dest: &Path) -> Result<String, String> {
    check_url(url)?;
    let response = ureq::get(url).call().map_err(|e| format!("download of {url} failed: {e}"))?;
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("download of {url} broke off: {e}"))?;
    if body.len() as u64 > MAX_DOWNLOAD {
        return Err(format!("download of {url} is larger than {} MiB", MAX_DOWNLOAD >> 20));
    }
    let actual = sha256_hex(&body);
    match sha256 {
        Some(expected) if !actual.eq_ignore_ascii_case(expected.trim()) => {
            return Err(format!("sha256 of the download is {actual}, expected {expected}; nothing installed"));
        }
        Some(_) => {}
        None => log::warn!("no --sha256 given; installing unverified download (sha256 {actual})"),
    }
    let binary = if body.starts_with(&[0x1f, 0x8b]) { traefik_from_tar_gz(&body)? } else { body };
    if !binary.starts_with(b"\x7fELF") {
        return Err("the download is neither an ELF binary nor a .tar.gz holding `traefik`".into());
    }
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let temp = dir.join(format!(".{}.installing", dest.file_name().and_then(|n| n.to_str()).unwrap_or("traefik")));
    std::fs::write(&temp, &binary).map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&temp).arg("version").output();
    let version = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "unknown".into()),
        Ok(out) => {
            let _ = std::fs::remove_file(&temp);
            return Err(format!("the downloaded binary does not run: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(format!("the downloaded binary does not run here: {e} (wrong architecture?)"));
        }
    };
    std::fs::rename(&temp, dest).map_err(|e| format!("cannot install {}: {e}", dest.display()))?;
    Ok(version)
}

/// The `traefik` file from a ustar archive compressed with gzip (Traefik's release format).
fn traefik_from_tar_gz(packed: &[u8]) -> Result<Vec<u8>, String> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(packed)
        .take(MAX_DOWNLOAD + 1)
        .read_to_end(&mut tar)
        .map_err(|e| format!("not a valid .tar.gz: {e}"))?;
    let mut offset = 0;
    while offset + 512 <= tar.len() {
        let header = &tar[offset..offset + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            String::from_utf8_lossy(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]).trim().to_string()
        };
        let name = field(0..100);
        let size = usize::from_str_radix(&field(124..136), 8).map_err(|_| "corrupt tar header".to_string())?;
        let start = offset + 512;
        let end = start.checked_add(size).filter(|&e| e <= tar.len()).ok_or("truncated tar archive")?;
        if name.rsplit('/').next() == Some("traefik") && header[156] != b'5' {
            return Ok(tar[start..end].to_vec());
        }
        offset = start + size.div_ceil(512) * 512;
    }
    Err("the archive holds no file named `traefik`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(name: &str, content: &[u8]) -> Vec<u8> {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", content.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = b'0';
        let mut tar = header.to_vec();
        tar.extend_from_slice(content);
        tar.resize(512 + content.len().div_ceil(512) * 512 + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn finds_traefik_in_a_release_archive() {
        let packed = tar_gz("traefik", b"\x7fELF binary");
        assert_eq!(traefik_from_tar_gz(&packed).unwrap(), b"\x7fELF binary");
        assert!(traefik_from_tar_gz(&tar_gz("README.md", b"x")).unwrap_err().contains("no file named"));
    }

    #[test]
    fn plain_http_only_from_loopback() {
        assert!(check_url("https://github.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:8000/traefik").is_ok());
        assert!(check_url("http://example.com/traefik").is_err());
    }
}
