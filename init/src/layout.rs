//! The paths of the appliance image that the image builder writes and init reads: one definition for both
//! (image/ depends on this crate for them).

/// The agent's config inside the image (the kernel command line's `polaredge.config=` overrides it).
pub const AGENT_CONFIG: &str = "/etc/polaredge/agent.yaml";
/// Where the image keeps the kernel modules, flat (`<name>.ko`).
pub const MODULES_DIR: &str = "/lib/modules";
/// The modules to load at boot, one name per line, dependencies first.
pub const MODULES_LIST: &str = "/etc/polaredge/modules";
