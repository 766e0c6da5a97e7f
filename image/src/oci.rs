//! Writes an OCI image as an `oci-archive` (a tar of an OCI image layout: `oci-layout`, `index.json`,
//! `blobs/sha256/...`), without a container engine: one layer per platform holding a static binary, a
//! passwd/group naming the non-root user, and an empty /tmp; `index.json` names one image (the version),
//! a multi-platform index with one manifest per platform.
//! Reproducible: fixed times and owners, sorted members, gzip without a time stamp.

use crate::gzip;

/// The user the image runs as (the distroless "nonroot" convention).
pub const USER: u32 = 65532;

/// One platform of the image.
pub struct Platform {
    /// OCI architecture name: `amd64` or `arm64`.
    pub architecture: String,
    /// The static binary, installed as `/<binary_name>`.
    pub binary: Vec<u8>,
}

/// What the image is.
pub struct ImageSpec {
    /// File name of the binary at the root, and the entrypoint.
    pub binary_name: String,
    /// Default arguments.
    pub cmd: Vec<String>,
    /// Ports to document (`9090/tcp`).
    pub exposed_ports: Vec<String>,
    /// Version: the manifests' `org.opencontainers.image.ref.name` and `version` annotations.
    pub version: String,
}

/// A tar archive writer (ustar), deterministic: mode and size only vary by member; owner root, time 0.
#[derive(Default)]
pub struct Tar {
    bytes: Vec<u8>,
}

impl Tar {
    /// Appends a member; `kind` is b'0' for a file, b'5' for a directory.
    fn member(&mut self, path: &str, kind: u8, mode: u32, data: &[u8]) {
        assert!(path.len() < 100, "tar member name {path} too long for this writer");
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
            let text = format!("{value:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(text.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
    }

    /// Appends a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.member(path, b'0', mode, data);
    }

    /// Appends a directory (`path` ends with `/`).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.member(path, b'5', mode, &[]);
    }

    /// The archive with its two zero end blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(bytes))
}

/// The image's root file system for one platform, as an uncompressed tar.
pub fn layer(spec: &ImageSpec, binary: &[u8]) -> Vec<u8> {
    let mut tar = Tar::default();
    tar.file(&spec.binary_name, 0o755, binary);
    tar.dir("etc/", 0o755);
    tar.file("etc/group", 0o644, format!("root:x:0:\nnonroot:x:{USER}:\n").as_bytes());
    tar.file(
        "etc/passwd",
        0o644,
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/sbin/nologin\n")
            .as_bytes(),
    );
    tar.dir("tmp/", 0o1777);
    tar.finish()
}

/// The `oci-archive` bytes for every platform.
pub fn archive(spec: &ImageSpec, platforms: &[Platform]) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = vec![];
    let mut manifests = vec![];
    for platform in platforms {
        let layer = layer(spec, &platform.binary);
        let diff_id = digest(&layer);
        let compressed = gzip(&layer);
        let config = serde_json::json!({
            "architecture": platform.architecture,
            "os": "linux",
            "config": {
                "User": format!("{USER}:{USER}"),
                "Entrypoint": [format!("/{}", spec.binary_name)],
                "Cmd": spec.cmd,
                "Env": ["PATH=/"],
                "WorkingDir": "/",
                "ExposedPorts": spec.exposed_ports.iter().map(|p| (p.clone(), serde_json::json!({}))).collect::<serde_json::Map<_, _>>(),
                "Labels": {"org.opencontainers.image.version": spec.version},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": format!("polaredge-image oci: static {} on an empty base", spec.binary_name)}],
        });
        let config = serde_json::to_vec(&config).expect("JSON");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&compressed), "size": compressed.len()}],
            "annotations": {"org.opencontainers.image.version": spec.version},
        }))
        .expect("JSON");
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": platform.architecture, "os": "linux"},
        }));
        blobs.extend([(digest(&config), config), (digest(&compressed), compressed), (digest(&manifest), manifest)]);
    }
    // index.json names one image (the version); it is a multi-platform index blob listing the manifests.
    let platforms_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("JSON");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest(&platforms_index),
            "size": platforms_index.len(),
            "annotations": {"org.opencontainers.image.ref.name": spec.version},
        }],
    }))
    .expect("JSON");
    blobs.push((digest(&platforms_index), platforms_index));
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    let mut tar = Tar::default();
    tar.dir("blobs/", 0o755);
    tar.dir("blobs/sha256/", 0o755);
    for (digest, bytes) in &blobs {
        tar.file(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), 0o644, bytes);
    }
    tar.file("index.json", 0o644, &index);
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar.finish()
}
