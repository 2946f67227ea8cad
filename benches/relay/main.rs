//! The relay's benchmark (issue 5): `cargo bench --bench relay`, or
//! `cargo bench --bench relay -- --quick` (also `BENCH_QUICK=1`) for a smoke
//! run of a few seconds that checks every measurement still works.
//!
//! In one run on one machine it measures the release binary against a
//! direct connection to the same backend and against every peer it finds
//! (socat, haproxy, systemd-socket-proxyd): bulk throughput both ways over
//! both routes (TCP→Unix, Unix→TCP) with the relay's CPU time, round-trip
//! latency with everything pinned to one CPU and the system calls a round
//! trip costs the relay (counted with strace, `syscalls.rs`), connection
//! rate, idle connections under a 20000-descriptor limit and the memory
//! they cost, and
//! how throughput and connection rate hold up with many streams or many
//! open connections; and a real application: requests per second of
//! `redis-benchmark` against a `redis-server` on a Unix socket, directly and
//! through each relay (`redis.rs`); and the pause a hand-over restart costs
//! the relay's clients (`handover.rs`).
//!
//! It prints a markdown table, writes the raw figures to
//! `target/bench/results.json` and a chart to `target/bench/bench.svg`; a
//! full run also writes `docs/bench.md` and `docs/bench.svg` (not with
//! `--no-docs`). It never judges the numbers: it fails only when something
//! is broken (the relay or the direct baseline could not be measured).
//!
//! Options (after `--`): `--quick`, `--no-docs`, `--peers a,b` (names as
//! printed; `direct`, `simpletcpunixrelay` and a candidate are always included). For
//! profiling one workload against a relay started by hand: `--backend-child`
//! and `--drive` (see `drive.rs`). To measure a change beside the current
//! relay in the same run: `BENCH_CANDIDATE=path/to/other/binary` and/or
//! `BENCH_CANDIDATE_ENV='NAME=VALUE ...'` add a `candidate` row.

mod backend;
mod client;
mod drive;
mod handover;
mod json;
mod peers;
mod procfs;
mod redis;
mod report;
mod syscalls;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use client::{Addr, Dir};
use peers::{Instance, Kind, Route, Tools};

/// How much of everything a run does.
pub struct Settings {
    pub quick: bool,
    /// Repetitions of each cheap measurement (the median is reported).
    pub reps: usize,
    /// Repetitions of a latency measurement: more, as they are cheap and
    /// other work on the machine disturbs them most.
    pub rtt_reps: usize,
    /// Bytes per bulk transfer.
    pub bulk: u64,
    /// Ping-pongs per latency measurement, and their size.
    pub rtt_messages: usize,
    pub rtt_size: usize,
    /// Ping-pongs (of `rtt_size` bytes) counted under strace for the
    /// system calls per round trip.
    pub syscall_round_trips: usize,
    /// Client threads and duration of a connection-rate measurement.
    pub conn_threads: usize,
    pub conn_duration: Duration,
    /// Parallel bulk streams, and the bytes they move together.
    pub streams: [usize; 3],
    pub streams_total: u64,
    /// Idle connections held open during a connection-rate measurement.
    pub open_before: [usize; 2],
    /// Idle connections attempted, and the time allowed to open them.
    pub idle_target: usize,
    pub idle_time: Duration,
    /// Requests of each `redis-benchmark` run, from how many clients, and
    /// how long one run may take before it is killed.
    pub redis_requests: u64,
    pub redis_clients: usize,
    pub redis_timeout: Duration,
    /// Open connections during each measured hand-over restart.
    pub handover_connections: Vec<usize>,
    /// The whole run is abandoned after this.
    pub time_limit: Duration,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                reps: 1,
                rtt_reps: 1,
                bulk: 8 << 20,
                rtt_messages: 300,
                rtt_size: 64,
                syscall_round_trips: 300,
                conn_threads: 8,
                conn_duration: Duration::from_millis(150),
                streams: [1, 16, 256],
                streams_total: 32 << 20,
                open_before: [1, 100],
                idle_target: 300,
                idle_time: Duration::from_secs(10),
                redis_requests: 10_000,
                redis_clients: 50,
                redis_timeout: Duration::from_secs(20),
                handover_connections: vec![1, 100],
                time_limit: Duration::from_secs(180),
            }
        } else {
            Settings {
                quick,
                reps: 3,
                rtt_reps: 5,
                bulk: 1 << 30,
                rtt_messages: 20_000,
                rtt_size: 64,
                syscall_round_trips: 2000,
                conn_threads: 8,
                conn_duration: Duration::from_secs(1),
                streams: [1, 16, 256],
                streams_total: 1 << 30,
                open_before: [1, 1000],
                idle_target: 10_000,
                idle_time: Duration::from_secs(120),
                redis_requests: 100_000,
                redis_clients: 50,
                redis_timeout: Duration::from_secs(60),
                handover_connections: vec![1, 1000, 1200],
                time_limit: Duration::from_secs(30 * 60),
            }
        }
    }
}

