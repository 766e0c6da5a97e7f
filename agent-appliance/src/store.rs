//! The agent's files: the routes file Traefik watches, written atomically, and the last good upload.
//!
//! Write recipe (measured, see BRIEF section 4): write to a temp file OUTSIDE the watched folder on the same
//! filesystem, fsync it, rename it into place, fsync the folder. A temp file inside the watched folder costs a
//! reload slot; an in-place write serves transient 404s; an empty or missing file drops every route, so the
//! routes file is never removed or truncated.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths under the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    /// The state directory.
    pub root: PathBuf,
    /// Folder Traefik's file provider watches.
    pub dynamic_dir: PathBuf,
    staging: PathBuf,
}

impl Store {
    /// Creates the folders if needed and makes them private (mode 0700), also when they existed with a wider
    /// mode: they hold the routes (pod addresses), the last good upload and ACME keys.
    pub fn open(root: &Path) -> io::Result<Store> {
        let store =
            Store { root: root.to_path_buf(), dynamic_dir: root.join("dynamic"), staging: root.join("staging") };
        for dir in [&store.root, &store.dynamic_dir, &store.staging] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot create state folder {}: {e}", dir.display())))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot make state folder {} private (mode 0700): {e}", dir.display()))
            })?;
        }
        Ok(store)
    }

    /// The routes file Traefik reads.
    pub fn routes_file(&self) -> PathBuf {
        self.dynamic_dir.join("routes.yaml")
    }

    /// The last upload Traefik confirmed, kept to serve again after a restart.
    pub fn last_good_file(&self) -> PathBuf {
        self.root.join("last-good.yaml")
    }

    /// Traefik's generated static config.
    pub fn static_config_file(&self) -> PathBuf {
        self.root.join("traefik.yaml")
    }

    /// ACME account and certificates (Traefik insists on mode 0600).
    pub fn acme_file(&self) -> PathBuf {
        self.root.join("acme.json")
    }

    /// Replaces the routes file atomically.
    pub fn write_routes(&self, text: &str) -> io::Result<()> {
        debug_assert!(!text.trim().is_empty(), "an empty routes file drops every route");
        self.replace(&self.routes_file(), text.as_bytes())
    }

    /// Records the last good upload.
    pub fn save_last_good(&self, upload: &[u8]) -> io::Result<()> {
        self.replace(&self.last_good_file(), upload)
    }

    /// The last good upload, if there is one.
    pub fn last_good(&self) -> Option<Vec<u8>> {
        fs::read(self.last_good_file()).ok().filter(|b| !b.is_empty())
    }

    /// Writes a file with mode 0600 by the temp-fsync-rename-fsync recipe.
    pub fn replace(&self, target: &Path, bytes: &[u8]) -> io::Result<()> {
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let temp = self.staging.join(format!("{name}.tmp"));
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, target)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot move {} into place: {e}", target.display())))?;
        if let Some(dir) = target.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_folder_that_exists_with_a_wide_mode_is_made_private() {
        let root = std::env::temp_dir().join(format!("pe-store-mode-{}", std::process::id()));
        fs::create_dir_all(root.join("dynamic")).unwrap();
        for dir in [&root, &root.join("dynamic")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let store = Store::open(&root).unwrap();
        for dir in [&store.root, &store.dynamic_dir, &store.staging] {
            assert_eq!(fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn replace_is_atomic_private_and_leaves_no_temp_in_the_watched_folder() {
        let root = std::env::temp_dir().join(format!("pe-store-{}", std::process::id()));
        let store = Store::open(&root).unwrap();
        store.write_routes("a: 1\n").unwrap();
        store.write_routes("a: 2\n").unwrap();
        assert_eq!(fs::read_to_string(store.routes_file()).unwrap(), "a: 2\n");
        let names: Vec<_> = fs::read_dir(&store.dynamic_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["routes.yaml"]);
        assert_eq!(fs::metadata(store.routes_file()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(store.last_good(), None);
        store.save_last_good(b"x: 1\n").unwrap();
        assert_eq!(store.last_good().unwrap(), b"x: 1\n");
        fs::remove_dir_all(&root).unwrap();
    }
}
