//! A minimal `log` backend: one line per record on stderr (journald and the appliance console keep time).

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("polaredge-agent {}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger; `POLAREDGE_LOG=debug|info|warn|error` sets the level (default info).
pub fn init() {
    static LOGGER: Stderr = Stderr;
    let level = match std::env::var("POLAREDGE_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    };
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(level));
}
