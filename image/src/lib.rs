//! Builds the POLAREDGE appliance image: the Debian cloud kernel as is, and an initramfs holding the agent as
//! `/init`, the kernel modules the init loads (with their dependencies, in load order), the agent's config and
//! keys, a CA bundle for ACME, and Traefik.
//!
//! The initramfs is two concatenated cpio archives, which the kernel unpacks in turn: the base (everything
//! but Traefik) gzip-compressed, then Traefik, uncompressed by default because unpacking a 185 MB binary is
//! several times faster than inflating it under emulation and a VPS's boot disk does not mind the size.
//! Both are reproducible: the same inputs give the same bytes (sorted members, root owner, one fixed time,
//! gzip header without time or name).
//!
//! Modules: [`cpio`] (the archive writer), [`modinfo`] (module dependencies from the ELF files), [`oci`] (the
//! client's OCI image archive, written without a container engine).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cpio;
pub mod modinfo;
pub mod oci;

use cpio::{Archive, Node};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Modules the init loads by default: virtio networking and block (state disk), the hardware RNG, and on
/// x86_64 the ACPI power button with the event interface the init reads it through.
pub fn default_modules(arch: &str) -> Vec<String> {
    let mut modules = vec!["virtio_pci", "virtio_mmio", "virtio_net", "virtio_blk", "virtio_rng", "evdev"];
    if arch == "x86_64" {
        modules.push("button");
    }
    modules.into_iter().map(String::from).collect()
}

/// Everything an image is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Folder from `image/fetch-kernel.sh`: `vmlinuz` and `modules/*.ko`.
    pub kernel_dir: PathBuf,
    /// The static agent binary for the image's architecture.
    pub agent: PathBuf,
    /// The Traefik binary, or none for an image without it (size checks, or Traefik from elsewhere).
    pub traefik: Option<PathBuf>,
    /// Folder from `polaredge-agent init`: agent.yaml, agent.key and any other files it references. None for
    /// a release image, to which the operator appends a config archive (README "Flashing the appliance image").
    pub config_dir: Option<PathBuf>,
    /// Modules to load at boot (dependencies are added).
    pub modules: Vec<String>,
    /// CA certificates for Traefik's ACME client, if any.
    pub ca_bundle: Option<PathBuf>,
    /// Gzip the Traefik archive too.
    pub compress_traefik: bool,
    /// Modification time of every member (SOURCE_DATE_EPOCH).
    pub mtime: u32,
}

/// The built initramfs.
#[derive(Debug)]
pub struct Initramfs {
    /// Both archives, ready for `-initrd` or a boot loader.
    pub bytes: Vec<u8>,
    /// Size of the compressed base archive (without Traefik).
    pub base_len: usize,
    /// The modules in the order the init loads them.
    pub modules: Vec<String>,
}

