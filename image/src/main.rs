//! `polaredge-image`: writes `vmlinuz`, `initramfs.img` and `manifest.txt` for one architecture.
//! `image/build.sh` fetches the inputs and calls it; see README.md ("Flashing the appliance image").

use polaredge_image::{build_initramfs, default_modules, sha256_hex, Inputs};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: polaredge-image --arch x86_64|aarch64 --kernel-dir DIR --agent FILE --out DIR
                       [--config-dir DIR] [--traefik FILE] [--module NAME]... [--ca-bundle FILE]
                       [--compress-traefik]

Builds the appliance: OUT/vmlinuz (the kernel, copied), OUT/initramfs.img (agent as /init, modules, config,
CA bundle, Traefik) and OUT/manifest.txt (sizes and SHA-256). Modules default to virtio net/blk/rng, evdev
and (x86_64) the ACPI button; dependencies are added. Member times come from SOURCE_DATE_EPOCH (default 0).
Without --config-dir the image has no agent config: append one (README \"Flashing the appliance image\").";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polaredge-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (mut arch, mut kernel_dir, mut agent, mut config_dir, mut out, mut traefik) =
        (None, None, None, None, None, None);
    let mut modules = vec![];
    let mut ca_bundle = Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")).filter(|p| p.exists());
    let mut compress_traefik = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--arch" => arch = Some(value()?),
            "--kernel-dir" => kernel_dir = Some(PathBuf::from(value()?)),
            "--agent" => agent = Some(PathBuf::from(value()?)),
            "--config-dir" => config_dir = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--traefik" => traefik = Some(PathBuf::from(value()?)),
            "--module" => modules.push(value()?),
            "--ca-bundle" => ca_bundle = Some(PathBuf::from(value()?)),
            "--compress-traefik" => compress_traefik = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let missing = |what: &str| format!("{what} is required\n{USAGE}");
    let arch = arch.ok_or_else(|| missing("--arch"))?;
    if !matches!(arch.as_str(), "x86_64" | "aarch64") {
        return Err(format!("--arch {arch}: use x86_64 or aarch64"));
    }
    let mtime = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.parse().map_err(|_| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let inputs = Inputs {
        kernel_dir: kernel_dir.ok_or_else(|| missing("--kernel-dir"))?,
        agent: agent.ok_or_else(|| missing("--agent"))?,
        traefik,
        config_dir,
        modules: if modules.is_empty() { default_modules(&arch) } else { modules },
        ca_bundle,
        compress_traefik,
        mtime,
    };
    let out = out.ok_or_else(|| missing("--out"))?;
    let initramfs = build_initramfs(&inputs).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let kernel = std::fs::read(inputs.kernel_dir.join("vmlinuz"))
        .map_err(|e| format!("cannot read {}/vmlinuz: {e}", inputs.kernel_dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("vmlinuz", &kernel)?;
    write("initramfs.img", &initramfs.bytes)?;
    let manifest = format!(
        "arch {arch}\nkernel {}\nvmlinuz {} bytes sha256 {}\ninitramfs.img {} bytes sha256 {}\n\
         initramfs without traefik {} bytes (gzip)\nmodules {}\n",
        std::fs::read_to_string(inputs.kernel_dir.join("package")).unwrap_or_default().trim(),
        kernel.len(),
        sha256_hex(&kernel),
        initramfs.bytes.len(),
        sha256_hex(&initramfs.bytes),
        initramfs.base_len,
        initramfs.modules.join(" "),
    );
    write("manifest.txt", manifest.as_bytes())?;
    print!("{manifest}");
    Ok(())
}
