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

/// Parses the `.modinfo` section of a 64-bit little-endian ELF module (x86_64 and aarch64 kernels).
pub fn parse(elf: &[u8]) -> Result<ModInfo, String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let truncated = || "truncated ELF section table".to_string();
    let shoff = read_u64(elf, 0x28).ok_or_else(truncated)?;
    let shentsize = read_u16(elf, 0x3a).ok_or_else(truncated)?;
    let shnum = read_u16(elf, 0x3c).ok_or_else(truncated)?;
    let shstrndx = read_u16(elf, 0x3e).ok_or_else(truncated)?;
    let section = |i: usize| -> Option<(usize, &[u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = read_u32(elf, h)?;
        let (offset, size) = (read_u64(elf, h + 0x18)?, read_u64(elf, h + 0x20)?);
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx).ok_or_else(truncated)?;
    let modinfo = (0..shnum)
        .filter_map(section)
        .find(|(name, _)| names.get(*name..).and_then(|n| n.split(|b| *b == 0).next()) == Some(b".modinfo"))
        .map(|(_, data)| data)
        .ok_or("no .modinfo section: not a kernel module")?;
    let mut info = ModInfo { name: String::new(), depends: vec![] };
    for field in modinfo.split(|b| *b == 0).filter_map(|f| std::str::from_utf8(f).ok()) {
        if let Some(name) = field.strip_prefix("name=") {
            info.name = name.to_string();
        } else if let Some(deps) = field.strip_prefix("depends=") {
            info.depends = deps.split(',').filter(|d| !d.is_empty()).map(normalize).collect();
        }
    }
    if info.name.is_empty() {
        return Err(".modinfo has no name= field".into());
    }
    Ok(info)
}

/// The closure of `wanted` under `depends`, dependencies before dependents, otherwise in the order asked.
/// `lookup` gives a module's dependencies, or an error if the module does not exist.
pub fn load_order(
    wanted: &[String],
    mut lookup: impl FnMut(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        lookup: &mut dyn FnMut(&str) -> Result<Vec<String>, String>,
        state: &mut BTreeMap<String, bool>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => return Err(format!("module dependency cycle: {} -> {name}", path.join(" -> "))),
            None => {}
        }
        state.insert(name.to_string(), false);
        path.push(name.to_string());
        for dep in lookup(name).map_err(|e| format!("{e} (needed by {})", path.join(" -> ")))? {
            visit(&dep, lookup, state, order, path)?;
        }
        path.pop();
        state.insert(name.to_string(), true);
        order.push(name.to_string());
        Ok(())
    }
    let (mut state, mut order) = (BTreeMap::new(), vec![]);
    for name in wanted {
        visit(&normalize(name), &mut lookup, &mut state, &mut order, &mut vec![])?;
    }
    Ok(order)
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
        assert!(load_order(&["a".into()], deps).unwrap_err().contains("cycle: a -> b -> a"));
        assert!(load_order(&["virtio_nett".into()], deps).unwrap_err().contains("no module virtio_nett"));
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        assert!(parse(b"hello").unwrap_err().contains("not a 64-bit"));
    }
}
