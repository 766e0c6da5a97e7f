//! Reads a kernel module's `.modinfo` section (its `name=` and `depends=`) from the ELF file, and orders a
//! set of modules so every dependency loads first. Debian's kernel packages ship no modules.dep that the
//! image could use without depmod, and the init loads modules one by one with finit_module.

use std::collections::BTreeMap;

/// The module's own name and the modules it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (underscores; file names may use dashes).
    pub name: String,
    /// `depends=`, comma separated in the file.
    pub depends: Vec<String>,
}

/// Module names use `_` where file names may have `-`.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

fn read_u16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}
fn read_u32(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}
fn read_u64(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

/// Why a file is not a kernel module this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModInfoError {
    /// Not a 64-bit little-endian ELF file.
    NotElf64,
    /// The section table or a section lies beyond the end of the file.
    Truncated,
    /// No `.modinfo` section: not a kernel module.
    NoModinfo,
    /// `.modinfo` has no `name=` field.
    NoName,
}

impl std::fmt::Display for ModInfoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModInfoError::NotElf64 => "not a 64-bit little-endian ELF file",
            ModInfoError::Truncated => "truncated ELF section table",
            ModInfoError::NoModinfo => "no .modinfo section: not a kernel module",
            ModInfoError::NoName => ".modinfo has no name= field",
        })
    }
}

impl std::error::Error for ModInfoError {}

/// Why no load order exists for the modules asked for.
#[derive(Debug)]
pub enum OrderError<E> {
    /// The modules depend on each other in a circle, as listed (the first name repeated at the end).
    Cycle(Vec<String>),
    /// Looking up a module failed; `chain` is the path of dependencies that led to it, the module last.
    Lookup {
        /// From a module asked for to the one that failed.
        chain: Vec<String>,
        /// What the lookup said.
        error: E,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for OrderError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Cycle(chain) => write!(f, "module dependency cycle: {}", chain.join(" -> ")),
            OrderError::Lookup { chain, error } => write!(f, "{error} (needed by {})", chain.join(" -> ")),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for OrderError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OrderError::Cycle(_) => None,
            OrderError::Lookup { error, .. } => Some(error),
        }
    }
}

/// Parses the `.modinfo` section of a 64-bit little-endian ELF module (x86_64 and aarch64 kernels).
pub fn parse(elf: &[u8]) -> Result<ModInfo, ModInfoError> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(ModInfoError::NotElf64);
    }
    let truncated = ModInfoError::Truncated;
    let shoff = read_u64(elf, 0x28).ok_or(truncated)?;
    let shentsize = read_u16(elf, 0x3a).ok_or(truncated)?;
    let shnum = read_u16(elf, 0x3c).ok_or(truncated)?;
    let shstrndx = read_u16(elf, 0x3e).ok_or(truncated)?;
    let section = |i: usize| -> Option<(usize, &[u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = read_u32(elf, h)?;
        let (offset, size) = (read_u64(elf, h + 0x18)?, read_u64(elf, h + 0x20)?);
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx).ok_or(truncated)?;
    let modinfo = (0..shnum)
        .filter_map(section)
        .find(|(name, _)| names.get(*name..).and_then(|n| n.split(|b| *b == 0).next()) == Some(b".modinfo"))
        .map(|(_, data)| data)
        .ok_or(ModInfoError::NoModinfo)?;
    let mut info = ModInfo { name: String::new(), depends: vec![] };
    for field in modinfo.split(|b| *b == 0).filter_map(|f| std::str::from_utf8(f).ok()) {
        if let Some(name) = field.strip_prefix("name=") {
            info.name = name.to_string();
        } else if let Some(deps) = field.strip_prefix("depends=") {
            info.depends = deps.split(',').filter(|d| !d.is_empty()).map(normalize).collect();
        }
    }
    if info.name.is_empty() {
        return Err(ModInfoError::NoName);
    }
    Ok(info)
}

/// The closure of `wanted` under `depends`, dependencies before dependents, otherwise in the order asked.
/// `lookup` gives a module's dependencies, or an error if the module does not exist.
pub fn load_order<E>(
    wanted: &[String],
    mut lookup: impl FnMut(&str) -> Result<Vec<String>, E>,
) -> Result<Vec<String>, OrderError<E>> {
    /// Where a module is in the depth-first walk.
    struct Walk<'a, E> {
        lookup: &'a mut dyn FnMut(&str) -> Result<Vec<String>, E>,
        /// `false` while its dependencies are visited, `true` once it is in `order`.
        state: BTreeMap<String, bool>,
        order: Vec<String>,
        path: Vec<String>,
    }
    impl<E> Walk<'_, E> {
        fn visit(&mut self, name: &str) -> Result<(), OrderError<E>> {
            match self.state.get(name) {
                Some(true) => return Ok(()),
                Some(false) => {
                    let mut chain = self.path.clone();
                    chain.push(name.to_string());
                    return Err(OrderError::Cycle(chain));
                }
                None => {}
            }
            self.state.insert(name.to_string(), false);
            self.path.push(name.to_string());
            let depends =
                (self.lookup)(name).map_err(|error| OrderError::Lookup { chain: self.path.clone(), error })?;
            for dep in depends {
                self.visit(&dep)?;
            }
            self.path.pop();
            self.state.insert(name.to_string(), true);
            self.order.push(name.to_string());
            Ok(())
        }
    }
    let mut walk = Walk { lookup: &mut lookup, state: BTreeMap::new(), order: vec![], path: vec![] };
    for name in wanted {
        walk.visit(&normalize(name))?;
    }
    Ok(walk.order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_once_and_cycles_are_reported() {
        let deps = |m: &str| -> Result<Vec<String>, String> {
            Ok(match m {
                "virtio_net" => vec!["net_failover".into(), "virtio".into()],
                "net_failover" => vec!["failover".into()],
                "virtio_pci" => vec!["virtio".into()],
                "virtio" | "failover" => vec![],
                "a" => vec!["b".into()],
                "b" => vec!["a".into()],
                other => return Err(format!("no module {other}")),
            })
        };
        let order = load_order(&["virtio-pci".into(), "virtio_net".into()], deps).unwrap();
        assert_eq!(order, ["virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]);
        let cycle = load_order(&["a".into()], deps).unwrap_err();
        assert!(matches!(&cycle, OrderError::Cycle(chain) if chain == &["a", "b", "a"]), "{cycle:?}");
        assert_eq!(cycle.to_string(), "module dependency cycle: a -> b -> a");
        let missing = load_order(&["virtio_nett".into()], deps).unwrap_err();
        assert_eq!(missing.to_string(), "no module virtio_nett (needed by virtio_nett)");
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        assert_eq!(parse(b"hello"), Err(ModInfoError::NotElf64));
        let mut header = b"\x7fELF\x02\x01".to_vec();
        header.resize(0x30, 0);
        assert_eq!(parse(&header), Err(ModInfoError::Truncated));
    }
}
