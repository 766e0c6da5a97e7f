//! The admin socket: a root-only Unix socket where `polaredge-agent status` reads the live state.

use crate::agent::Agent;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Binds the socket (mode 0600) and answers each connection with the status JSON.
pub fn spawn(path: &Path, agent: Arc<Agent>) -> Result<(), String> {
    let _ = std::fs::remove_file(path); // a stale socket from a previous run
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot bind admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for mut conn in listener.incoming().map_while(Result::ok) {
                let mut text = serde_json::to_string_pretty(&agent.status()).unwrap_or_default();
                text.push('\n');
                let _ = conn.write_all(text.as_bytes());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads the status from a running agent.
pub fn read(path: &Path) -> Result<String, String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot reach the agent at {}: {e} (is it running? are you root?)", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut conn, &mut text).map_err(|e| e.to_string())?;
    Ok(text)
}
