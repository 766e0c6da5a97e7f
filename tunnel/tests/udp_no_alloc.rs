//! UDP flows allocate nothing per datagram once their flow exists: request/answer exchanges through an exposed
//! port and a relay (two driver threads on loopback, a kernel UDP echo server as the target) are counted by a
//! global allocator while the flow is steady. Its own test binary: the allocator counts every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunnel::{Cidr, FlowCounters};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_steady_flow_allocates_nothing_per_datagram() {
    let cidr = |s: &str| s.parse::<Cidr>().unwrap();
    let (agent, client) =
        tunnel::testbed::loopback_pair(vec![cidr("10.88.0.1/30")], vec![cidr("10.88.0.2/30")]).unwrap();
    // The target: echoes each datagram back, from a buffer it reuses.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let counters = Arc::new(FlowCounters::default());
    let _relay = client.relay_udp(7000, Arc::new(Some), Arc::clone(&counters)).unwrap();
    let public = UdpSocket::bind("127.0.0.1:0").unwrap();
    let exposure =
        agent.expose_udp(public, "10.88.0.2:7000".parse().unwrap(), Arc::new(move |_| Some(target)), counters).unwrap();
    let port: SocketAddr = exposure.local_addr();
    let user = UdpSocket::bind("127.0.0.1:0").unwrap();
    user.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let question = [7u8; 1000];
    let mut answer = [0u8; 2048];
    let mut exchange = || {
        user.send_to(&question, port).unwrap();
        user.recv(&mut answer).expect("an answer through the tunnel")
    };
    // Warm-up: the flow opens on both sides, buffers and tables reach their size.
    for _ in 0..500 {
        exchange();
    }
    const EXCHANGES: u64 = 2_000;
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..EXCHANGES {
        assert_eq!(exchange(), question.len());
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    // 4 datagrams cross the driver threads per exchange: none of them may allocate. A few allocations from
    // periodic work (WireGuard's timers, the flows' idle sweep) may fall into the window.
    assert!(allocations <= 20, "{allocations} allocations in {EXCHANGES} exchanges");
}
