//! The system calls of early boot and of the end: mounts, kernel modules, reaping, and power off.

use rustix::mount::{mount, MountFlags};
use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::layout::{MODULES_DIR, MODULES_LIST};

fn with_context<T>(result: rustix::io::Result<T>, what: impl FnOnce() -> String) -> io::Result<T> {
    result.map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", what())))
}

/// How long a device (disk node, network interface) may take to appear after its driver loaded.
pub const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The open-files limit PID 1 sets for itself and the agent: the kernel's default `fs.nr_open`.
pub const OPEN_FILES_LIMIT: u64 = 1 << 20;

/// Waits until `path` exists or `timeout` passes; whether it exists.
pub fn wait_for_path(path: &Path, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /run and /tmp. Already-mounted targets are fine.
pub fn mount_basics() -> io::Result<()> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for (source, target, fstype, flags, data) in [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        ("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, "mode=0755"),
        ("devpts", "/dev/pts", "devpts", MountFlags::NOSUID | MountFlags::NOEXEC, "mode=0620,ptmxmode=0666"),
        ("tmpfs", "/run", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, "mode=1777"),
    ] {
        std::fs::create_dir_all(target).map_err(|e| io::Error::new(e.kind(), format!("creating {target}: {e}")))?;
        let data = CString::new(data).expect("no NUL in mount options");
        match mount(source, target, fstype, flags, Some(data.as_c_str())) {
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(e) => return with_context(Err(e), || format!("mounting {fstype} on {target}")),
        }
    }
    Ok(())
}

/// Gives the agent a writable state folder: the ext4 `device` when given (persistent), else a tmpfs.
pub fn mount_state(state_dir: &Path, device: Option<&str>) -> io::Result<String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", state_dir.display())))?;
    match device {
        Some(device) => {
            // The device node appears once its driver (virtio_blk) has probed it.
            wait_for_path(Path::new(device), DEVICE_WAIT);
            let none: Option<&std::ffi::CStr> = None;
            with_context(mount(device, state_dir, "ext4", MountFlags::NOSUID | MountFlags::NODEV, none), || {
                format!(
                    "mounting {device} (ext4) on {}; format it with mkfs.ext4 or drop polaredge.state=",
                    state_dir.display()
                )
            })?;
            Ok(format!("{device} (ext4, persistent)"))
        }
        None => {
            let data = CString::new("mode=0700").expect("no NUL");
            with_context(
                mount("tmpfs", state_dir, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, Some(data.as_c_str())),
                || format!("mounting a tmpfs on {}", state_dir.display()),
            )?;
            Ok("tmpfs (lost at power off; polaredge.state=DEVICE keeps it)".into())
        }
    }
}

/// The modules to load: the image's list, then `extra`.
pub fn module_list(extra: &[String]) -> io::Result<Vec<String>> {
    let listed = match std::fs::read_to_string(MODULES_LIST) {
        Ok(text) => {
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {MODULES_LIST}: {e}"))),
    };
    Ok(listed.into_iter().chain(extra.iter().cloned()).collect())
}

/// Loads one module from MODULES_DIR; a module already loaded (or built in) is fine.
pub fn load_module(name: &str) -> io::Result<()> {
    let path = Path::new(MODULES_DIR).join(format!("{name}.ko"));
    let file = std::fs::File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("module {name}: cannot open {}: {e}; rebuild the image with it", path.display()),
        )
    })?;
    match rustix::system::finit_module(&file, c"", 0) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => with_context(Err(e), || format!("loading module {name} ({}); see dmesg above", path.display())),
    }
}

/// Reaps every exited child; returns the pids and how they ended.
pub fn reap() -> Vec<(u32, String)> {
    let mut ended = vec![];
    while let Ok(Some((pid, status))) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {
        let how = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (_, Some(signal)) => format!("signal {signal}"),
            _ => "ended".into(),
        };
        ended.push((pid.as_raw_nonzero().get() as u32, how));
    }
    ended
}

/// The last step: flush, end what is left, unmount the state folder, power off or reboot.
pub fn finish(power: super::lifecycle::Power, state_dir: &Path) -> ! {
    rustix::fs::sync();
    // Stray processes (there should be none: the agent took Traefik down) get TERM, then KILL. kill(-1)
    // reaches every process but PID 1; rustix has no call for it.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let _ = reap();
    let _ = rustix::mount::unmount(state_dir, rustix::mount::UnmountFlags::empty());
    rustix::fs::sync();
    let command = match power {
        super::lifecycle::Power::Off => rustix::system::RebootCommand::PowerOff,
        super::lifecycle::Power::Reboot => rustix::system::RebootCommand::Restart,
    };
    let error = rustix::system::reboot(command).err();
    super::say(&format!("reboot({command:?}) failed: {error:?}; halting"));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    const ISOLATED: &str = "POLAREDGE_REAP_TEST_CHILD";

    /// `reap` collects exited children and orphans handed to us. PID 1 gets orphans by being init; here the
    /// test process becomes a child subreaper instead. It runs in a fresh copy of the test binary, because
    /// waitpid(-1) would also collect other tests' children.
    #[test]
    fn reap_collects_children_and_orphans() {
        if std::env::var_os(ISOLATED).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "system::tests::reap_collects_children_and_orphans", "--test-threads=1"])
                .env(ISOLATED, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && text.contains("1 passed"), "isolated run failed:\n{text}");
            return;
        }
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        // The shell starts a sleeper in the background and exits: the sleeper is orphaned to us. Both are
        // waited for by `reap` (the code under test), not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut text = String::new();
        shell.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        let orphan: u32 = text.trim().parse().unwrap();
        let mut ended = vec![];
        let deadline = Instant::now() + Duration::from_secs(5);
        while ended.len() < 2 && Instant::now() < deadline {
            ended.extend(reap());
            std::thread::sleep(Duration::from_millis(20));
        }
        ended.sort();
        let mut expected = vec![(shell.id(), "exit status 0".to_string()), (orphan, "exit status 0".to_string())];
        expected.sort();
        assert_eq!(ended, expected);
    }
}
