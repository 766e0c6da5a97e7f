//! The steady-state data path allocates nothing per packet: after a warm-up, bulk TCP through two cores
//! (encrypt, decrypt, smoltcp in and out, both directions) makes zero heap allocations inside the cores.
//! A counting global allocator counts only while the cores run, not while the test moves datagrams around.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tunnel::{Core, CoreConfig, PrivateKey};

/// `address/prefix` as the tunnel's configuration takes it.
fn cidr(address: IpAddress, prefix: u8) -> tunnel::Cidr {
    tunnel::Cidr::new(address.into(), prefix).unwrap()
}

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Datagrams in flight, in buffers reused from a free list (the test's own, uncounted, bookkeeping).
#[derive(Default)]
struct Wire {
    queue: Vec<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

impl Wire {
    fn push(&mut self, d: &[u8]) {
        COUNTING.with(|c| c.set(false));
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(d);
        self.queue.push(buf);
        COUNTING.with(|c| c.set(true));
    }
}

fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

#[test]
fn bulk_transfer_makes_no_allocation_per_packet() {
    let a_key = PrivateKey::generate();
    let b_key = PrivateKey::generate();
    let a_addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let b_addr: SocketAddr = "192.0.2.2:2".parse().unwrap();
    let mut now = Instant::from_millis(0);
    let mut a = Core::new(
        CoreConfig {
            endpoint: Some(b_addr),
            ..CoreConfig::new(a_key.clone(), b_key.public_key(), vec![cidr(IpAddress::v4(10, 88, 0, 2), 30)])
        },
        1,
        now,
    )
    .unwrap();
    let mut b =
        Core::new(CoreConfig::new(b_key, a_key.public_key(), vec![cidr(IpAddress::v4(10, 88, 0, 1), 30)]), 2, now)
            .unwrap();
    b.listen(9000);
    let client = a.connect(IpEndpoint::new(IpAddress::v4(10, 88, 0, 1), 9000)).unwrap();
    let mut server = None;
    let (mut to_a, mut to_b) = (Wire::default(), Wire::default());
    let mut scratch = vec![0u8; 64 * 1024];
    let (mut up, mut down) = (0usize, 0usize);
    let mut measured_from = None;
    for round in 0..200_000 {
        if measured_from.is_none() && up > (2 << 20) && down > (2 << 20) {
            ALLOCATIONS.store(0, Ordering::Relaxed);
            measured_from = Some((up, down));
        }
        if up > (12 << 20) && down > (12 << 20) {
            break;
        }
        assert!(round < 199_999, "transfer stalled at up {up}, down {down}");
        if server.is_none() {
            server = b.accept().map(|(_, handle)| handle);
        }
        counted(|| {
            // Both directions at once: A writes to B, B writes to A; each drains what it receives.
            let sides = [(&mut a, Some(client)), (&mut b, server)];
            for (index, (core, handle)) in sides.into_iter().enumerate().filter_map(|(i, (c, h))| Some((i, (c, h?)))) {
                let socket = core.tcp(handle);
                if socket.may_send() {
                    let _ = socket.send_slice(&scratch[..16 * 1024]);
                }
                if let Ok(n) = socket.recv_slice(&mut scratch[16 * 1024..]) {
                    // The client's socket receives the download, the server's the upload.
                    if index == 0 {
                        down += n;
                    } else {
                        up += n;
                    }
                }
            }
            for d in to_b.queue.drain(..) {
                b.handle_datagram(now, a_addr, &d, &mut |_: SocketAddr, d: &[u8]| to_a.push(d));
                to_b.free.push(d);
            }
            for d in to_a.queue.drain(..) {
                a.handle_datagram(now, b_addr, &d, &mut |_: SocketAddr, d: &[u8]| to_b.push(d));
                to_a.free.push(d);
            }
            a.poll(now, &mut |_: SocketAddr, d: &[u8]| to_b.push(d));
            b.poll(now, &mut |_: SocketAddr, d: &[u8]| to_a.push(d));
        });
        now += Duration::from_micros(200);
    }
    let (up0, down0) = measured_from.expect("warm-up finished");
    let packets = ((up - up0) + (down - down0)) / 1380;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(allocations, 0, "{allocations} heap allocations while carrying ~{packets} full-size packets");
}