/// Repeated measurements of one figure, and what the relay spent on them.
#[derive(Default)]
pub struct Series {
    pub samples: Vec<f64>,
    /// CPU seconds of the relay's process tree during the samples.
    pub cpu_seconds: f64,
    /// Bytes moved during the samples.
    pub bytes: u64,
}

impl Series {
    pub fn median(&self) -> Option<f64> {
        median(&self.samples)
    }

    /// CPU seconds per 10⁹ bytes relayed.
    pub fn cpu_per_gb(&self) -> Option<f64> {
        (self.bytes > 0 && self.cpu_seconds > 0.0)
            .then(|| self.cpu_seconds / (self.bytes as f64 / 1e9))
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// Idle connections held through one relay.
pub struct Idle {
    pub attempted: usize,
    pub held: usize,
    /// Why fewer than `attempted` were held.
    pub stopped: Option<String>,
    pub open_seconds: f64,
    pub before: procfs::Memory,
    pub during: procfs::Memory,
    pub after: procfs::Memory,
}

impl Idle {
    /// User-space memory per held connection (PSS, bytes).
    pub fn per_connection(&self) -> Option<f64> {
        (self.held > 0)
            .then(|| (self.during.pss as f64 - self.before.pss as f64) / self.held as f64)
    }

    /// Share of the memory the connections took that came back after they
    /// closed (1 = all of it).
    pub fn returned(&self) -> Option<f64> {
        let grown = self.during.pss as f64 - self.before.pss as f64;
        (grown > 0.0).then(|| (self.during.pss as f64 - self.after.pss as f64) / grown)
    }
}

/// Everything measured for one peer.
#[derive(Default)]
pub struct PeerResult {
    pub version: String,
    /// Why it was not measured at all.
    pub skipped: Option<String>,
    /// Measurements that failed.
    pub errors: Vec<String>,
    /// Bytes per second of one bulk transfer.
    pub throughput: BTreeMap<(Route, Dir), Series>,
    /// Connections per second.
    pub conn_rate: BTreeMap<Route, Series>,
    /// Median round trip of each repetition, µs: pinned to one CPU, and not.
    pub rtt_pinned: BTreeMap<Route, Series>,
    pub rtt_pinned_p99: BTreeMap<Route, Vec<f64>>,
    pub rtt_free: BTreeMap<Route, Series>,
    /// System calls of the relay's processes over ping-pongs through the
    /// pinned relays (traced runs of their own).
    pub syscalls: BTreeMap<Route, syscalls::Count>,
    /// Aggregate bytes per second of N parallel streams (Unix→TCP).
    pub streams: BTreeMap<(Dir, usize), Series>,
    /// The relay's pipes by capacity after the parallel-stream runs.
    pub pipes_after_streams: Option<String>,
    /// Connections per second with N idle connections open (Unix→TCP).
    pub conn_rate_open: BTreeMap<usize, Series>,
    pub idle: Option<Idle>,
    /// `redis-benchmark` requests per second by test, TCP→Unix.
    pub redis: BTreeMap<&'static str, redis::Series>,
}

/// Everything a run found.
pub struct Results {
    pub kinds: Vec<Kind>,
    pub peers: BTreeMap<Kind, PeerResult>,
    pub notes: Vec<String>,
    pub redis: redis::AppRun,
    pub syscalls: syscalls::Run,
    pub handover: handover::Run,
    pub load_before: String,
    pub load_after: String,
    pub seconds: f64,
    pub pinned_cpu: usize,
}

impl Results {
    fn peer(&mut self, kind: Kind) -> &mut PeerResult {
        self.peers.entry(kind).or_default()
    }

    fn error(&mut self, kind: Kind, what: impl Into<String>) {
        let what = what.into();
        eprintln!("  {}: {what}", kind.name());
        self.peer(kind).errors.push(what);
    }
}

/// Relays running for every (peer, route), and where each is reached.
struct Lineup {
    entries: Vec<(Kind, Route, Addr, Option<Instance>)>,
}

impl Lineup {
    /// Starts every kind in `kinds` for both routes towards `backend`; a
    /// peer that cannot start is dropped from `kinds` with the reason.
    fn start(
        tools: &Tools,
        backend: &backend::Backend,
        dir: &Path,
        tag: &str,
        cpu: Option<usize>,
        kinds: &mut Vec<Kind>,
        results: &mut Results,
    ) -> Lineup {
        let mut entries = Vec::new();
        let mut failed = Vec::new();
        for &kind in kinds.iter() {
            for route in Route::ALL {
                let target = match route {
                    Route::TcpToUnix => Addr::Unix(backend.unix.clone()),
                    Route::UnixToTcp => Addr::Tcp(backend.tcp),
                };
                if kind == Kind::Direct {
                    entries.push((kind, route, target, None));
                    continue;
                }
                let name = format!("{tag}-{}-{}", kind.name(), route.key());
                match peers::start(tools, kind, route, &target, dir, &name, cpu) {
                    Ok(instance) => {
                        entries.push((kind, route, instance.listen.clone(), Some(instance)))
                    }
                    Err(e) => {
                        results.error(kind, format!("cannot start for {}: {e}", route.label()));
                        failed.push(kind);
                    }
                }
            }
        }
        // A peer that cannot run both routes is left out of the comparison
        // (the relay itself never is: its failure is the run's failure).
        kinds.retain(|k| *k == Kind::Relay || *k == Kind::Direct || !failed.contains(k));
        entries.retain(|(k, ..)| kinds.contains(k));
        Lineup { entries }
    }

    fn find(&self, kind: Kind, route: Route) -> Option<&(Kind, Route, Addr, Option<Instance>)> {
        self.entries
            .iter()
            .find(|(k, r, ..)| *k == kind && *r == route)
    }

    fn addr(&self, kind: Kind, route: Route) -> Option<&Addr> {
        self.find(kind, route).map(|(_, _, addr, _)| addr)
    }

    fn pid(&self, kind: Kind, route: Route) -> Option<u32> {
        self.find(kind, route)
            .and_then(|(.., instance)| instance.as_ref().map(Instance::pid))
    }
}

fn cpu_of(pid: Option<u32>) -> f64 {
    pid.map(procfs::cpu_seconds).unwrap_or(0.0)
}

fn gbps(bytes_per_second: f64) -> String {
    format!("{:.2} GB/s", bytes_per_second / 1e9)
}

/// Bulk transfers, one at a time: throughput and CPU per byte.
fn measure_throughput(lineup: &Lineup, kinds: &[Kind], s: &Settings, results: &mut Results) {
    for route in Route::ALL {
        for dir in [Dir::Up, Dir::Down] {
            println!("throughput {} {}", route.label(), dir.key());
            for &kind in kinds {
                let Some(addr) = lineup.addr(kind, route) else {
                    continue;
                };
                if let Err(e) = client::transfer(addr, dir, s.bulk.min(64 << 20)) {
                    results.error(
                        kind,
                        format!("warm-up {} {}: {e}", route.label(), dir.key()),
                    );
                }
            }
            for _ in 0..s.reps {
                for &kind in kinds {
                    let Some(addr) = lineup.addr(kind, route) else {
                        continue;
                    };
                    let pid = lineup.pid(kind, route);
                    let cpu_before = cpu_of(pid);
                    match client::transfer(addr, dir, s.bulk) {
                        Ok(took) => {
                            // Let a forking peer's child exit and be reaped.
                            std::thread::sleep(Duration::from_millis(20));
                            let cpu = cpu_of(pid) - cpu_before;
                            let rate = s.bulk as f64 / took.as_secs_f64();
                            println!("  {:<22} {}  cpu {cpu:.2}s", kind.name(), gbps(rate));
                            let series = results
                                .peer(kind)
                                .throughput
                                .entry((route, dir))
                                .or_default();
                            series.samples.push(rate);
                            series.cpu_seconds += cpu;
                            series.bytes += s.bulk;
                        }
                        Err(e) => {
                            results.error(kind, format!("{} {}: {e}", route.label(), dir.key()))
                        }
                    }
                }
            }
        }
    }
}

fn record_conn_rate(
    results: &mut Results,
    kind: Kind,
    what: &str,
    rate: &client::ConnRate,
) -> Option<f64> {
    if let Some(e) = &rate.first_error {
        results.error(
            kind,
            format!("{what}: {} connections failed ({e})", rate.failed),
        );
    }
    let per_second = rate.per_second();
    println!(
        "  {:<22} {per_second:.0} conn/s ({} failed)",
        kind.name(),
        rate.failed
    );
    (rate.completed > 0).then_some(per_second)
}

/// Connection churn over both routes.
fn measure_conn_rate(lineup: &Lineup, kinds: &[Kind], s: &Settings, results: &mut Results) {
    for route in Route::ALL {
        println!("connection rate {}", route.label());
        for _ in 0..s.reps {
            for &kind in kinds {
                let Some(addr) = lineup.addr(kind, route) else {
                    continue;
                };
                let rate = client::conn_rate(addr, s.conn_threads, s.conn_duration);
                let what = format!("connection rate {}", route.label());
                if let Some(value) = record_conn_rate(results, kind, &what, &rate) {
                    results
                        .peer(kind)
                        .conn_rate
                        .entry(route)
                        .or_default()
                        .samples
                        .push(value);
                }
            }
        }
    }
}

/// Many parallel streams, and connection churn beside many open
/// connections, over the Unix→TCP route.
fn measure_scaling(lineup: &Lineup, kinds: &[Kind], s: &Settings, results: &mut Results) {
    let route = Route::UnixToTcp;
    for dir in [Dir::Up, Dir::Down] {
        for streams in s.streams {
            println!("{streams} parallel streams {} {}", route.label(), dir.key());
            for _ in 0..s.reps {
                for &kind in kinds {
                    let Some(addr) = lineup.addr(kind, route) else {
                        continue;
                    };
                    let pid = lineup.pid(kind, route);
                    let cpu_before = cpu_of(pid);
                    match client::parallel(addr, dir, streams, s.streams_total) {
                        Ok(took) => {
                            std::thread::sleep(Duration::from_millis(20));
                            let cpu = cpu_of(pid) - cpu_before;
                            let rate = s.streams_total as f64 / took.as_secs_f64();
                            println!("  {:<22} {}  cpu {cpu:.2}s", kind.name(), gbps(rate));
                            let series = results
                                .peer(kind)
                                .streams
                                .entry((dir, streams))
                                .or_default();
                            series.samples.push(rate);
                            series.cpu_seconds += cpu;
                            series.bytes += s.streams_total;
                        }
                        Err(e) => results.error(
                            kind,
                            format!("{streams} streams {} {}: {e}", route.label(), dir.key()),
                        ),
                    }
                }
            }
        }
    }
    for &kind in kinds {
        if matches!(kind, Kind::Relay | Kind::Candidate)
            && let Some(pid) = lineup.pid(kind, route)
        {
            let pipes = procfs::describe_pipes(&procfs::pipes(pid));
            println!("  {} pipes after the stream runs: {pipes}", kind.name());
            results.peer(kind).pipes_after_streams = Some(pipes);
        }
    }
    for open in s.open_before {
        println!("connection rate {} with {open} open", route.label());
        for &kind in kinds {
            let Some(addr) = lineup.addr(kind, route) else {
                continue;
            };
            let (held, stopped) =
                client::open_many(addr, open, Duration::from_secs(2), s.idle_time);
            if let Some(why) = stopped {
                results.error(
                    kind,
                    format!("opened only {} of {open} connections: {why}", held.len()),
                );
                continue;
            }
            for _ in 0..s.reps {
                let rate = client::conn_rate(addr, s.conn_threads, s.conn_duration);
                let what = format!("connection rate with {open} open");
                if let Some(value) = record_conn_rate(results, kind, &what, &rate) {
                    results
                        .peer(kind)
                        .conn_rate_open
                        .entry(open)
                        .or_default()
                        .samples
                        .push(value);
                }
            }
            drop(held);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Ping-pong latency through `lineup` from a client thread, pinned to
/// `cpu` if given.
fn measure_rtt(
    lineup: &Lineup,
    kinds: &[Kind],
    s: &Settings,
    cpu: Option<usize>,
    results: &mut Results,
) {
    let label = if cpu.is_some() { "pinned" } else { "unpinned" };
    // (kind, route, median µs, p99 µs) or an error, gathered on the
    // measuring thread (which must not spawn processes: see peers::prepare).
    let outcomes = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut outcomes = Vec::new();
                if let Some(cpu) = cpu
                    && let Err(e) = client::pin_this_thread(cpu)
                {
                    outcomes.push((Kind::Relay, Route::TcpToUnix, Err(format!("pin: {e}"))));
                    return outcomes;
                }
                for route in Route::ALL {
                    println!("round trip {label} {}", route.label());
                    for _ in 0..s.rtt_reps {
                        for &kind in kinds {
                            let Some(addr) = lineup.addr(kind, route) else {
                                continue;
                            };
                            let outcome = client::ping_pong(addr, s.rtt_messages, s.rtt_size)
                                .map(|mut times| {
                                    times.sort_unstable();
                                    let at = |q: f64| {
                                        times[((times.len() - 1) as f64 * q) as usize] as f64 / 1e3
                                    };
                                    (at(0.5), at(0.99))
                                })
                                .map_err(|e| e.to_string());
                            if let Ok((p50, p99)) = outcome {
                                println!("  {:<22} {p50:.1} µs (p99 {p99:.1})", kind.name());
                            }
                            outcomes.push((kind, route, outcome));
                        }
                    }
                }
                outcomes
            })
            .join()
            .expect("round-trip thread")
    });
    for (kind, route, outcome) in outcomes {
        match outcome {
            Ok((p50, p99)) => {
                let peer = results.peer(kind);
                if cpu.is_some() {
                    peer.rtt_pinned.entry(route).or_default().samples.push(p50);
                    peer.rtt_pinned_p99.entry(route).or_default().push(p99);
                } else {
                    peer.rtt_free.entry(route).or_default().samples.push(p50);
                }
            }
            Err(e) => results.error(kind, format!("round trip {label} {}: {e}", route.label())),
        }
    }
}

/// System calls per round trip: strace attached to each relay of `lineup`
/// (the pinned one, as for the latency figure) while a client pinned to
/// `cpu` makes ping-pongs through it; runs of their own, after the
/// untraced latency runs.
fn measure_syscalls(
    lineup: &Lineup,
    kinds: &[Kind],
    s: &Settings,
    cpu: Option<usize>,
    dir: &Path,
    results: &mut Results,
) {
    let Some(strace) = syscalls::Strace::find() else {
        let note = format!(
            "strace not found: system calls per round trip not counted (install: {})",
            syscalls::INSTALL_HINT
        );
        println!("note: {note}");
        results.notes.push(note);
        results.syscalls.skipped = Some("strace not installed".into());
        return;
    };
    results.syscalls.version = strace.version();
    for route in Route::ALL {
        println!(
            "system calls per round trip {} (strace -f -c, {} round trips)",
            route.label(),
            s.syscall_round_trips
        );
        for &kind in kinds.iter().filter(|k| **k != Kind::Direct) {
            let (Some(addr), Some(pid)) = (lineup.addr(kind, route), lineup.pid(kind, route))
            else {
                continue;
            };
            let out = dir.join(format!("strace-{}-{}.txt", kind.name(), route.key()));
            match syscalls::count(
                &strace,
                addr,
                pid,
                s.syscall_round_trips,
                s.rtt_size,
                cpu,
                &out,
            ) {
                Ok(count) => {
                    println!(
                        "  {:<22} {:.1} per round trip: {}",
                        kind.name(),
                        count.total_per_round_trip(),
                        count.describe(0.05)
                    );
                    results.peer(kind).syscalls.insert(route, count);
                }
                Err(syscalls::Failure::Client(e)) => results.error(
                    kind,
                    format!("system calls per round trip {}: {e}", route.label()),
                ),
                Err(syscalls::Failure::Trace(e)) => {
                    let note = format!(
                        "strace could not count {} {}: {e}",
                        kind.name(),
                        route.label()
                    );
                    println!("note: {note}");
                    results.notes.push(note);
                }
            }
        }
    }
}

/// Holds as many idle connections as each relay allows (up to the target)
/// through a fresh instance, and what they cost.
fn measure_idle(
    tools: &Tools,
    backend: &backend::Backend,
    dir: &Path,
    kinds: &[Kind],
    s: &Settings,
    results: &mut Results,
) {
    let route = Route::UnixToTcp;
    for &kind in kinds.iter().filter(|k| **k != Kind::Direct) {
        println!("idle connections {} ({})", kind.name(), route.label());
        let instance = match peers::start(
            tools,
            kind,
            route,
            &Addr::Tcp(backend.tcp),
            dir,
            &format!("idle-{}", kind.name()),
            None,
        ) {
            Ok(instance) => instance,
            Err(e) => {
                results.error(kind, format!("idle: cannot start: {e}"));
                continue;
            }
        };
        let pid = instance.pid();
        // Warm up: whatever the first connections allocate for good.
        let (warm, _) = client::open_many(
            &instance.listen,
            16,
            Duration::from_secs(2),
            Duration::from_secs(5),
        );
        drop(warm);
        std::thread::sleep(Duration::from_millis(300));
        let before = procfs::memory(pid);
        let started = Instant::now();
        let (held, stopped) = client::open_many(
            &instance.listen,
            s.idle_target,
            Duration::from_secs(1),
            s.idle_time,
        );
        let open_seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let during = procfs::memory(pid);
        let count = held.len();
        drop(held);
        // Wait for the relay to close them all (10 s at most), then settle.
        let deadline = Instant::now() + Duration::from_secs(10);
        while procfs::memory(pid).fds > before.fds + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1000));
        let after = procfs::memory(pid);
        let idle = Idle {
            attempted: s.idle_target,
            held: count,
            stopped,
            open_seconds,
            before,
            during,
            after,
        };
        println!(
            "  held {count} of {} in {open_seconds:.1}s{}; {:.0} bytes each (PSS; RSS {:.0}), {:.1} fds each, {:.0}% returned",
            s.idle_target,
            idle.stopped
                .as_deref()
                .map(|w| format!(" (stopped: {w})"))
                .unwrap_or_default(),
            idle.per_connection().unwrap_or(f64::NAN),
            (during.rss as f64 - before.rss as f64) / count.max(1) as f64,
            (during.fds as f64 - before.fds as f64) / count.max(1) as f64,
            idle.returned().unwrap_or(f64::NAN) * 100.0,
        );
        results.peer(kind).idle = Some(idle);
        drop(instance);
    }
}

