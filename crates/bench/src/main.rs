//! Small, dependency-free load generators that `bench/run.sh` runs both natively and
//! under `ax run`, so the two figures come from the same code:
//!
//! - `syscall N`: N getsockname calls on a socket bound to port 0 (under ax each one
//!   is trapped and answered by writing the virtual address into our memory); prints
//!   the median and 99th percentile in nanoseconds.
//! - `serve ADDR`: accepts connections and closes each at once.
//! - `connect ADDR SECONDS`: opens, reads EOF on, and closes connections one after
//!   another for SECONDS; prints connections per second.

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, what: &str| -> String {
        args.get(i).cloned().unwrap_or_else(|| {
            eprintln!("usage: ax-bench syscall N | serve ADDR | connect ADDR SECONDS (missing {what})");
            std::process::exit(2)
        })
    };
    match arg(0, "a command").as_str() {
        "syscall" => syscall(arg(1, "N").parse().expect("N is a number")),
        "serve" => serve(&arg(1, "ADDR")),
        "connect" => connect(&arg(1, "ADDR"), arg(2, "SECONDS").parse().expect("SECONDS is a number")),
        other => {
            eprintln!("unknown command {other}");
            std::process::exit(2)
        }
    }
}

fn syscall(n: usize) {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let a = s.local_addr().expect("getsockname");
        times.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(a);
    }
    times.sort_unstable();
    println!("median_ns={} p99_ns={}", times[n / 2], times[n * 99 / 100]);
}

fn serve(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind");
    for c in l.incoming() {
        drop(c);
    }
}

fn connect(addr: &str, seconds: f64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = [0u8; 16];
    while Instant::now() < end {
        let mut c = TcpStream::connect(addr).expect("connect");
        let _ = c.read(&mut buf);
        n += 1;
    }
    println!("conns_per_sec={:.0}", n as f64 / start.elapsed().as_secs_f64());
}
