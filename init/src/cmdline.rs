//! The kernel command line, as the appliance's init reads it (pure parsing; no I/O).
//!
//! Debian's kernels have `CONFIG_IP_PNP` off, so the kernel itself ignores `ip=`: the init takes the same
//! syntax so operators can use what they know:
//!
//! ```text
//! ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>
//! ```
//!
//! `<client-ip>` may carry a prefix (`10.0.2.15/24`) instead of `<netmask>`. `ip=dhcp` (or `<autoconf>` `dhcp`,
//! with the device in its field: `ip=:::::eth1:dhcp`) asks a DHCP server instead. Unset fields take defaults:
//! device `eth0`, prefix /24. POLAREDGE's own parameters:
//!
//! - `polaredge.config=PATH`: the agent's config (default `/etc/polaredge/agent.yaml`).
//! - `polaredge.state=DEVICE`: an ext4 block device mounted on the state folder, so the last good routes and
//!   ACME certificates survive reboots (default: a tmpfs, fresh at every boot).
//! - `polaredge.modules=a,b`: modules to load after those listed in `/etc/polaredge/modules`.
//! - `polaredge.log=debug|info|warn|error`: the agent's log level.

use std::net::Ipv4Addr;

use crate::layout::AGENT_CONFIG;

/// Static IPv4 settings for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Settings {
    /// Interface name.
    pub device: String,
    /// The interface's address.
    pub address: Ipv4Addr,
    /// Prefix length of the on-link network.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Host name to set, if any.
    pub hostname: Option<String>,
    /// Name servers for /etc/resolv.conf (Traefik needs them for ACME).
    pub dns: Vec<Ipv4Addr>,
}

/// How the init configures the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Fixed settings.
    Static(Ipv4Settings),
    /// Ask a DHCP server on the device.
    Dhcp {
        /// Interface name.
        device: String,
        /// Host name to set, if any.
        hostname: Option<String>,
    },
}

/// What the init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Network settings (`ip=`); none leaves only loopback up.
    pub ip: Option<Network>,
    /// The agent's config file.
    pub config: String,
    /// Block device for persistent state.
    pub state_device: Option<String>,
    /// Extra modules to load.
    pub modules: Vec<String>,
    /// The agent's log level.
    pub log: Option<String>,
}

/// Why the kernel command line was refused: the parameter, and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// `ip=` is malformed.
    Ip {
        /// The value after `ip=`.
        value: String,
        /// What is wrong with it.
        reason: IpError,
    },
    /// A `polaredge.*` parameter that needs a value has none.
    Empty(String),
    /// `polaredge.log=` names no log level.
    LogLevel(String),
    /// A `polaredge.*` parameter this init does not know (most likely a typo).
    Unknown(String),
}

/// What is wrong with an `ip=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpError {
    /// `bootp`, `rarp` or `both`: only static settings and DHCP are built in.
    NotBuiltIn,
    /// An autoconf method other than `off`, `none` or `dhcp`.
    Autoconf(String),
    /// A field that must be an IPv4 address is not one.
    Address {
        /// Which field: client address, gateway, netmask or name server.
        field: &'static str,
        /// Its text.
        text: String,
    },
    /// A `/prefix` above 32 or not a number.
    Prefix(String),
    /// A netmask whose ones are not contiguous.
    Netmask(String),
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamError::Ip { value, reason } => write!(f, "kernel parameter ip={value}: {reason}"),
            ParamError::Empty(key) => write!(f, "kernel parameter {key} needs a value"),
            ParamError::LogLevel(value) => {
                write!(f, "kernel parameter polaredge.log={value}: use debug, info, warn or error")
            }
            ParamError::Unknown(key) => write!(
                f,
                "unknown kernel parameter {key}; known: polaredge.config, polaredge.state, polaredge.modules, \
                 polaredge.log"
            ),
        }
    }
}

impl std::fmt::Display for IpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpError::NotBuiltIn => write!(f, "only static settings and dhcp are built in"),
            IpError::Autoconf(other) => write!(f, "autoconf {other:?} is not built in; use off or dhcp"),
            IpError::Address { field, text } => write!(f, "{field} {text:?} is not an IPv4 address"),
            IpError::Prefix(prefix) => write!(f, "prefix /{prefix} is not 0..=32"),
            IpError::Netmask(mask) => write!(f, "netmask {mask} is not contiguous"),
        }
    }
}

impl std::error::Error for ParamError {}
impl std::error::Error for IpError {}

impl BootParams {
    /// Parses `/proc/cmdline`. Unknown parameters belong to the kernel and are ignored; a malformed `ip=` or
    /// `polaredge.*` value is an error naming the parameter.
    pub fn parse(cmdline: &str) -> Result<BootParams, ParamError> {
        let mut params =
            BootParams { ip: None, config: AGENT_CONFIG.into(), state_device: None, modules: vec![], log: None };
        for word in cmdline.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "ip" => params.ip = parse_ip(value).map_err(|reason| ParamError::Ip { value: value.into(), reason })?,
                "polaredge.config" => params.config = non_empty(key, value)?.into(),
                "polaredge.state" => params.state_device = Some(non_empty(key, value)?.into()),
                "polaredge.modules" => {
                    params.modules.extend(value.split(',').filter(|m| !m.is_empty()).map(str::to_string))
                }
                "polaredge.log" => match value {
                    "debug" | "info" | "warn" | "error" => params.log = Some(value.into()),
                    _ => return Err(ParamError::LogLevel(value.into())),
                },
                k if k.starts_with("polaredge.") => return Err(ParamError::Unknown(k.into())),
                _ => {}
            }
        }
        Ok(params)
    }
}

