//! polaredge-agent: the edge half of POLAREDGE, one static binary. The code lives in the library (module map
//! in lib.rs) and, for PID 1 of the appliance image, in the init crate; this is the entry point.

use polaredge_agent::{cli, config};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The agent as init's payload: the same binary, run again as `polaredge-agent run`.
struct Agent;

impl init::Payload for Agent {
    fn name(&self) -> String {
        format!("polaredge-agent {}", env!("CARGO_PKG_VERSION"))
    }

    fn state_dir(&self, config: &Path) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
        Ok(config::load(config)?.state_dir)
    }

    fn run(&self, config: &Path) -> Command {
        let mut command = Command::new("/proc/self/exe");
        command.arg0("polaredge-agent").arg("run").arg("--config").arg(config);
        command
    }

    fn status(&self, config: &Path) -> Command {
        let mut command = Command::new("/proc/self/exe");
        command.arg0("polaredge-agent").arg("status").arg("--config").arg(config);
        command
    }
}

fn main() -> std::process::ExitCode {
    protocol::logging::init("polaredge-agent");
    if init::is_pid1() {
        init::main(&Agent);
    }
    cli::main(std::env::args().skip(1).collect())
}
