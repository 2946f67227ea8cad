//! One workload at a time, for profiling a relay started by hand (under
//! `perf`, `strace -c` or valgrind): `cargo bench --bench relay -- --drive
//! WORKLOAD ADDR ...`, with a backend from `-- --backend-child DIR TAG`
//! (it prints `ready TCPPORT UNIXPATH` and serves until its standard input
//! closes). ADDR is `HOST:PORT` or a Unix socket path.
//!
//! | workload | arguments | does |
//! |---|---|---|
//! | `up`, `down` | BYTES | one bulk transfer |
//! | `pingpong` | COUNT [SIZE] | COUNT round trips of SIZE (64) bytes |
//! | `connrate` | SECONDS [THREADS] | connection churn from THREADS (8) threads |
//! | `streams` | up/down N BYTES | N parallel streams moving BYTES together |
//! | `idle` | COUNT SECONDS | opens COUNT idle connections, holds them SECONDS |
//! | `pipes` | (ADDR is a PID) | counts that process's pipes by capacity |

use std::io;
use std::time::{Duration, Instant};

use crate::client::{self, Addr, Dir};

fn number<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> io::Result<T> {
    match args.get(i) {
        Some(text) => text
            .parse()
            .map_err(|_| io::Error::other(format!("not a number: {text}"))),
        None => default.ok_or_else(|| io::Error::other("missing argument")),
    }
}

fn dir(text: &str) -> io::Result<Dir> {
    match text {
        "up" => Ok(Dir::Up),
        "down" => Ok(Dir::Down),
        _ => Err(io::Error::other(format!("up or down, not {text}"))),
    }
}

/// Runs `--drive WORKLOAD ADDR ...` and prints what it measured.
pub fn main(args: &[String]) -> io::Result<()> {
    let (Some(workload), Some(addr)) = (args.first(), args.get(1)) else {
        return Err(io::Error::other(
            "usage: --drive up|down|pingpong|connrate|streams|idle ADDR ...",
        ));
    };
    if workload == "pipes" {
        return pipes(addr);
    }
    let addr = if addr.contains('/') {
        Addr::Unix(addr.into())
    } else {
        Addr::Tcp(
            addr.parse()
                .map_err(|_| io::Error::other(format!("not HOST:PORT: {addr}")))?,
        )
    };
    let rest = &args[2..];
    match workload.as_str() {
        "up" | "down" => {
            let bytes: u64 = number(rest, 0, Some(1 << 30))?;
            let took = client::transfer(&addr, dir(workload)?, bytes)?;
            println!(
                "{workload} {bytes} bytes in {:.3} s: {:.2} GB/s",
                took.as_secs_f64(),
                bytes as f64 / took.as_secs_f64() / 1e9
            );
        }
        "pingpong" => {
            let count: usize = number(rest, 0, Some(20_000))?;
            let size: usize = number(rest, 1, Some(64))?;
            let mut times = client::ping_pong(&addr, count, size)?;
            times.sort_unstable();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1e3;
            println!(
                "{count} round trips of {size} bytes: median {:.1} µs, p99 {:.1} µs",
                at(0.5),
                at(0.99)
            );
        }
        "connrate" => {
            let seconds: f64 = number(rest, 0, Some(2.0))?;
            let threads: usize = number(rest, 1, Some(8))?;
            let rate = client::conn_rate(&addr, threads, Duration::from_secs_f64(seconds));
            println!(
                "{} connections in {:.2} s: {:.0} conn/s, {} failed{}",
                rate.completed,
                rate.elapsed.as_secs_f64(),
                rate.per_second(),
                rate.failed,
                rate.first_error
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
        "streams" => {
            let direction = dir(rest.first().map_or("", String::as_str))?;
            let streams: usize = number(rest, 1, Some(16))?;
            let bytes: u64 = number(rest, 2, Some(1 << 30))?;
            let took = client::parallel(&addr, direction, streams, bytes)?;
            println!(
                "{streams} streams, {bytes} bytes in {:.3} s: {:.2} GB/s",
                took.as_secs_f64(),
                bytes as f64 / took.as_secs_f64() / 1e9
            );
        }
        "idle" => {
            let count: usize = number(rest, 0, Some(1000))?;
            let seconds: f64 = number(rest, 1, Some(10.0))?;
            let started = Instant::now();
            let (held, stopped) = client::open_many(
                &addr,
                count,
                Duration::from_secs(1),
                Duration::from_secs(120),
            );
            println!(
                "{} idle connections open in {:.2} s{}; holding them {seconds} s",
                held.len(),
                started.elapsed().as_secs_f64(),
                stopped
                    .map(|w| format!(" (stopped: {w})"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs_f64(seconds.min(3600.0)));
        }
        other => return Err(io::Error::other(format!("unknown workload {other}"))),
    }
    Ok(())
}

/// Prints how many pipes process `pid` holds, by capacity: shows when the
/// kernel refused to grow them.
fn pipes(pid: &str) -> io::Result<()> {
    let pid: u32 = pid
        .parse()
        .map_err(|_| io::Error::other(format!("not a process id: {pid}")))?;
    println!(
        "pipes of {pid}: {}",
        crate::procfs::describe_pipes(&crate::procfs::pipes(pid))
    );
    Ok(())
}
