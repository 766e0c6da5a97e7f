//! The log both binaries write: one line per record on stderr (journald, the appliance console and kubelet keep
//! the time), the level from `POLAREDGE_LOG` (`debug`, `info`, `warn`, `error`; default info, which init passes
//! on from the kernel command line), and with `POLAREDGE_LOG_FORMAT=json` one JSON object per line (ts, level,
//! target, msg) for log pipelines.

use std::sync::OnceLock;

/// The environment variable that sets the level.
pub const LEVEL_ENV: &str = "POLAREDGE_LOG";
/// The environment variable that selects JSON lines (`json`).
pub const FORMAT_ENV: &str = "POLAREDGE_LOG_FORMAT";

/// How a record becomes a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `program LEVEL: message`.
    Text,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`.
    Json,
}

/// The level a `POLAREDGE_LOG` value names; anything else is info.
pub fn level(value: Option<&str>) -> log::LevelFilter {
    match value {
        Some("debug") => log::LevelFilter::Debug,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    }
}

/// One record as a line (without the newline); `ts` is seconds since the Unix epoch.
pub fn line(format: Format, program: &str, level: log::Level, target: &str, message: &str, ts: f64) -> String {
    match format {
        Format::Text => format!("{program} {level}: {message}"),
        Format::Json => {
            serde_json::json!({"ts": ts, "level": level.as_str(), "target": target, "msg": message}).to_string()
        }
    }
}

struct Stderr {
    program: &'static str,
    format: Format,
}

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let message = record.args().to_string();
        eprintln!("{}", line(self.format, self.program, record.level(), record.target(), &message, ts.as_secs_f64()));
    }

    fn flush(&self) {}
}

/// Installs the logger for `program` (e.g. `polaredge-agent`) from the environment; a second call changes
/// nothing.
pub fn init(program: &'static str) {
    static LOGGER: OnceLock<Stderr> = OnceLock::new();
    let format = match std::env::var(FORMAT_ENV).as_deref() {
        Ok("json") => Format::Json,
        _ => Format::Text,
    };
    let logger = LOGGER.get_or_init(|| Stderr { program, format });
    let level = level(std::env::var(LEVEL_ENV).ok().as_deref());
    let _ = log::set_logger(logger).map(|()| log::set_max_level(level));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_both_line_formats() {
        assert_eq!(level(Some("debug")), log::LevelFilter::Debug);
        assert_eq!(level(Some("error")), log::LevelFilter::Error);
        assert_eq!(level(Some("loud")), log::LevelFilter::Info);
        assert_eq!(level(None), log::LevelFilter::Info);
        let text = line(Format::Text, "polaredge-agent", log::Level::Warn, "agent", "disk \"full\"", 1.5);
        assert_eq!(text, "polaredge-agent WARN: disk \"full\"");
        let json = line(Format::Json, "polaredge-client", log::Level::Info, "client::run", "a\nb \"c\"", 1.5);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"ts": 1.5, "level": "INFO", "target": "client::run", "msg": "a\nb \"c\""})
        );
    }
}
