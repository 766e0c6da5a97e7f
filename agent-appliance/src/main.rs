//! polaredge-agent: the edge half of POLAREDGE, one static binary. The code lives in the library (module map
//! in lib.rs); this is the entry point: PID 1 of the appliance image, or the command line.

use polaredge_agent::{cli, init, logger};

fn main() -> std::process::ExitCode {
    logger::init();
    if init::is_pid1() {
        init::main();
    }
    cli::main(std::env::args().skip(1).collect())
}
