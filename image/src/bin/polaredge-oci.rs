//! `polaredge-oci`: writes the client's OCI image archive (no container engine needed).
//!
//!   polaredge-oci --out FILE --version V --binary amd64=PATH [--binary arm64=PATH]

use polaredge_image::oci::{archive, ImageSpec, Platform};
use std::process::ExitCode;

const USAGE: &str = "usage: polaredge-oci --out FILE --version V --binary amd64=PATH [--binary arm64=PATH]

Writes an oci-archive of polaredge-client: the static binary on an empty base, running as user 65532,
entrypoint /polaredge-client, command `run`, one manifest per platform. Load it with
`skopeo copy oci-archive:FILE docker://REGISTRY/polaredge-client:V` (or podman load / ctr import).";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polaredge-oci: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let (mut out, mut version, mut platforms) = (None, None, vec![]);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--out" => out = Some(value()?),
            "--version" => version = Some(value()?),
            "--binary" => {
                let v = value()?;
                let (arch, path) = v.split_once('=').ok_or_else(|| format!("--binary {v}: use ARCH=PATH"))?;
                if !matches!(arch, "amd64" | "arm64") {
                    return Err(format!("--binary {v}: architecture must be amd64 or arm64"));
                }
                let binary = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
                platforms.push(Platform { architecture: arch.to_string(), binary });
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let out = out.ok_or(format!("--out is required\n{USAGE}"))?;
    let version = version.ok_or(format!("--version is required\n{USAGE}"))?;
    if platforms.is_empty() {
        return Err(format!("at least one --binary is required\n{USAGE}"));
    }
    let spec = ImageSpec {
        binary_name: "polaredge-client".into(),
        cmd: vec!["run".into()],
        exposed_ports: vec!["9090/tcp".into()],
        version,
    };
    let bytes = archive(&spec, &platforms);
    std::fs::write(&out, &bytes).map_err(|e| format!("cannot write {out}: {e}"))?;
    println!("{out}: {} bytes, sha256 {}", bytes.len(), polaredge_image::sha256_hex(&bytes));
    Ok(())
}
