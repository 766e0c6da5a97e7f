//! The appliance's console: a few commands typed on the serial or VGA console (there is no shell), and the
//! ACPI power button. Requests become signals to PID 1, so the init loop has one input.

use std::io::{BufRead, Read};

/// What the console understands.
pub const HELP: &str = "console commands: status | poweroff | reboot | retry (re-run a failed boot) | help";

/// What a console line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Print the agent's live state.
    Status,
    /// Stop everything and power off.
    Poweroff,
    /// Stop everything and reboot.
    Reboot,
    /// Run the boot steps again after a failure.
    Retry,
    /// Print the command list.
    Help,
}

/// A console line that is no command; its text says which commands there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCommand(pub String);

impl std::fmt::Display for UnknownCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown command {:?}; {HELP}", self.0)
    }
}

impl std::error::Error for UnknownCommand {}

/// Parses one console line; blank lines are `None`, unknown words are an error with the command list.
pub fn parse(line: &str) -> Option<Result<Command, UnknownCommand>> {
    Some(Ok(match line.trim() {
        "" => return None,
        "status" => Command::Status,
        "poweroff" | "halt" | "shutdown" => Command::Poweroff,
        "reboot" => Command::Reboot,
        "retry" => Command::Retry,
        "help" | "?" => Command::Help,
        other => return Some(Err(UnknownCommand(other.to_string()))),
    }))
}

/// Reads console lines until the console closes and hands each command to `on_command`.
pub fn spawn_reader(on_command: impl Fn(Command) + Send + 'static) {
    let _ = std::thread::Builder::new().name("console".into()).spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            match parse(&line) {
                None => {}
                Some(Ok(command)) => on_command(command),
                Some(Err(e)) => super::say(&e.to_string()),
            }
        }
    });
}

/// Watches every input device for a KEY_POWER press (the ACPI power button QEMU's `system_powerdown` and
/// cloud providers' "shut down" press) and calls `on_press`.
pub fn spawn_power_button(on_press: impl Fn() + Send + Sync + Clone + 'static) -> usize {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let Ok(entries) = std::fs::read_dir("/dev/input") else { return 0 };
    let mut watched = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let Ok(mut device) = std::fs::File::open(entry.path()) else { continue };
        let on_press = on_press.clone();
        watched += 1;
        let _ = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            // struct input_event: a timeval, then type u16, code u16, value i32.
            let size = std::mem::size_of::<libc::input_event>();
            let mut buf = vec![0u8; size];
            while device.read_exact(&mut buf).is_ok() {
                let kind = u16::from_ne_bytes([buf[size - 8], buf[size - 7]]);
                let code = u16::from_ne_bytes([buf[size - 6], buf[size - 5]]);
                let value = i32::from_ne_bytes([buf[size - 4], buf[size - 3], buf[size - 2], buf[size - 1]]);
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    on_press();
                }
            }
        });
    }
    watched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_mistakes() {
        assert_eq!(parse("  poweroff \r"), Some(Ok(Command::Poweroff)));
        assert_eq!(parse("reboot"), Some(Ok(Command::Reboot)));
        assert_eq!(parse("status"), Some(Ok(Command::Status)));
        assert_eq!(parse(""), None);
        let unknown = parse("sh").unwrap().unwrap_err();
        assert_eq!(unknown, UnknownCommand("sh".into()));
        assert!(unknown.to_string().contains("poweroff"), "{unknown}");
    }
}