fn non_empty<'a>(key: &str, value: &'a str) -> Result<&'a str, ParamError> {
    if value.is_empty() {
        Err(ParamError::Empty(key.into()))
    } else {
        Ok(value)
    }
}

fn parse_ip(value: &str) -> Result<Option<Network>, IpError> {
    let fields: Vec<&str> = value.split(':').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let hostname = Some(field(4)).filter(|h| !h.is_empty()).map(str::to_string);
    let device = Some(field(5)).filter(|d| !d.is_empty()).unwrap_or("eth0").to_string();
    match (fields.len(), field(0), field(6)) {
        (1, "off" | "none" | "", _) => return Ok(None),
        (1, "dhcp" | "on" | "any", _) | (_, _, "dhcp" | "on" | "any") => {
            return Ok(Some(Network::Dhcp { device, hostname }))
        }
        (1, "bootp" | "rarp" | "both", _) => return Err(IpError::NotBuiltIn),
        (_, _, "" | "off" | "none") => {}
        (_, _, other) => return Err(IpError::Autoconf(other.into())),
    }
    let parse_addr = |field: &'static str, text: &str| -> Result<Ipv4Addr, IpError> {
        text.parse().map_err(|_| IpError::Address { field, text: text.into() })
    };
    let (address, mut prefix) = match field(0).split_once('/') {
        Some((a, p)) => {
            let p: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| IpError::Prefix(p.into()))?;
            (parse_addr("client address", a)?, Some(p))
        }
        None => (parse_addr("client address", field(0))?, None),
    };
    let gateway = match field(2) {
        "" => None,
        g => Some(parse_addr("gateway", g)?),
    };
    if !field(3).is_empty() {
        let mask = u32::from(parse_addr("netmask", field(3))?);
        if mask.leading_ones() + mask.trailing_zeros() != 32 {
            return Err(IpError::Netmask(field(3).into()));
        }
        prefix = Some(mask.leading_ones() as u8);
    }
    let dns = [field(7), field(8)]
        .into_iter()
        .filter(|d| !d.is_empty())
        .map(|d| parse_addr("name server", d))
        .collect::<Result<_, _>>()?;
    Ok(Some(Network::Static(Ipv4Settings { device, address, prefix: prefix.unwrap_or(24), gateway, hostname, dns })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_ip_syntax_with_a_netmask_or_a_prefix() {
        let p = BootParams::parse("console=ttyS0 ip=10.0.2.15::10.0.2.2:255.255.255.0:edge:eth0:off:10.0.2.3 quiet")
            .unwrap();
        assert_eq!(
            p.ip,
            Some(Network::Static(Ipv4Settings {
                device: "eth0".into(),
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                hostname: Some("edge".into()),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }))
        );
        let p = BootParams::parse("ip=192.0.2.7/28::192.0.2.1").unwrap();
        let Some(Network::Static(ip)) = p.ip else { panic!("static") };
        assert_eq!((ip.prefix, ip.device.as_str(), ip.hostname, ip.dns.len()), (28, "eth0", None, 0));
        assert_eq!(BootParams::parse("ip=off").unwrap().ip, None);
        assert_eq!(
            BootParams::parse("ip=dhcp").unwrap().ip,
            Some(Network::Dhcp { device: "eth0".into(), hostname: None })
        );
        assert_eq!(
            BootParams::parse("ip=::::edge:eth1:dhcp").unwrap().ip,
            Some(Network::Dhcp { device: "eth1".into(), hostname: Some("edge".into()) })
        );
    }

    #[test]
    fn polaredge_parameters_and_defaults() {
        let p = BootParams::parse("root=/dev/sda polaredge.state=/dev/vda polaredge.modules=a,b, polaredge.log=debug")
            .unwrap();
        assert_eq!(p.config, AGENT_CONFIG);
        assert_eq!(p.state_device.as_deref(), Some("/dev/vda"));
        assert_eq!(p.modules, ["a", "b"]);
        assert_eq!(p.log.as_deref(), Some("debug"));
        assert_eq!(BootParams::parse("polaredge.config=/x.yaml").unwrap().config, "/x.yaml");
    }

    #[test]
    fn malformed_values_name_the_parameter() {
        let ip = |value: &str, reason| ParamError::Ip { value: value.into(), reason };
        let address = |field, text: &str| IpError::Address { field, text: text.into() };
        for (line, expect, text) in [
            ("ip=10.0.2", ip("10.0.2", address("client address", "10.0.2")), "ip=10.0.2: client address"),
            ("ip=10.0.2.15/33", ip("10.0.2.15/33", IpError::Prefix("33".into())), "prefix /33 is not 0..=32"),
            (
                "ip=10.0.2.15:::255.0.255.0",
                ip("10.0.2.15:::255.0.255.0", IpError::Netmask("255.0.255.0".into())),
                "not contiguous",
            ),
            ("ip=bootp", ip("bootp", IpError::NotBuiltIn), "only static settings and dhcp"),
            ("ip=10.0.2.15::::::rarp", ip("10.0.2.15::::::rarp", IpError::Autoconf("rarp".into())), "autoconf"),
            ("polaredge.state=", ParamError::Empty("polaredge.state".into()), "polaredge.state needs a value"),
            ("polaredge.log=loud", ParamError::LogLevel("loud".into()), "polaredge.log=loud: use debug"),
            (
                "polaredge.confg=/x",
                ParamError::Unknown("polaredge.confg".into()),
                "unknown kernel parameter polaredge.confg",
            ),
        ] {
            let err = BootParams::parse(line).unwrap_err();
            assert_eq!(err, expect, "{line}");
            assert!(err.to_string().contains(text), "{line}: {err}");
        }
    }
}
