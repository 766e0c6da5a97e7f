//! An address with a prefix length (`10.88.0.1/30`, `fd88::1/64`): how a tunnel's configuration names its own
//! addresses and its peers' (WireGuard's AllowedIPs), in std types, so users of the library need not know the
//! TCP/IP stack underneath.

use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

/// Why a text or a prefix length is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// No `/prefix`.
    NoPrefix,
    /// The part before `/` is not an IP address.
    Address(String),
    /// The prefix is not a number up to 32 (IPv4) or 128 (IPv6).
    Prefix(String),
}

impl std::fmt::Display for CidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CidrError::NoPrefix => write!(f, "no /prefix (write e.g. 10.88.0.1/30)"),
            CidrError::Address(text) => write!(f, "{text:?} is not an IP address"),
            CidrError::Prefix(text) => write!(f, "prefix /{text} is not 0..=32 (IPv4) or 0..=128 (IPv6)"),
        }
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// `address/prefix`; the prefix is at most 32 for IPv4 and 128 for IPv6.
    pub fn new(address: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::Prefix(prefix.to_string()));
        }
        Ok(Cidr { address, prefix })
    }

    /// `address` alone: /32 for IPv4, /128 for IPv6.
    pub fn host(address: IpAddr) -> Cidr {
        Cidr { address, prefix: if address.is_ipv4() { 32 } else { 128 } }
    }

    /// The address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `address` is in this subnet.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// Whether `address` can be a host of this subnet: inside it, and for IPv4 subnets larger than /31 neither
    /// its network nor its broadcast address (10.88.0.0 and 10.88.0.3 in a /30).
    pub fn has_host(&self, address: IpAddr) -> bool {
        if !self.contains(address) {
            return false;
        }
        match address {
            IpAddr::V4(a) if self.prefix < 31 => {
                let host_bits = u32::MAX >> self.prefix;
                let host = u32::from(a) & host_bits;
                host != 0 && host != host_bits
            }
            _ => true,
        }
    }

    /// The stack's form.
    pub(crate) fn to_stack(self) -> smoltcp::wire::IpCidr {
        smoltcp::wire::IpCidr::new(self.address.into(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let (address, prefix) = text.split_once('/').ok_or(CidrError::NoPrefix)?;
        let address: IpAddr = address.parse().map_err(|_| CidrError::Address(address.to_string()))?;
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Prefix(prefix.to_string()))?;
        Cidr::new(address, prefix)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        let v4: Cidr = "10.88.0.1/30".parse().unwrap();
        assert_eq!((v4.address(), v4.prefix_len()), (ip("10.88.0.1"), 30));
        assert_eq!(v4.to_string(), "10.88.0.1/30");
        let v6: Cidr = "fd88::1/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd88::1/64");
        assert_eq!(v4.to_stack(), "10.88.0.1/30".parse().unwrap());
        assert_eq!("10.88.0.1".parse::<Cidr>(), Err(CidrError::NoPrefix));
        assert_eq!("10.88.0/30".parse::<Cidr>(), Err(CidrError::Address("10.88.0".into())));
        assert_eq!("10.88.0.1/33".parse::<Cidr>(), Err(CidrError::Prefix("33".into())));
        assert_eq!("fd88::1/129".parse::<Cidr>(), Err(CidrError::Prefix("129".into())));
        assert_eq!("10.88.0.1/x".parse::<Cidr>(), Err(CidrError::Prefix("x".into())));
        assert_eq!(Cidr::host(ip("fd88::2")).to_string(), "fd88::2/128");
    }

    #[test]
    fn membership_and_usable_hosts() {
        let net: Cidr = "10.88.0.1/30".parse().unwrap();
        assert!(net.contains(ip("10.88.0.0")) && net.contains(ip("10.88.0.3")));
        assert!(!net.contains(ip("10.88.0.4")) && !net.contains(ip("fd88::1")));
        assert!(net.has_host(ip("10.88.0.2")));
        assert!(!net.has_host(ip("10.88.0.0")), "the network address");
        assert!(!net.has_host(ip("10.88.0.3")), "the broadcast address");
        let pair: Cidr = "10.88.0.0/31".parse().unwrap();
        assert!(pair.has_host(ip("10.88.0.0")) && pair.has_host(ip("10.88.0.1")), "a /31 has two hosts");
        assert!(Cidr::new(ip("0.0.0.0"), 0).unwrap().contains(ip("192.0.2.1")));
        let v6: Cidr = "fd88::1/64".parse().unwrap();
        assert!(v6.has_host(ip("fd88::ffff")) && !v6.contains(ip("fd89::1")));
    }
}
