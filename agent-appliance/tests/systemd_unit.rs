//! The shipped systemd unit passes `systemd-analyze verify` (Debian's systemd 252), checked in a root folder
//! that holds the unit, the agent at its ExecStart path and the system's own units; a unit with a bad
//! directive is caught the same way, so the check can fail.

use std::path::Path;
use std::process::Command;

/// Runs `systemd-analyze verify` on `unit_text` installed as `name` in a fresh root; returns (success,
/// everything it printed).
fn verify(root: &Path, name: &str, unit_text: &str) -> (bool, String) {
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(units.join(name), unit_text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(format!("/etc/systemd/system/{name}"))
        .output()
        .expect("systemd-analyze (Debian's systemd) is installed by scripts/install-deps.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let root = std::env::temp_dir().join(format!("pe-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_polaredge-agent"), root.join("usr/local/bin/polaredge-agent")).unwrap();
    // The targets and services the unit refers to (network-online.target, multi-user.target, ...).
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let copied =
        Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(root.join("usr/lib/systemd/")).status();
    assert!(copied.unwrap().success(), "copying /usr/lib/systemd/system");

    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/polaredge-agent.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/polaredge-agent run"));
    let (ok, text) = verify(&root, "polaredge-agent.service", &unit);
    let about_ours: Vec<&str> = text.lines().filter(|l| l.contains("polaredge-agent")).collect();
    assert!(ok && about_ours.is_empty(), "systemd-analyze verify complains:\n{text}");

    let broken = unit.replace("Restart=always", "Restart=alwayz");
    let (_, text) = verify(&root, "broken.service", &broken);
    assert!(text.contains("broken.service:") && text.contains("alwayz"), "a bad directive is reported:\n{text}");
    std::fs::remove_file(root.join("usr/local/bin/polaredge-agent")).unwrap();
    let (ok, text) = verify(&root, "polaredge-agent.service", &unit);
    assert!(!ok && text.contains("not executable"), "a missing binary is reported:\n{text}");
    let _ = std::fs::remove_dir_all(&root);
}