/// Why an image could not be built.
#[derive(Debug)]
pub enum ImageError {
    /// An input file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The config folder could not be listed.
    ConfigFolder {
        /// The folder.
        dir: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The config folder has no `agent.yaml`.
    NoAgentConfig(PathBuf),
    /// No `NAME.ko` (nor with dashes) in the kernel's module folder.
    NoModule {
        /// The module's name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A module file is not a kernel module this reader understands.
    Module {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: modinfo::ModInfoError,
    },
    /// The modules asked for cannot be put in a load order.
    ModuleOrder(Box<modinfo::OrderError<ImageError>>),
    /// A member could not be added to the archive.
    Archive(cpio::ArchiveError),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            ImageError::ConfigFolder { dir, error } => {
                write!(f, "cannot read the config folder {}: {error}", dir.display())
            }
            ImageError::NoAgentConfig(dir) => write!(
                f,
                "{} has no agent.yaml; create one with `polaredge-agent init --dir {}`",
                dir.display(),
                dir.display()
            ),
            ImageError::NoModule { name, dir } => {
                write!(
                    f,
                    "no module {name} in {} (is --kernel-dir the folder from image/fetch-kernel.sh?)",
                    dir.display()
                )
            }
            ImageError::Module { path, error } => write!(f, "{}: {error}", path.display()),
            ImageError::ModuleOrder(error) => error.fmt(f),
            ImageError::Archive(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Read { error, .. } | ImageError::ConfigFolder { error, .. } => Some(error),
            ImageError::Module { error, .. } => Some(error),
            ImageError::ModuleOrder(error) => Some(error),
            ImageError::Archive(error) => Some(error),
            ImageError::NoAgentConfig(_) | ImageError::NoModule { .. } => None,
        }
    }
}

impl From<cpio::ArchiveError> for ImageError {
    fn from(error: cpio::ArchiveError) -> Self {
        ImageError::Archive(error)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|error| ImageError::Read { path: path.to_path_buf(), error })
}

/// Gzip at the best level, reproducibly.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    // No file name and mtime 0 in the header: the output depends on the bytes only.
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Adds every file of `config_dir` under /etc/polaredge (keys mode 0600).
fn add_config(base: &mut Archive, config_dir: &Path) -> Result<(), ImageError> {
    let mut names: Vec<_> = std::fs::read_dir(config_dir)
        .map_err(|error| ImageError::ConfigFolder { dir: config_dir.to_path_buf(), error })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !names.iter().any(|n| n == "agent.yaml") {
        return Err(ImageError::NoAgentConfig(config_dir.to_path_buf()));
    }
    for name in &names {
        // Keys stay private to root inside the image too.
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        base.add(&format!("etc/polaredge/{name}"), Node::File(read(&config_dir.join(name))?), mode)?;
    }
    Ok(())
}

/// Builds the initramfs from the inputs.
pub fn build_initramfs(inputs: &Inputs) -> Result<Initramfs, ImageError> {
    let mut base = Archive::new();
    base.add("init", Node::File(read(&inputs.agent)?), 0o755)?;
    base.add("usr/bin/polaredge-agent", Node::Symlink("/init".into()), 0o777)?;
    // The kernel opens /dev/console for /init before anything is mounted.
    base.add("dev/console", Node::CharDevice(5, 1), 0o600)?;
    for dir in ["proc", "sys", "run", "tmp", "var/lib/polaredge", "etc/polaredge"] {
        base.add(dir, Node::Dir, 0o755)?;
    }
    base.add("etc/hosts", Node::File(b"127.0.0.1 localhost\n::1 localhost\n".to_vec()), 0o644)?;
    if let Some(bundle) = &inputs.ca_bundle {
        base.add("etc/ssl/certs/ca-certificates.crt", Node::File(read(bundle)?), 0o644)?;
    }

    if let Some(config_dir) = &inputs.config_dir {
        add_config(&mut base, config_dir)?;
    }

    let module_dir = inputs.kernel_dir.join("modules");
    let path_of = |name: &str| -> Result<PathBuf, ImageError> {
        [name.to_string(), name.replace('_', "-")]
            .iter()
            .map(|n| module_dir.join(format!("{n}.ko")))
            .find(|p| p.exists())
            .ok_or_else(|| ImageError::NoModule { name: name.to_string(), dir: module_dir.clone() })
    };
    // Each module is read once: its .modinfo gives the dependencies, its bytes go into the archive.
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let order = modinfo::load_order(&inputs.modules, |name| {
        let path = path_of(name)?;
        let bytes = read(&path)?;
        let info = modinfo::parse(&bytes).map_err(|error| ImageError::Module { path, error })?;
        files.insert(name.to_string(), bytes);
        Ok(info.depends)
    })
    .map_err(|e| ImageError::ModuleOrder(Box::new(e)))?;
    for name in &order {
        let bytes = files.remove(name).expect("load_order looked up every module it returns");
        let dir = init::layout::MODULES_DIR.trim_start_matches('/');
        base.add(&format!("{dir}/{name}.ko"), Node::File(bytes), 0o644)?;
    }
    // The list init loads from, at the path it reads.
    let list: String = order.iter().map(|m| format!("{m}\n")).collect();
    base.add(init::layout::MODULES_LIST.trim_start_matches('/'), Node::File(list.into_bytes()), 0o644)?;

    let mut bytes = gzip(&base.to_bytes(inputs.mtime));
    let base_len = bytes.len();
    if let Some(traefik) = &inputs.traefik {
        // The next archive must start on a 4-byte boundary; zero padding between archives is skipped.
        bytes.resize(bytes.len().next_multiple_of(512), 0);
        let mut second = Archive::new();
        second.add("usr/bin/traefik", Node::File(read(traefik)?), 0o755)?;
        let raw = second.to_bytes(inputs.mtime);
        bytes.extend_from_slice(&if inputs.compress_traefik { gzip(&raw) } else { raw });
    }
    Ok(Initramfs { bytes, base_len, modules: order })
}

/// Hex SHA-256, for the manifest.
pub use protocol::generation::sha256_hex;
