//! Network set-up for the appliance: loopback up, and one interface with a static IPv4 address, prefix and
//! default gateway, through the classic SIOC* ioctls (no `ip` binary in the image, and no netlink code to
//! carry for three operations), or with an address from DHCP ([`super::dhcp`] over a packet socket). Plus
//! /etc/resolv.conf and the host name.

use super::cmdline::Ipv4Settings;
use super::system::DEVICE_WAIT;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

fn control_socket() -> io::Result<OwnedFd> {
    rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None).map_err(io::Error::from)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the ioctls take addresses.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> io::Result<()> {
    // SAFETY: `arg` points to the struct the request expects (ifreq or rtentry), alive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Sets IFF_UP on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut req as *mut _ as *mut _, &format!("reading {name}'s flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut req as *mut _ as *mut _, &format!("bringing {name} up"))
}

/// Linux's `struct rtentry` (libc has it for musl only, and the init's unit tests build for glibc too).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// Waits for the interface, then gives it its address and prefix, brings it up and adds the default route.
pub fn configure(settings: &Ipv4Settings) -> io::Result<()> {
    let name = settings.device.as_str();
    wait_for_device(name)?;
    let fd = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(settings.address);
    ioctl(&fd, libc::SIOCSIFADDR, &mut req as *mut _ as *mut _, &format!("setting {name}'s address"))?;
    let mask = if settings.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(settings.prefix)) };
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut req as *mut _ as *mut _, &format!("setting {name}'s netmask"))?;
    link_up(name)?;
    if let Some(gateway) = settings.gateway {
        let mut route = RtEntry {
            pad1: 0,
            dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            gateway: sockaddr(gateway),
            genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        };
        let what = format!("adding the default route via {gateway}");
        match ioctl(&fd, libc::SIOCADDRT, &mut route as *mut _ as *mut _, &what) {
            // A renewed DHCP lease applies the same route again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    Ok(())
}

/// Writes /etc/resolv.conf and sets the host name, when given.
pub fn resolver_and_hostname(settings: &Ipv4Settings) -> io::Result<()> {
    if !settings.dns.is_empty() {
        let text: String = settings.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        std::fs::create_dir_all("/etc")?;
        std::fs::write("/etc/resolv.conf", text)?;
    }
    if let Some(name) = &settings.hostname {
        rustix::system::sethostname(name.as_bytes())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("setting the host name {name}: {e}")))?;
    }
    Ok(())
}

/// Waits up to [`DEVICE_WAIT`] for the interface to exist.
fn wait_for_device(name: &str) -> io::Result<()> {
    if super::system::wait_for_path(&std::path::Path::new("/sys/class/net").join(name), DEVICE_WAIT) {
        return Ok(());
    }
    let present: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "interface {name} did not appear within {DEVICE_WAIT:?} (present: {}); is its driver in \
             /etc/polaredge/modules, or is the device name in ip= wrong?",
            present.join(", ")
        ),
    ))
}

/// Asks a DHCP server on `device` for a lease, over a packet socket (the interface has no address yet).
pub fn dhcp(device: &str) -> io::Result<super::dhcp::Lease> {
    use super::dhcp::{Exchange, Poll};
    wait_for_device(device)?;
    link_up(device)?;
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{device}/address"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(mac_text.trim().split(':')) {
        *byte = u8::from_str_radix(part, 16).map_err(|_| io::Error::other(format!("bad MAC {mac_text:?}")))?;
    }
    let index = rustix::net::netdevice::name_to_index(
        &rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?,
        device,
    )?;
    let protocol = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(protocol)) };
    if raw < 0 {
        return Err(io::Error::other(format!("packet socket for DHCP: {}", io::Error::last_os_error())));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(io::Error::other(format!("binding the DHCP socket to {device}: {}", io::Error::last_os_error())));
    }
    let xid = u32::from_ne_bytes({
        let mut b = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::NONBLOCK);
        b
    }) ^ std::process::id();
    let mut exchange = Exchange::new(mac, xid, Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        match exchange.poll(now) {
            Poll::Send(packet) => {
                // SAFETY: `packet` and `addr` outlive the call.
                let sent = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr() as *const _,
                        packet.len(),
                        0,
                        &addr as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                if sent < 0 {
                    return Err(io::Error::other(format!("sending DHCP on {device}: {}", io::Error::last_os_error())));
                }
            }
            Poll::GaveUp => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no DHCP lease on {device}; is a DHCP server on that network? Or give ip=ADDRESS::GATEWAY:NETMASK::{device}:off"),
                ))
            }
            Poll::WaitUntil(at) => {
                let wait = at.saturating_duration_since(now);
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
                if ready > 0 {
                    // SAFETY: `buf` is writable for its length.
                    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
                    if n > 0 {
                        if let Some(lease) = exchange.receive(Instant::now(), &buf[..n as usize]) {
                            return Ok(lease);
                        }
                    }
                }
            }
        }
    }
}
