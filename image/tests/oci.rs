//! The client's OCI archive: its layout, digests and config read back by this test and by Debian's skopeo
//! (which verifies every blob digest while copying), for both platforms; and the same inputs give the same
//! bytes.

use polaredge_image::oci::{archive, ImageSpec, Platform, USER};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

fn spec() -> ImageSpec {
    ImageSpec {
        binary_name: "polaredge-client".into(),
        cmd: vec!["run".into()],
        exposed_ports: vec!["9090/tcp".into()],
        version: "0.1.0".into(),
    }
}

fn platforms() -> Vec<Platform> {
    vec![
        Platform { architecture: "amd64".into(), binary: b"\x7fELF amd64 stand-in".to_vec() },
        Platform { architecture: "arm64".into(), binary: b"\x7fELF arm64 stand-in".to_vec() },
    ]
}

/// A minimal ustar reader: member name -> (mode, bytes).
fn untar(bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut members = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at] != 0 {
        let h = &bytes[at..at + 512];
        let field =
            |a: usize, b: usize| std::str::from_utf8(&h[a..b]).unwrap().trim_end_matches('\0').trim().to_string();
        let name = field(0, 100);
        let mode = u32::from_str_radix(&field(100, 108), 8).unwrap();
        let size = usize::from_str_radix(&field(124, 136), 8).unwrap();
        let sum: u32 =
            h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
        assert_eq!(u32::from_str_radix(&field(148, 155), 8).unwrap(), sum, "{name}: header checksum");
        members.insert(name, (mode, bytes[at + 512..at + 512 + size].to_vec()));
        at += 512 + size.next_multiple_of(512);
    }
    members
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", polaredge_image::sha256_hex(bytes))
}

fn blob<'a>(files: &'a BTreeMap<String, (u32, Vec<u8>)>, digest: &str) -> &'a [u8] {
    let bytes = &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].1;
    assert_eq!(sha(bytes), digest, "blob content matches its digest");
    bytes
}

#[test]
fn the_archive_is_a_valid_reproducible_oci_layout_with_a_non_root_static_image() {
    let bytes = archive(&spec(), &platforms());
    assert_eq!(bytes, archive(&spec(), &platforms()), "same inputs, same bytes");
    let files = untar(&bytes);
    assert_eq!(files["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
    let top: serde_json::Value = serde_json::from_slice(&files["index.json"].1).unwrap();
    assert_eq!(top["manifests"].as_array().unwrap().len(), 1, "one named image");
    assert_eq!(top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "0.1.0");
    let index: serde_json::Value =
        serde_json::from_slice(blob(&files, top["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    for (entry, platform) in manifests.iter().zip(platforms()) {
        assert_eq!(entry["platform"]["architecture"], platform.architecture.as_str());
        let manifest: serde_json::Value =
            serde_json::from_slice(blob(&files, entry["digest"].as_str().unwrap())).unwrap();
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let config: serde_json::Value =
            serde_json::from_slice(blob(&files, manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["config"]["User"], format!("{USER}:{USER}"), "non-root");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/polaredge-client"]));
        assert_eq!(config["architecture"], platform.architecture.as_str());
        let compressed = blob(&files, manifest["layers"][0]["digest"].as_str().unwrap());
        let mut layer = vec![];
        flate2::read::GzDecoder::new(compressed).read_to_end(&mut layer).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha(&layer), "diff_id is the uncompressed layer's digest");
        let root = untar(&layer);
        assert_eq!(root.keys().collect::<Vec<_>>(), ["etc/", "etc/group", "etc/passwd", "polaredge-client", "tmp/"]);
        assert_eq!(root["polaredge-client"], (0o755, platform.binary.clone()), "only the static binary");
        assert!(String::from_utf8_lossy(&root["etc/passwd"].1).contains(&format!("nonroot:x:{USER}:{USER}:")));
    }

    // Debian's skopeo reads it, per platform, and copies it out verifying every digest.
    let dir = std::env::temp_dir().join(format!("pe-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client.oci.tar");
    std::fs::write(&path, &bytes).unwrap();
    let image = format!("oci-archive:{}", path.display());
    for arch in ["amd64", "arm64"] {
        let out = Command::new("skopeo")
            .args(["inspect", "--override-os", "linux", "--override-arch", arch, "--config", &image])
            .output()
            .expect("skopeo is installed by scripts/install-deps.sh");
        assert!(out.status.success(), "skopeo inspect {arch}: {}", String::from_utf8_lossy(&out.stderr));
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["User"], "65532:65532");
        let copy = dir.join(format!("copy-{arch}"));
        let out = Command::new("skopeo")
            .args(["copy", "--override-os", "linux", "--override-arch", arch, &image])
            .arg(format!("dir:{}", copy.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy {arch}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
