//! A writer for the "newc" cpio format the kernel unpacks as an initramfs (Documentation/driver-api/
//! early-userspace/buffer-format.rst). Deterministic by construction: entries are written sorted by path,
//! with parents first, owner root, one fixed modification time and inode numbers in order; no I/O.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its bytes.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (major, minor), e.g. /dev/console, which the kernel opens before /init runs.
    CharDevice(u32, u32),
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    node: Node,
    /// Permission bits.
    mode: u32,
}

/// An archive being assembled; [`Archive::to_bytes`] writes it.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Why a member could not be added to an [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    /// The path is empty or has an empty, `.` or `..` component.
    BadPath(String),
    /// A parent folder of `path` is already a member that is not a directory.
    ParentNotDirectory {
        /// The member in the way.
        parent: String,
        /// The member being added.
        path: String,
    },
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::BadPath(path) => write!(f, "archive path {path:?} must be relative and normal"),
            ArchiveError::ParentNotDirectory { parent, path } => {
                write!(f, "{parent} is not a directory (needed for {path})")
            }
        }
    }
}

impl std::error::Error for ArchiveError {}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds `path` (relative, `/`-separated, no `.` or `..`); missing parent directories are added with mode
    /// 0755. A later add of the same path replaces the earlier one.
    pub fn add(&mut self, path: &str, node: Node, mode: u32) -> Result<(), ArchiveError> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(ArchiveError::BadPath(path.to_string()));
        }
        // Every prefix ending before a '/' is a parent directory, outermost first.
        for (slash, _) in path.match_indices('/') {
            let parent = &path[..slash];
            match self.entries.get(parent) {
                Some(Entry { node: Node::Dir, .. }) => {}
                Some(_) => {
                    return Err(ArchiveError::ParentNotDirectory { parent: parent.to_string(), path: path.to_string() })
                }
                None => {
                    self.entries.insert(parent.to_string(), Entry { node: Node::Dir, mode: 0o755 });
                }
            }
        }
        self.entries.insert(path.to_string(), Entry { node, mode: mode & 0o7777 });
        Ok(())
    }

    /// The archive in newc format, every member with the given modification time, ending with the trailer.
    pub fn to_bytes(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        // Sorting by path bytes puts every directory before its contents ("a" < "a/b").
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.node {
                Node::Dir => (0o040000, &[], (0, 0)),
                Node::File(bytes) => (0o100000, bytes, (0, 0)),
                Node::Symlink(target) => (0o120000, target.as_bytes(), (0, 0)),
                Node::CharDevice(major, minor) => (0o020000, &[], (*major, *minor)),
            };
            let nlink = if entry.node == Node::Dir { 2 } else { 1 };
            write_member(&mut out, index as u32 + 1, kind | entry.mode, nlink, mtime, rdev, path, data);
        }
        write_member(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn write_member(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [ino, mode, 0, 0, nlink, mtime, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_sorted_parents_first_and_padded() {
        let mut a = Archive::new();
        a.add("usr/bin/traefik", Node::File(b"abc".to_vec()), 0o755).unwrap();
        a.add("init", Node::File(vec![1, 2, 3, 4, 5]), 0o755).unwrap();
        a.add("dev/console", Node::CharDevice(5, 1), 0o600).unwrap();
        let bytes = a.to_bytes(0);
        assert_eq!(bytes.len() % 4, 0);
        let names: Vec<&str> = bytes
            .windows(6)
            .enumerate()
            .filter(|(i, w)| *w == b"070701" && i % 4 == 0)
            .map(|(i, _)| {
                let namesize =
                    usize::from_str_radix(std::str::from_utf8(&bytes[i + 94..i + 102]).unwrap(), 16).unwrap();
                std::str::from_utf8(&bytes[i + 110..i + 110 + namesize - 1]).unwrap()
            })
            .collect();
        assert_eq!(names, ["dev", "dev/console", "init", "usr", "usr/bin", "usr/bin/traefik", "TRAILER!!!"]);
        assert_eq!(a.to_bytes(0), bytes, "the same archive gives the same bytes");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut a = Archive::new();
        assert_eq!(a.add("../etc", Node::Dir, 0o755), Err(ArchiveError::BadPath("../etc".into())));
        assert_eq!(a.add("etc//x", Node::Dir, 0o755), Err(ArchiveError::BadPath("etc//x".into())));
        a.add("etc", Node::File(vec![]), 0o644).unwrap();
        let in_the_way = a.add("etc/x", Node::Dir, 0o755).unwrap_err();
        assert_eq!(in_the_way, ArchiveError::ParentNotDirectory { parent: "etc".into(), path: "etc/x".into() });
        assert_eq!(in_the_way.to_string(), "etc is not a directory (needed for etc/x)");
    }
}