/// The CPU a pinned run uses: the last one this process may use.
fn pinned_cpu() -> usize {
    // SAFETY: sched_getaffinity fills a plain cpu_set_t; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|cpu| libc::CPU_ISSET(*cpu, &set))
            .unwrap_or(0)
    }
}

/// Lets this process (the clients) and the backend child hold more
/// connections than the relays may.
fn raise_own_fd_limit() {
    let wanted = 65_536;
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted.max(limit.rlim_cur),
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Removes the run's scratch directory (sockets, configs) at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Measures the hand-over alone and prints each case.
fn handover_only(settings: &Settings) -> ExitCode {
    let scratch = Scratch(std::env::temp_dir().join(format!("stur-bench-{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&scratch.0) {
        eprintln!("benchmark: {e}");
        return ExitCode::FAILURE;
    }
    let backend = match backend::Backend::start(&scratch.0, "main", None) {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("benchmark: cannot start the backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_simpletcpunixrelay"));
    let run = handover::measure(&relay, &backend, &scratch.0, settings);
    if run.cases.iter().any(|c| c.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(settings: &Settings, only: Option<Vec<String>>) -> io::Result<Results> {
    let started = Instant::now();
    let scratch = Scratch(std::env::temp_dir().join(format!("stur-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let dir = scratch.0.as_path();
    let tools = Tools::find(PathBuf::from(env!("CARGO_BIN_EXE_simpletcpunixrelay")));
    let mut results = Results {
        kinds: Vec::new(),
        peers: BTreeMap::new(),
        notes: Vec::new(),
        redis: redis::AppRun::default(),
        syscalls: syscalls::Run::default(),
        handover: handover::Run::default(),
        load_before: procfs::load_average(),
        load_after: String::new(),
        seconds: 0.0,
        pinned_cpu: pinned_cpu(),
    };
    let mut kinds = Vec::new();
    for kind in Kind::ALL {
        let wanted = matches!(kind, Kind::Direct | Kind::Relay | Kind::Candidate)
            || only
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == kind.name()));
        if !wanted {
            continue;
        }
        if kind == Kind::Candidate && !tools.has(kind) {
            continue;
        }
        if !tools.has(kind) {
            let note = format!(
                "{} not found: skipped (install: {})",
                kind.name(),
                kind.install_hint()
            );
            println!("note: {note}");
            results.notes.push(note);
            results.peer(kind).skipped = Some("not installed".into());
            continue;
        }
        results.peer(kind).version = tools.version(kind);
        kinds.push(kind);
    }
    println!(
        "benchmark ({} mode): {}",
        if settings.quick { "quick" } else { "full" },
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let backend = backend::Backend::start(dir, "main", None)?;
    let lineup = Lineup::start(
        &tools,
        &backend,
        dir,
        "main",
        None,
        &mut kinds,
        &mut results,
    );
    measure_throughput(&lineup, &kinds, settings, &mut results);
    measure_conn_rate(&lineup, &kinds, settings, &mut results);
    measure_rtt(&lineup, &kinds, settings, None, &mut results);
    measure_scaling(&lineup, &kinds, settings, &mut results);
    drop(lineup);
    redis::measure(&tools, dir, &kinds, settings, &mut results);

    let cpu = results.pinned_cpu;
    {
        let pinned_backend = backend::Backend::start(dir, "pinned", Some(cpu))?;
        let mut pinned_kinds = kinds.clone();
        let pinned = Lineup::start(
            &tools,
            &pinned_backend,
            dir,
            "pinned",
            Some(cpu),
            &mut pinned_kinds,
            &mut results,
        );
        measure_rtt(&pinned, &pinned_kinds, settings, Some(cpu), &mut results);
        measure_syscalls(
            &pinned,
            &pinned_kinds,
            settings,
            Some(cpu),
            dir,
            &mut results,
        );
    }

    // Before the idle phase, whose thousands of socat processes (exiting
    // together at the end) would dominate the figure.
    results.load_after = procfs::load_average();
    measure_idle(&tools, &backend, dir, &kinds, settings, &mut results);
    results.handover = handover::measure(&tools.relay, &backend, dir, settings);
    drop(backend);

    results.kinds = kinds;
    results.seconds = started.elapsed().as_secs_f64();
    Ok(results)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--backend-child") {
        return match backend::child_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench backend: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("--drive") {
        return match drive::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench drive: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Cargo passes `--bench`; anything else unknown is ignored too, with a
    // word, so that `cargo bench` with a filter still runs.
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let docs = !quick && !args.iter().any(|a| a == "--no-docs");
    let only = args
        .iter()
        .position(|a| a == "--peers")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect::<Vec<_>>());
    let mut settings = Settings::new(quick);
    raise_own_fd_limit();
    // `-- --handover-only [N,N…]`: only the hand-over's pause, printed (for
    // sizing: how it grows with the open connections).
    if let Some(i) = args.iter().position(|a| a == "--handover-only") {
        if let Some(counts) = args.get(i + 1).filter(|a| !a.starts_with('-')) {
            settings.handover_connections =
                counts.split(',').filter_map(|n| n.parse().ok()).collect();
        }
        return handover_only(&settings);
    }
    let limit = settings.time_limit;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("benchmark: still running after {limit:?}: giving up");
        std::process::exit(2);
    });

    let results = match run(&settings, only) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("benchmark: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = Path::new(env!("CARGO_BIN_EXE_simpletcpunixrelay"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let docs_dir = docs.then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"));
    match report::write_all(
        &results,
        &settings,
        &target.join("bench"),
        docs_dir.as_deref(),
    ) {
        Ok(markdown) => println!("\n{markdown}"),
        Err(e) => {
            eprintln!("benchmark: cannot write the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    let broken: Vec<String> = [Kind::Direct, Kind::Relay]
        .iter()
        .flat_map(|kind| {
            results
                .peers
                .get(kind)
                .map(|p| p.errors.clone())
                .unwrap_or_default()
                .into_iter()
                .map(move |e| format!("{}: {e}", kind.name()))
        })
        .collect();
    if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("benchmark: broken measurements:");
        for line in &broken {
            eprintln!("  {line}");
        }
        ExitCode::FAILURE
    }
}
