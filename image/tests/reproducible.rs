//! The initramfs is reproducible (same inputs, same bytes, wherever the inputs live), and Debian's own cpio
//! reads both of its archives with the expected members, modes and owners.

use polaredge_image::{build_initramfs, default_modules, Inputs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn kernel_dir() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-kernel.sh");
    let out = Command::new(script).arg("x86_64").stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "fetch-kernel.sh x86_64 failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Agent, Traefik stand-in and config written under `dir`.
fn inputs_in(dir: &Path, kernel_dir: &Path) -> Inputs {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    // Any executable bytes do for the agent here: the builder copies them. This test's binary is handy.
    std::fs::copy(std::env::current_exe().unwrap(), dir.join("agent")).unwrap();
    std::fs::write(dir.join("traefik"), b"#!/bin/sh\necho traefik stand-in\n").unwrap();
    std::fs::write(dir.join("config/agent.yaml"), "wireguard: {private_key_file: agent.key, client_public_key: x}\n")
        .unwrap();
    std::fs::write(dir.join("config/agent.key"), "not a real key\n").unwrap();
    Inputs {
        kernel_dir: kernel_dir.to_path_buf(),
        agent: dir.join("agent"),
        traefik: Some(dir.join("traefik")),
        config_dir: Some(dir.join("config")),
        modules: default_modules("x86_64"),
        ca_bundle: None,
        compress_traefik: false,
        mtime: 0,
    }
}

fn cpio_list(archive: &[u8], gzipped: bool) -> String {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(if gzipped { "gzip -dc | cpio -itv --quiet" } else { "cpio -itv --quiet" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = archive.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    assert!(out.status.success(), "cpio: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn same_inputs_give_the_same_bytes_and_cpio_reads_them() {
    let kernel = kernel_dir();
    let base = std::env::temp_dir().join(format!("pe-image-repro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (a, b) = (inputs_in(&base.join("a"), &kernel), inputs_in(&base.join("b/elsewhere"), &kernel));
    let first = build_initramfs(&a).unwrap();
    let again = build_initramfs(&a).unwrap();
    let moved = build_initramfs(&b).unwrap();
    assert_eq!(first.bytes, again.bytes, "two builds from the same inputs");
    assert_eq!(first.bytes, moved.bytes, "the same inputs in another folder");
    let later = build_initramfs(&Inputs { mtime: 1_700_000_000, ..a.clone() }).unwrap();
    assert_ne!(first.bytes, later.bytes, "SOURCE_DATE_EPOCH is part of the input");
    std::fs::write(
        base.join("a/config/agent.yaml"),
        "wireguard: {private_key_file: agent.key, client_public_key: y}\n",
    )
    .unwrap();
    assert_ne!(build_initramfs(&a).unwrap().bytes, first.bytes, "a changed config changes the image");

    // Debian's cpio reads the base archive (gzip) and, after the padding, the Traefik archive.
    let listing = cpio_list(&first.bytes[..first.base_len], true);
    for (mode, name) in [
        ("-rwxr-xr-x", " init"),
        ("crw-------", " dev/console"),
        ("-rw-------", " etc/polaredge/agent.key"),
        ("-rw-r--r--", " etc/polaredge/agent.yaml"),
        ("-rw-r--r--", " etc/polaredge/modules"),
        ("-rw-r--r--", " lib/modules/virtio_net.ko"),
        ("-rw-r--r--", " lib/modules/net_failover.ko"),
        ("lrwxrwxrwx", " usr/bin/polaredge-agent -> /init"),
        ("drwxr-xr-x", " var/lib/polaredge"),
    ] {
        let line = listing.lines().find(|l| l.ends_with(name)).unwrap_or_else(|| panic!("{name} missing:\n{listing}"));
        assert!(line.starts_with(mode), "{name}: {line}");
        assert!(line.contains(" root     root "), "{name} owned by root: {line}");
        assert!(line.contains("1970"), "{name} has the fixed time: {line}");
    }
    let traefik_at = first.base_len.next_multiple_of(512);
    assert!(first.bytes[first.base_len..traefik_at].iter().all(|b| *b == 0), "zero padding between archives");
    let listing = cpio_list(&first.bytes[traefik_at..], false);
    assert!(listing.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" usr/bin/traefik")), "{listing}");

    // Modules load dependencies first.
    let order = &first.modules;
    let at = |m: &str| order.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} not in {order:?}"));
    assert!(at("virtio") < at("virtio_pci") && at("failover") < at("net_failover"));
    assert!(at("net_failover") < at("virtio_net") && at("virtio_ring") < at("virtio"));
    let _ = std::fs::remove_dir_all(&base);
}
