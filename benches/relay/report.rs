//! The run's figures as a markdown report, raw JSON and an SVG bar chart,
//! all from the same `Results`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::client::Dir;
use crate::json::Json;
use crate::peers::{Kind, Route};
use crate::{Results, Series, Settings, handover, redis, syscalls};

const CELLS: [(Route, Dir); 4] = [
    (Route::TcpToUnix, Dir::Up),
    (Route::TcpToUnix, Dir::Down),
    (Route::UnixToTcp, Dir::Up),
    (Route::UnixToTcp, Dir::Down),
];

/// Writes `results.json`, `bench.md` and `bench.svg` to `out` (and the
/// markdown and chart to `docs` too, if given); returns the markdown.
pub fn write_all(
    results: &Results,
    settings: &Settings,
    out: &Path,
    docs: Option<&Path>,
) -> io::Result<String> {
    let markdown = markdown(results, settings);
    let svg = svg(results);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), json(results, settings).render())?;
    std::fs::write(out.join("bench.md"), &markdown)?;
    std::fs::write(out.join("bench.svg"), &svg)?;
    let mut written = vec![
        out.join("results.json"),
        out.join("bench.md"),
        out.join("bench.svg"),
    ];
    if let Some(docs) = docs {
        std::fs::create_dir_all(docs)?;
        std::fs::write(docs.join("bench.md"), &markdown)?;
        std::fs::write(docs.join("bench.svg"), &svg)?;
        written.extend([docs.join("bench.md"), docs.join("bench.svg")]);
    }
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(markdown)
}

fn throughput(results: &Results, kind: Kind, cell: (Route, Dir)) -> Option<&Series> {
    results.peers.get(&kind)?.throughput.get(&cell)
}

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

fn throughput_ratio(results: &Results, kind: Kind, cell: (Route, Dir)) -> Option<f64> {
    ratio(
        throughput(results, kind, cell).and_then(Series::median),
        throughput(results, Kind::Direct, cell).and_then(Series::median),
    )
}

/// Throughput as a ratio to the slower direct path (TCP or Unix) in the
/// same direction.
fn slower_ratio(results: &Results, kind: Kind, cell: (Route, Dir)) -> Option<f64> {
    let slower = Route::ALL
        .iter()
        .filter_map(|route| throughput(results, Kind::Direct, (*route, cell.1))?.median())
        .reduce(f64::min);
    ratio(
        throughput(results, kind, cell).and_then(Series::median),
        slower,
    )
}

fn cpu_per_gb(results: &Results, kind: Kind, cell: (Route, Dir)) -> Option<f64> {
    throughput(results, kind, cell).and_then(Series::cpu_per_gb)
}

fn rtt(results: &Results, kind: Kind, route: Route) -> Option<f64> {
    results.peers.get(&kind)?.rtt_pinned.get(&route)?.median()
}

fn added_rtt(results: &Results, kind: Kind, route: Route) -> Option<f64> {
    Some(rtt(results, kind, route)? - rtt(results, Kind::Direct, route)?)
}

fn syscall_count(results: &Results, kind: Kind, route: Route) -> Option<&syscalls::Count> {
    results.peers.get(&kind)?.syscalls.get(&route)
}

/// System calls of the relay's processes per round trip.
fn syscalls_per_rt(results: &Results, kind: Kind, route: Route) -> Option<f64> {
    syscall_count(results, kind, route).map(syscalls::Count::total_per_round_trip)
}

fn conn_rate(results: &Results, kind: Kind, route: Route) -> Option<f64> {
    results.peers.get(&kind)?.conn_rate.get(&route)?.median()
}

fn conn_ratio(results: &Results, kind: Kind, route: Route) -> Option<f64> {
    ratio(
        conn_rate(results, kind, route),
        conn_rate(results, Kind::Direct, route),
    )
}

fn streams(results: &Results, kind: Kind, dir: Dir, n: usize) -> Option<f64> {
    results.peers.get(&kind)?.streams.get(&(dir, n))?.median()
}

fn conn_open(results: &Results, kind: Kind, open: usize) -> Option<f64> {
    results
        .peers
        .get(&kind)?
        .conn_rate_open
        .get(&open)?
        .median()
}

fn redis_rate(results: &Results, kind: Kind, test: &str) -> Option<f64> {
    results.peers.get(&kind)?.redis.get(test)?.median()
}

fn redis_ratio(results: &Results, kind: Kind, test: &str) -> Option<f64> {
    ratio(
        redis_rate(results, kind, test),
        redis_rate(results, Kind::Direct, test),
    )
}

fn redis_cpu(results: &Results, kind: Kind, test: &str) -> Option<f64> {
    results
        .peers
        .get(&kind)?
        .redis
        .get(test)?
        .cpu_us_per_request()
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".into(),
    }
}

fn bytes(value: Option<f64>) -> String {
    match value {
        Some(v) if v.abs() >= 1024.0 * 1024.0 => format!("{:.1} MiB", v / 1048576.0),
        Some(v) if v.abs() >= 10.0 * 1024.0 => format!("{:.0} KiB", v / 1024.0),
        Some(v) if v.abs() >= 1024.0 => format!("{:.2} KiB", v / 1024.0),
        Some(v) if v.is_finite() => format!("{v:.0} B"),
        _ => "–".into(),
    }
}

fn gb(value: Option<f64>) -> String {
    num(value.map(|v| v / 1e9), 2)
}

/// (max − min) / max of the values present, if there are two or more.
fn spread(values: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.len() < 2 {
        return None;
    }
    let max = present.iter().copied().fold(f64::MIN, f64::max);
    let min = present.iter().copied().fold(f64::MAX, f64::min);
    (max > 0.0).then(|| (max - min) / max)
}

fn pct(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} CPUs ({cpu}), Linux {}", kernel.trim())
}

/// Today's date (UTC) from the system clock, as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (year, month, day) = simpletcpunixrelay::log::civil_date(days);
    format!("{year:04}-{month:02}-{day:02}")
}

fn markdown(results: &Results, s: &Settings) -> String {
    let mut md = String::new();
    let kinds = &results.kinds;
    let peers_only: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Direct)
        .collect();
    let versions: Vec<String> = kinds
        .iter()
        .filter_map(|k| {
            let v = &results.peers.get(k)?.version;
            (!v.is_empty()).then(|| format!("{}: {v}", k.name()))
        })
        .collect();
    let _ = writeln!(md, "# Benchmark: simpletcpunixrelay and its peers\n");
    let _ = writeln!(
        md,
        "Generated by `cargo bench --bench relay{}` on {} in {:.0} s ({} mode: {} run{} of each figure, median shown). \
         Machine: {}; load average {} at the start, {} before the idle-connection phase (other work on the machine shows up here). \
         The CPU used for pinned runs: {}.\n",
        if s.quick { " -- --quick" } else { "" },
        today(),
        results.seconds,
        if s.quick { "quick" } else { "full" },
        s.reps,
        if s.reps == 1 { "" } else { "s" },
        machine(),
        results.load_before,
        results.load_after,
        results.pinned_cpu,
    );
    if s.quick {
        let _ = writeln!(
            md,
            "**Quick mode**: smoke-test sizes, checking that every measurement works; the figures mean little.\n"
        );
    }
    if !versions.is_empty() {
        let _ = writeln!(md, "Versions: {}.\n", versions.join("; "));
    }
    for note in &results.notes {
        let _ = writeln!(md, "Note: {note}.\n");
    }

    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "Throughput and connection rate as a ratio to a direct connection from the client to the same backend \
         (the direct row gives absolute figures); CPU is the relay's own (all its processes), per 10⁹ bytes relayed; \
         added RTT is the round trip of a {}-byte ping-pong through the relay minus the direct one, with client, \
         relay and backend all pinned to one CPU, and syscalls per round trip what the relay's processes make for one \
         such round trip (counted with strace in separate runs, see below); Redis is what `redis-benchmark` gets through the relay from a \
         `redis-server` on a Unix socket (requests per second, see below).\n",
        s.rtt_size
    );
    let _ = writeln!(
        md,
        "| peer | TCP→Unix up / down | Unix→TCP up / down | CPU s/GB TCP→Unix up / down | CPU s/GB Unix→TCP up / down | added RTT pinned TCP→Unix / Unix→TCP | syscalls per round trip TCP→Unix / Unix→TCP | conn/s TCP→Unix / Unix→TCP | memory per held conn | max held conns (of {}) | memory returned after close | Redis {} |",
        s.idle_target,
        redis::TESTS.map(str::to_uppercase).join(" / "),
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &kind in kinds {
        let mut row = format!("| {} |", kind.name());
        if kind == Kind::Direct {
            let abs = |cell| gb(throughput(results, kind, cell).and_then(Series::median));
            let _ = write!(
                row,
                " {} / {} GB/s | {} / {} GB/s | – | – | {} / {} µs RTT | – | {} / {} conn/s | – | – | – | {} req/s |",
                abs(CELLS[0]),
                abs(CELLS[1]),
                abs(CELLS[2]),
                abs(CELLS[3]),
                num(rtt(results, kind, Route::TcpToUnix), 1),
                num(rtt(results, kind, Route::UnixToTcp), 1),
                num(conn_rate(results, kind, Route::TcpToUnix), 0),
                num(conn_rate(results, kind, Route::UnixToTcp), 0),
                redis::TESTS
                    .map(|t| num(redis_rate(results, kind, t), 0))
                    .join(" / "),
            );
        } else {
            let r = |cell| num(throughput_ratio(results, kind, cell), 2);
            let c = |cell| num(cpu_per_gb(results, kind, cell), 2);
            let idle = results.peers.get(&kind).and_then(|p| p.idle.as_ref());
            let _ = write!(
                row,
                " {} / {} | {} / {} | {} / {} | {} / {} | {} / {} µs | {} / {} | {} / {} | {} | {} | {} | {} |",
                r(CELLS[0]),
                r(CELLS[1]),
                r(CELLS[2]),
                r(CELLS[3]),
                c(CELLS[0]),
                c(CELLS[1]),
                c(CELLS[2]),
                c(CELLS[3]),
                num(added_rtt(results, kind, Route::TcpToUnix), 1),
                num(added_rtt(results, kind, Route::UnixToTcp), 1),
                num(syscalls_per_rt(results, kind, Route::TcpToUnix), 1),
                num(syscalls_per_rt(results, kind, Route::UnixToTcp), 1),
                num(conn_ratio(results, kind, Route::TcpToUnix), 2),
                num(conn_ratio(results, kind, Route::UnixToTcp), 2),
                bytes(idle.and_then(|i| i.per_connection())),
                idle.map_or("–".into(), |i| i.held.to_string()),
                pct(idle.and_then(|i| i.returned())),
                redis::TESTS
                    .map(|t| num(redis_ratio(results, kind, t), 2))
                    .join(" / "),
            );
        }
        let _ = writeln!(md, "{row}");
    }

    let _ = writeln!(
        md,
        "\nThe same throughput against the *slower* of the two direct paths (TCP or Unix, same direction): a relayed \
         connection has one leg of each kind, so this is the tighter bound.\n"
    );
    let _ = writeln!(md, "| peer | TCP→Unix up / down | Unix→TCP up / down |");
    let _ = writeln!(md, "|---|---|---|");
    for &kind in &peers_only {
        let r = |cell: (Route, Dir)| num(slower_ratio(results, kind, cell), 2);
        let _ = writeln!(
            md,
            "| {} | {} / {} | {} / {} |",
            kind.name(),
            r(CELLS[0]),
            r(CELLS[1]),
            r(CELLS[2]),
            r(CELLS[3])
        );
    }
    redis_section(&mut md, results, s);

    let _ = writeln!(md, "\n## Scaling (Unix→TCP)\n");
    let _ = writeln!(
        md,
        "Aggregate throughput (GB/s) of {} / {} / {} parallel bulk streams moving {} MiB between them, \
         and connections per second (8 client threads) while {} / {} idle connections are held open. \
         Spread: (max − min) / max.\n",
        s.streams[0],
        s.streams[1],
        s.streams[2],
        s.streams_total >> 20,
        s.open_before[0],
        s.open_before[1]
    );
    let _ = writeln!(
        md,
        "| peer | up, {0} / {1} / {2} streams (ratio to direct) | spread | down, {0} / {1} / {2} streams (ratio to direct) | spread | conn/s with {3} / {4} open | spread |",
        s.streams[0], s.streams[1], s.streams[2], s.open_before[0], s.open_before[1]
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for &kind in kinds {
        let row_for = |dir| {
            let values: Vec<Option<f64>> = s
                .streams
                .iter()
                .map(|n| streams(results, kind, dir, *n))
                .collect();
            let cells: Vec<String> = s
                .streams
                .iter()
                .zip(&values)
                .map(
                    |(n, v)| match (kind, ratio(*v, streams(results, Kind::Direct, dir, *n))) {
                        (Kind::Direct, _) | (_, None) => gb(*v),
                        (_, Some(r)) => format!("{} ({r:.2})", gb(*v)),
                    },
                )
                .collect();
            (cells.join(" / "), pct(spread(&values)))
        };
        let (up, up_spread) = row_for(Dir::Up);
        let (down, down_spread) = row_for(Dir::Down);
        let open: Vec<Option<f64>> = s
            .open_before
            .iter()
            .map(|n| conn_open(results, kind, *n))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {up} | {up_spread} | {down} | {down_spread} | {} | {} |",
            kind.name(),
            open.iter()
                .map(|v| num(*v, 0))
                .collect::<Vec<_>>()
                .join(" / "),
            pct(spread(&open)),
        );
    }

    for &kind in kinds {
        if let Some(pipes) = results
            .peers
            .get(&kind)
            .and_then(|p| p.pipes_after_streams.as_ref())
        {
            let _ = writeln!(
                md,
                "\n{}'s pipes after these runs (its pipe pool, plus its standard error; capacity from `F_GETPIPE_SZ`): {pipes}.",
                kind.name()
            );
        }
    }
    let _ = writeln!(md, "\n## Latency\n");
    let _ = writeln!(
        md,
        "Round trip of a {}-byte ping-pong (µs): median over {} messages, median of {} runs; pinned to CPU {} (p99 in brackets) and unpinned.\n",
        s.rtt_size, s.rtt_messages, s.rtt_reps, results.pinned_cpu
    );
    let _ = writeln!(
        md,
        "| peer | pinned TCP→Unix | pinned Unix→TCP | unpinned TCP→Unix | unpinned Unix→TCP |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for &kind in kinds {
        let Some(peer) = results.peers.get(&kind) else {
            continue;
        };
        let pinned = |route| {
            format!(
                "{} ({})",
                num(peer.rtt_pinned.get(&route).and_then(Series::median), 1),
                num(
                    peer.rtt_pinned_p99
                        .get(&route)
                        .and_then(|v| crate::median(v)),
                    1
                )
            )
        };
        let free = |route| num(peer.rtt_free.get(&route).and_then(Series::median), 1);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            kind.name(),
            pinned(Route::TcpToUnix),
            pinned(Route::UnixToTcp),
            free(Route::TcpToUnix),
            free(Route::UnixToTcp)
        );
    }

    syscalls_section(&mut md, results, s);
    handover_section(&mut md, results);

    let _ = writeln!(md, "\n## Idle connections (Unix→TCP)\n");
    let _ = writeln!(
        md,
        "Each relay freshly started with an open-file limit of {} (soft and hard), then {} idle connections opened one by one \
         (each checked with a 1-byte echo, 1 s allowed), stopping at the first that fails. Memory is the proportional set size \
         (PSS) summed over the relay's processes, so that a forking relay's shared pages are not counted once per process; RSS \
         is given too. Returned: the share of that growth given back once every connection has closed (the relay's descriptors \
         are back to their count before, plus one second).\n",
        crate::peers::NOFILE,
        s.idle_target
    );
    let _ = writeln!(
        md,
        "| peer | held | stopped because | PSS per conn | RSS per conn | fds per conn | PSS before / held / after close | returned |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for &kind in &peers_only {
        let Some(idle) = results.peers.get(&kind).and_then(|p| p.idle.as_ref()) else {
            continue;
        };
        let per =
            |a: u64, b: u64| (idle.held > 0).then(|| (a as f64 - b as f64) / idle.held as f64);
        let _ = writeln!(
            md,
            "| {} | {} of {} in {:.1} s | {} | {} | {} | {} | {} / {} / {} | {} |",
            kind.name(),
            idle.held,
            idle.attempted,
            idle.open_seconds,
            idle.stopped.as_deref().unwrap_or("–").replace('|', "/"),
            bytes(idle.per_connection()),
            bytes(per(idle.during.rss, idle.before.rss)),
            num(per(idle.during.fds, idle.before.fds), 1),
            bytes(Some(idle.before.pss as f64)),
            bytes(Some(idle.during.pss as f64)),
            bytes(Some(idle.after.pss as f64)),
            pct(idle.returned()),
        );
    }

    let _ = writeln!(md, "\n## Targets for simpletcpunixrelay\n");
    let _ = writeln!(md, "Informative: the benchmark never fails on numbers.\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---|---|");
    for (target, measured, met) in targets(results, s) {
        let _ = writeln!(
            md,
            "| {target} | {measured} | {} |",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }

    let errors: Vec<String> = kinds
        .iter()
        .flat_map(|k| {
            results
                .peers
                .get(k)
                .map(|p| p.errors.clone())
                .unwrap_or_default()
                .into_iter()
                .map(move |e| format!("{}: {e}", k.name()))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Failed measurements\n");
        for e in errors {
            let _ = writeln!(md, "- {}", e.replace('\n', " "));
        }
    }

    let _ = writeln!(md, "\n## How it is measured\n");
    let _ = writeln!(
        md,
        "- One backend process (this benchmark re-executed) serves a TCP socket on 127.0.0.1 and a Unix socket; \
         the client is the benchmark itself, with blocking sockets and {} KiB reads and writes. **TCP→Unix**: the relay \
         listens on 127.0.0.1 and connects to the Unix backend; **Unix→TCP** the other way round. \
         **direct** is the client connecting to that same backend itself (Unix for TCP→Unix, TCP for Unix→TCP): \
         what the client would get without any relay.\n\
         - Throughput: one connection moves {} MiB up (client → backend, which acknowledges the count) or down. \
         Runs alternate between peers, so background load hits all of them alike.\n\
         - CPU per GB: user + system time of the relay's process tree (`/proc/PID/stat`, reaped children \
         included, so socat's per-connection forks count) during the transfers, divided by the bytes.\n\
         - Latency: one connection, {} round trips of {} bytes after a warm-up; median per run. Pinned: the client thread, \
         a separate backend and separate relays all restricted to CPU {}, so every hand-off between threads or processes \
         costs a context switch on that CPU.\n\
         - System calls per round trip: the same pinned set-up, in separate runs under `strace -f -c` ({} round trips \
         on one warm connection, counted between attach and detach), summed over the relay's processes and threads.\n\
         - Connection rate: {} client threads for {:.1} s each connect, send 32 bytes, read the 32-byte answer and the \
         backend's close, then close.\n\
         - Relays run with `--connections-max 20000` where they have such a limit (simpletcpunixrelay, \
         systemd-socket-proxyd), haproxy with its default `maxconn` (derived from the file limit), socat with `fork` \
         and its default 8 KiB buffer, systemd-socket-proxyd under `systemd-socket-activate`. TCP_NODELAY everywhere.\n\
         - Redis: a fresh relay of each kind for the TCP→Unix route in front of the benchmark's own `redis-server`, \
         checked with a PING; one short warm-up run each, then runs of `redis-benchmark` (killed after {:.0} s), \
         alternating between peers.",
        crate::backend::CHUNK / 1024,
        s.bulk >> 20,
        s.rtt_messages,
        s.rtt_size,
        results.pinned_cpu,
        s.syscall_round_trips,
        s.conn_threads,
        s.conn_duration.as_secs_f64(),
        s.redis_timeout.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "\nRaw figures: `target/bench/results.json`. Chart: `bench.svg` beside this file.\n\n![chart](bench.svg)"
    );
    md
}

/// System calls per round trip, by route and system call.
fn syscalls_section(md: &mut String, results: &Results, s: &Settings) {
    let run = &results.syscalls;
    let _ = writeln!(md, "\n## System calls per round trip\n");
    if let Some(why) = &run.skipped {
        let _ = writeln!(
            md,
            "Not counted: {why} (install: {}).",
            syscalls::INSTALL_HINT
        );
        return;
    }
    let _ = writeln!(
        md,
        "What one {}-byte round trip costs the relay in system calls: `strace -f -c -q -o FILE -p PID …` ({}) attached to \
         every process of the relay (all their threads, and with `-f` anything they fork; for socat the listener and the \
         child relaying this connection) while one connection makes {} ping-pongs through the pinned relays of the latency \
         section, client pinned too. The connection is opened and warmed up ({} round trips) before strace attaches and \
         closed after it has detached (SIGINT), so its set-up and teardown are not counted. Separate runs: tracing slows \
         every call, so the latency figures above come from untraced runs. Calls per round trip, per system call those \
         made at least 0.05 times per round trip; in brackets the calls that failed (strace's errors column: it does not \
         say which error, on these non-blocking descriptors EAGAIN).\n",
        s.rtt_size,
        if run.version.is_empty() {
            "strace"
        } else {
            run.version.as_str()
        },
        s.syscall_round_trips,
        syscalls::WARM_UP,
    );
    let _ = writeln!(
        md,
        "| peer | route | calls per round trip | of which failed | processes / threads traced | system calls per round trip |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for &kind in results.kinds.iter().filter(|k| **k != Kind::Direct) {
        for route in Route::ALL {
            let Some(count) = syscall_count(results, kind, route) else {
                let _ = writeln!(
                    md,
                    "| {} | {} | – | – | – | not counted |",
                    kind.name(),
                    route.label()
                );
                continue;
            };
            let total = count.total();
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {} / {} | {} |",
                kind.name(),
                route.label(),
                count.per_round_trip(total.calls),
                count.per_round_trip(total.errors),
                count.processes,
                count.threads,
                count.describe(0.05),
            );
        }
    }
}

/// The real application: `redis-benchmark` through each relay.
fn redis_section(md: &mut String, results: &Results, s: &Settings) {
    let app = &results.redis;
    let _ = writeln!(md, "\n## A real application: Redis (TCP→Unix)\n");
    if let Some(why) = &app.skipped {
        let _ = writeln!(
            md,
            "Not measured: {why} (install: {}).",
            redis::INSTALL_HINT
        );
        return;
    }
    let _ = writeln!(
        md,
        "`redis-benchmark` ({}; {} requests from {} clients per run, one test per run, keep-alive, no pipelining) \
         against a `redis-server` ({}) that the benchmark starts on a Unix socket in its scratch directory \
         (`--port 0 --unixsocket PATH --save '' --appendonly no`, no configuration file). **direct**: \
         `redis-benchmark -s PATH`; through a relay listening on 127.0.0.1 and connecting to that socket: `{}`, \
         TEST being {}. \
         Requests per second as redis-benchmark reports them, median of {} run{} (ratio to direct in brackets), \
         alternating between peers; the relay's CPU (all its processes) per request. Client, server and relay share \
         the machine's CPUs, unpinned.\n",
        app.client_version,
        s.redis_requests,
        s.redis_clients,
        app.server_version,
        app.command,
        redis::TESTS.join(" and "),
        s.reps,
        if s.reps == 1 { "" } else { "s" },
    );
    let names = redis::TESTS.map(str::to_uppercase);
    let _ = writeln!(
        md,
        "| peer | {} | relay CPU per request {} |",
        names
            .iter()
            .map(|n| format!("{n} requests/s"))
            .collect::<Vec<_>>()
            .join(" | "),
        names.join(" / ")
    );
    let _ = writeln!(md, "|---|{}---|", "---|".repeat(names.len()));
    for &kind in &results.kinds {
        let rates: Vec<String> = redis::TESTS
            .iter()
            .map(|t| {
                let rate = num(redis_rate(results, kind, t), 0);
                match (kind, redis_ratio(results, kind, t)) {
                    (Kind::Direct, _) | (_, None) => rate,
                    (_, Some(r)) => format!("{rate} ({r:.2})"),
                }
            })
            .collect();
        let cpu = if kind == Kind::Direct {
            "–".to_string()
        } else {
            format!(
                "{} µs",
                redis::TESTS
                    .map(|t| num(redis_cpu(results, kind, t), 1))
                    .join(" / ")
            )
        };
        let _ = writeln!(md, "| {} | {} | {cpu} |", kind.name(), rates.join(" | "));
    }
}

/// The project's targets for the relay: (target, measured, met).
fn targets(results: &Results, s: &Settings) -> Vec<(String, String, Option<bool>)> {
    let me = Kind::Relay;
    let mut rows = Vec::new();
    let others: Vec<Kind> = results
        .kinds
        .iter()
        .copied()
        .filter(|k| !matches!(k, Kind::Direct | Kind::Relay | Kind::Candidate))
        .collect();
    let all = |values: &[Option<f64>], ok: &dyn Fn(f64) -> bool| {
        if values.iter().any(Option::is_none) {
            None
        } else {
            Some(values.iter().flatten().all(|v| ok(*v)))
        }
    };

    let ratios: Vec<Option<f64>> = CELLS
        .iter()
        .map(|c| throughput_ratio(results, me, *c))
        .collect();
    rows.push((
        "throughput ≥ 0.6 × direct, every cell".into(),
        ratios
            .iter()
            .map(|r| num(*r, 2))
            .collect::<Vec<_>>()
            .join(", "),
        all(&ratios, &|r| r >= 0.6),
    ));
    let behind: Vec<String> = CELLS
        .iter()
        .filter_map(|cell| {
            let mine = throughput(results, me, *cell)?.median()?;
            let best = others
                .iter()
                .filter_map(|k| Some((*k, throughput(results, *k, *cell)?.median()?)))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (mine < best.1).then(|| {
                format!(
                    "{} {}: {:.2} vs {} {:.2} GB/s",
                    cell.0.label(),
                    cell.1.key(),
                    mine / 1e9,
                    best.0.name(),
                    best.1 / 1e9
                )
            })
        })
        .collect();
    rows.push((
        "throughput ≥ the best peer, every cell".into(),
        if behind.is_empty() {
            "ahead everywhere".into()
        } else {
            format!("behind in {}", behind.join("; "))
        },
        (!others.is_empty()).then_some(behind.is_empty()),
    ));
    let cpu: Vec<Option<f64>> = CELLS.iter().map(|c| cpu_per_gb(results, me, *c)).collect();
    rows.push((
        "CPU ≤ 0.25 s per GB, both directions".into(),
        cpu.iter()
            .map(|r| num(*r, 2))
            .collect::<Vec<_>>()
            .join(", "),
        all(&cpu, &|v| v <= 0.25),
    ));
    for route in Route::ALL {
        let mine = added_rtt(results, me, route);
        let best = others
            .iter()
            .filter_map(|k| Some((*k, added_rtt(results, *k, route)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        rows.push((
            format!("added RTT pinned ≤ the best peer's, {}", route.label()),
            format!(
                "{} µs; best peer {}",
                num(mine, 1),
                best.map_or("–".into(), |(k, v)| format!("{} {v:.1} µs", k.name()))
            ),
            match (mine, best) {
                (Some(m), Some((_, b))) => Some(m <= b),
                _ => None,
            },
        ));
    }
    for route in Route::ALL {
        let mine = syscalls_per_rt(results, me, route);
        let proxyd = syscalls_per_rt(results, Kind::SocketProxyd, route);
        rows.push((
            format!(
                "system calls per round trip ≤ systemd-socket-proxyd's, {}",
                route.label()
            ),
            format!("{}; systemd-socket-proxyd {}", num(mine, 1), num(proxyd, 1)),
            match (mine, proxyd) {
                // Compared as printed, to one decimal.
                (Some(m), Some(p)) => Some((m * 10.0).round() <= (p * 10.0).round()),
                _ => None,
            },
        ));
    }
    let conn: Vec<Option<f64>> = Route::ALL
        .iter()
        .map(|r| conn_ratio(results, me, *r))
        .collect();
    rows.push((
        "conn/s ≥ 0.75 × direct".into(),
        conn.iter()
            .map(|r| num(*r, 2))
            .collect::<Vec<_>>()
            .join(", "),
        all(&conn, &|v| v >= 0.75),
    ));
    let idle = results.peers.get(&me).and_then(|p| p.idle.as_ref());
    let wanted = 9000.min(s.idle_target);
    rows.push((
        format!(
            "{wanted} idle connections under a {}-descriptor limit",
            crate::peers::NOFILE
        ),
        idle.map_or("–".into(), |i| format!("{} held", i.held)),
        idle.map(|i| i.held >= wanted),
    ));
    let per = idle.and_then(|i| i.per_connection());
    rows.push((
        "≤ 1 KiB user-space memory per idle connection".into(),
        bytes(per),
        per.map(|p| p <= 1024.0),
    ));
    let returned = idle.and_then(|i| i.returned());
    rows.push((
        "memory returned after they close (≥ 80%)".into(),
        pct(returned),
        returned.map(|r| r >= 0.8),
    ));
    for dir in [Dir::Up, Dir::Down] {
        let values: Vec<Option<f64>> = s
            .streams
            .iter()
            .map(|n| streams(results, me, dir, *n))
            .collect();
        let sp = spread(&values);
        rows.push((
            format!(
                "throughput at {} streams within 20%, Unix→TCP {}",
                s.streams.map(|n| n.to_string()).join("/"),
                dir.key()
            ),
            format!(
                "{} GB/s (spread {})",
                values
                    .iter()
                    .map(|v| gb(*v))
                    .collect::<Vec<_>>()
                    .join(" / "),
                pct(sp)
            ),
            sp.map(|v| v <= 0.2),
        ));
    }
    for dir in [Dir::Up, Dir::Down] {
        let ratios: Vec<Option<f64>> = s
            .streams
            .iter()
            .map(|n| {
                ratio(
                    streams(results, me, dir, *n),
                    streams(results, Kind::Direct, dir, *n),
                )
            })
            .collect();
        let sp = spread(&ratios);
        rows.push((
            format!(
                "… the same relative to direct (the machine's own spread removed), Unix→TCP {}",
                dir.key()
            ),
            format!(
                "{} (spread {})",
                ratios
                    .iter()
                    .map(|v| num(*v, 2))
                    .collect::<Vec<_>>()
                    .join(" / "),
                pct(sp)
            ),
            sp.map(|v| v <= 0.2),
        ));
    }
    let open: Vec<Option<f64>> = s
        .open_before
        .iter()
        .map(|n| conn_open(results, me, *n))
        .collect();
    let sp = spread(&open);
    rows.push((
        format!(
            "conn/s with {} open within 20%",
            s.open_before.map(|n| n.to_string()).join("/")
        ),
        format!(
            "{} (spread {})",
            open.iter()
                .map(|v| num(*v, 0))
                .collect::<Vec<_>>()
                .join(" / "),
            pct(sp)
        ),
        sp.map(|v| v <= 0.2),
    ));
    if let Some(case) = results
        .handover
        .cases
        .iter()
        .filter(|c| c.error.is_none())
        .max_by_key(|c| c.connections)
    {
        rows.push((
            format!(
                "hand-over pause with {} open < 100 ms, 0 bytes lost",
                case.connections
            ),
            format!(
                "{:.1} ms, {} bytes lost, {} of {} alive after",
                handover::ms(case.longest_pause),
                case.bytes_lost,
                case.alive_after,
                case.connections
            ),
            Some(
                case.longest_pause < std::time::Duration::from_millis(100)
                    && case.bytes_lost == 0
                    && case.alive_after == case.connections,
            ),
        ));
    }
    rows
}

/// The pause a hand-over restart costs (`handover.rs`).
fn handover_section(md: &mut String, results: &Results) {
    let run = &results.handover;
    let _ = writeln!(md, "\n## Hand-over restart\n");
    if let Some(why) = &run.skipped {
        let _ = writeln!(md, "Not measured: {why}.");
        return;
    }
    let _ = writeln!(
        md,
        "One ping-pong client sends {}-byte messages through the relay (Unix LISTEN, the backend's TCP echo) while \
         the other connections are held open; then SIGUSR2 (what `systemctl reload` sends with the templates), \
         the relay stores every connection in the file descriptor store and exits 3, and the next instance is \
         started at once with the store passed back, adopts everything and goes on. The benchmark plays systemd's \
         part (notification socket, store, `BARRIER=1`, `LISTEN_FDS`), as `tests/restart.rs` does; under systemd, \
         its own start-up of the next instance adds to the pause (`RestartSec=0` in the templates). The longest \
         round trip is the pause the client saw; every answer is compared with what was sent, and every held \
         connection makes one more exchange afterwards.\n",
        64
    );
    let _ = writeln!(
        md,
        "| open connections | longest pause | SIGUSR2 → next READY=1 | median round trip before | descriptors stored | round trips / bytes checked | bytes lost | alive after |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for case in &run.cases {
        match &case.error {
            Some(e) => {
                let _ = writeln!(md, "| {} | failed: {e} | | | | | | |", case.connections);
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} ms | {:.1} ms | {:.0} µs | {} | {} / {} | {} | {} of {} |",
                    case.connections,
                    handover::ms(case.longest_pause),
                    handover::ms(case.hand_over),
                    case.median_before.as_secs_f64() * 1e6,
                    case.stored,
                    case.round_trips,
                    case.bytes_checked,
                    case.bytes_lost,
                    case.alive_after,
                    case.connections
                );
            }
        }
    }
}

fn series_json(series: &Series) -> Json {
    Json::obj([
        ("samples", Json::nums(&series.samples)),
        ("median", Json::opt(series.median())),
        ("relay_cpu_seconds", Json::Num(series.cpu_seconds)),
        ("bytes", Json::Num(series.bytes as f64)),
        ("relay_cpu_seconds_per_gb", Json::opt(series.cpu_per_gb())),
    ])
}

fn count_json(count: &syscalls::Count) -> Json {
    let total = count.total();
    Json::obj([
        ("round_trips", Json::Num(count.round_trips as f64)),
        ("processes", Json::Num(count.processes as f64)),
        ("threads", Json::Num(count.threads as f64)),
        ("calls", Json::Num(total.calls as f64)),
        ("errors", Json::Num(total.errors as f64)),
        (
            "calls_per_round_trip",
            Json::opt(Some(count.total_per_round_trip())),
        ),
        (
            "errors_per_round_trip",
            Json::opt(Some(count.per_round_trip(total.errors))),
        ),
        (
            "by_syscall",
            Json::Obj(
                count
                    .top(0.0)
                    .into_iter()
                    .map(|(name, c)| {
                        (
                            name.to_string(),
                            Json::obj([
                                ("calls", Json::Num(c.calls as f64)),
                                ("errors", Json::Num(c.errors as f64)),
                                (
                                    "calls_per_round_trip",
                                    Json::opt(Some(count.per_round_trip(c.calls))),
                                ),
                                (
                                    "errors_per_round_trip",
                                    Json::opt(Some(count.per_round_trip(c.errors))),
                                ),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ),
    ])
}

fn memory_json(m: &crate::procfs::Memory) -> Json {
    Json::obj([
        ("rss_bytes", Json::Num(m.rss as f64)),
        ("pss_bytes", Json::Num(m.pss as f64)),
        ("fds", Json::Num(m.fds as f64)),
        ("processes", Json::Num(m.processes as f64)),
    ])
}

fn json(results: &Results, s: &Settings) -> Json {
    let mut peers = Vec::new();
    for (kind, peer) in &results.peers {
        let mut fields = vec![
            ("version".to_string(), Json::str(peer.version.clone())),
            (
                "skipped".to_string(),
                peer.skipped.clone().map_or(Json::Null, Json::Str),
            ),
            (
                "errors".to_string(),
                Json::Arr(peer.errors.iter().cloned().map(Json::Str).collect()),
            ),
        ];
        let mut throughput = Vec::new();
        for ((route, dir), series) in &peer.throughput {
            let mut entry = vec![(
                format!("{}/{}", route.key(), dir.key()),
                series_json(series),
            )];
            if let Json::Obj(fields) = &mut entry[0].1 {
                fields.push((
                    "ratio_to_direct".into(),
                    Json::opt(throughput_ratio(results, *kind, (*route, *dir))),
                ));
                fields.push((
                    "ratio_to_slower_direct".into(),
                    Json::opt(slower_ratio(results, *kind, (*route, *dir))),
                ));
            }
            throughput.extend(entry);
        }
        fields.push(("throughput_bytes_per_second".into(), Json::Obj(throughput)));
        fields.push((
            "connections_per_second".into(),
            Json::Obj(
                peer.conn_rate
                    .iter()
                    .map(|(route, series)| {
                        let mut value = series_json(series);
                        if let Json::Obj(fields) = &mut value {
                            fields.retain(|(k, _)| k == "samples" || k == "median");
                            fields.push((
                                "ratio_to_direct".into(),
                                Json::opt(conn_ratio(results, *kind, *route)),
                            ));
                        }
                        (route.key().to_string(), value)
                    })
                    .collect(),
            ),
        ));
        let rtt = |map: &std::collections::BTreeMap<Route, Series>| {
            Json::Obj(
                map.iter()
                    .map(|(route, series)| {
                        (
                            route.key().to_string(),
                            Json::obj([
                                ("median_us_per_run", Json::nums(&series.samples)),
                                ("median_us", Json::opt(series.median())),
                            ]),
                        )
                    })
                    .collect(),
            )
        };
        fields.push(("rtt_pinned".into(), rtt(&peer.rtt_pinned)));
        fields.push((
            "rtt_pinned_p99_us_per_run".into(),
            Json::Obj(
                peer.rtt_pinned_p99
                    .iter()
                    .map(|(route, v)| (route.key().to_string(), Json::nums(v)))
                    .collect(),
            ),
        ));
        fields.push((
            "rtt_pinned_added_us".into(),
            Json::Obj(
                Route::ALL
                    .iter()
                    .map(|r| {
                        (
                            r.key().to_string(),
                            Json::opt(added_rtt(results, *kind, *r)),
                        )
                    })
                    .collect(),
            ),
        ));
        fields.push(("rtt_unpinned".into(), rtt(&peer.rtt_free)));
        fields.push((
            "syscalls_pinned".into(),
            Json::Obj(
                peer.syscalls
                    .iter()
                    .map(|(route, count)| (route.key().to_string(), count_json(count)))
                    .collect(),
            ),
        ));
        fields.push((
            "parallel_streams_unix_tcp_bytes_per_second".into(),
            Json::Obj(
                peer.streams
                    .iter()
                    .map(|((dir, n), series)| (format!("{}/{n}", dir.key()), series_json(series)))
                    .collect(),
            ),
        ));
        fields.push((
            "pipes_after_streams".into(),
            peer.pipes_after_streams
                .clone()
                .map_or(Json::Null, Json::Str),
        ));
        fields.push((
            "connections_per_second_with_open_unix_tcp".into(),
            Json::Obj(
                peer.conn_rate_open
                    .iter()
                    .map(|(n, series)| {
                        (
                            n.to_string(),
                            Json::obj([
                                ("samples", Json::nums(&series.samples)),
                                ("median", Json::opt(series.median())),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ));
        fields.push((
            "idle".into(),
            peer.idle.as_ref().map_or(Json::Null, |idle| {
                Json::obj([
                    ("attempted", Json::Num(idle.attempted as f64)),
                    ("held", Json::Num(idle.held as f64)),
                    (
                        "stopped",
                        idle.stopped.clone().map_or(Json::Null, Json::Str),
                    ),
                    ("open_seconds", Json::Num(idle.open_seconds)),
                    ("before", memory_json(&idle.before)),
                    ("held_open", memory_json(&idle.during)),
                    ("after_close", memory_json(&idle.after)),
                    ("pss_bytes_per_connection", Json::opt(idle.per_connection())),
                    ("returned_fraction", Json::opt(idle.returned())),
                ])
            }),
        ));
        fields.push((
            "redis_tcp_unix_requests_per_second".into(),
            Json::Obj(
                peer.redis
                    .iter()
                    .map(|(test, series)| {
                        (
                            test.to_string(),
                            Json::obj([
                                ("samples", Json::nums(&series.samples)),
                                ("median", Json::opt(series.median())),
                                (
                                    "ratio_to_direct",
                                    Json::opt(redis_ratio(results, *kind, test)),
                                ),
                                ("requests", Json::Num(series.requests as f64)),
                                ("relay_cpu_seconds", Json::Num(series.cpu_seconds)),
                                (
                                    "relay_cpu_us_per_request",
                                    Json::opt(series.cpu_us_per_request()),
                                ),
                            ]),
                        )
                    })
                    .collect(),
            ),
        ));
        peers.push((kind.name().to_string(), Json::Obj(fields)));
    }
    Json::obj([
        ("mode", Json::str(if s.quick { "quick" } else { "full" })),
        ("date", Json::str(today())),
        ("machine", Json::str(machine())),
        ("seconds", Json::Num(results.seconds)),
        (
            "load_average_before",
            Json::str(results.load_before.clone()),
        ),
        (
            "load_average_before_idle_phase",
            Json::str(results.load_after.clone()),
        ),
        ("pinned_cpu", Json::Num(results.pinned_cpu as f64)),
        (
            "settings",
            Json::obj([
                ("repetitions", Json::Num(s.reps as f64)),
                ("bulk_bytes", Json::Num(s.bulk as f64)),
                ("rtt_messages", Json::Num(s.rtt_messages as f64)),
                ("rtt_repetitions", Json::Num(s.rtt_reps as f64)),
                ("rtt_message_bytes", Json::Num(s.rtt_size as f64)),
                (
                    "syscall_round_trips",
                    Json::Num(s.syscall_round_trips as f64),
                ),
                ("conn_rate_threads", Json::Num(s.conn_threads as f64)),
                (
                    "conn_rate_seconds",
                    Json::Num(s.conn_duration.as_secs_f64()),
                ),
                ("streams_total_bytes", Json::Num(s.streams_total as f64)),
                ("idle_attempted", Json::Num(s.idle_target as f64)),
                ("relay_nofile_limit", Json::Num(crate::peers::NOFILE as f64)),
            ]),
        ),
        (
            "notes",
            Json::Arr(results.notes.iter().cloned().map(Json::Str).collect()),
        ),
        (
            "redis",
            Json::obj([
                ("server", Json::str(results.redis.server_version.clone())),
                ("benchmark", Json::str(results.redis.client_version.clone())),
                (
                    "skipped",
                    results.redis.skipped.clone().map_or(Json::Null, Json::Str),
                ),
                ("route", Json::str(Route::TcpToUnix.key())),
                ("command", Json::str(results.redis.command.clone())),
                ("requests_per_run", Json::Num(s.redis_requests as f64)),
                ("clients", Json::Num(s.redis_clients as f64)),
                ("repetitions", Json::Num(s.reps as f64)),
                (
                    "tests",
                    Json::Arr(redis::TESTS.iter().map(|t| Json::str(*t)).collect()),
                ),
            ]),
        ),
        (
            "handover",
            Json::Arr(
                results
                    .handover
                    .cases
                    .iter()
                    .map(|c| {
                        Json::obj([
                            ("connections", Json::Num(c.connections as f64)),
                            ("longest_pause_ms", Json::Num(handover::ms(c.longest_pause))),
                            ("sigusr2_to_ready_ms", Json::Num(handover::ms(c.hand_over))),
                            (
                                "median_round_trip_before_us",
                                Json::Num(c.median_before.as_secs_f64() * 1e6),
                            ),
                            ("descriptors_stored", Json::Num(c.stored as f64)),
                            ("round_trips", Json::Num(c.round_trips as f64)),
                            ("bytes_checked", Json::Num(c.bytes_checked as f64)),
                            ("bytes_lost", Json::Num(c.bytes_lost as f64)),
                            ("alive_after", Json::Num(c.alive_after as f64)),
                            ("error", c.error.clone().map_or(Json::Null, Json::Str)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "syscalls",
            Json::obj([
                ("tool", Json::str(results.syscalls.version.clone())),
                (
                    "skipped",
                    results
                        .syscalls
                        .skipped
                        .clone()
                        .map_or(Json::Null, Json::Str),
                ),
                ("command", Json::str("strace -f -c -q -o FILE -p PID …")),
                ("round_trips", Json::Num(s.syscall_round_trips as f64)),
                ("warm_up_round_trips", Json::Num(syscalls::WARM_UP as f64)),
                ("message_bytes", Json::Num(s.rtt_size as f64)),
                ("pinned_cpu", Json::Num(results.pinned_cpu as f64)),
            ]),
        ),
        ("peers", Json::Obj(peers)),
    ])
}

// ---- the chart ----

fn color(kind: Kind) -> &'static str {
    match kind {
        Kind::Direct => "#8c8c8c",
        Kind::Relay => "#1f77b4",
        Kind::Socat => "#ff7f0e",
        Kind::Haproxy => "#2ca02c",
        Kind::SocketProxyd => "#9467bd",
        Kind::Candidate => "#17becf",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One bar per peer: its value, if measured.
type Bars = Vec<(Kind, Option<f64>)>;

/// One labelled group of bars per item, one bar per peer.
fn bar_groups<T: Copy>(
    items: &[T],
    label: impl Fn(T) -> String,
    peers: &[Kind],
    value: impl Fn(Kind, T) -> Option<f64>,
) -> Vec<(String, Bars)> {
    items
        .iter()
        .map(|item| {
            (
                label(*item),
                peers.iter().map(|k| (*k, value(*k, *item))).collect(),
            )
        })
        .collect()
}

/// One panel of horizontal bars: groups of one bar per peer.
struct Panel {
    title: String,
    groups: Vec<(String, Bars)>,
    /// Vertical reference lines: (value, label).
    lines: Vec<(f64, String)>,
    format: fn(f64) -> String,
    log: bool,
}

const WIDTH: f64 = 900.0;
const LABEL_W: f64 = 170.0;
const BAR_W: f64 = 560.0;
const BAR_H: f64 = 13.0;

impl Panel {
    fn height(&self) -> f64 {
        let bars: usize = self.groups.iter().map(|(_, bars)| bars.len()).sum();
        40.0 + bars as f64 * (BAR_H + 3.0) + self.groups.len() as f64 * 10.0 + 10.0
    }

    fn render(&self, svg: &mut String, top: f64) {
        let values = self
            .groups
            .iter()
            .flat_map(|(_, bars)| bars.iter().filter_map(|(_, v)| *v))
            .chain(self.lines.iter().map(|(v, _)| *v))
            .filter(|v| v.is_finite());
        let max = values.clone().fold(0.0_f64, f64::max).max(1e-9) * 1.08;
        let min_positive = values.filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
        let floor = if min_positive == f64::MAX {
            1.0
        } else {
            min_positive / 2.0
        };
        let x = |v: f64| -> f64 {
            let fraction = if self.log {
                if v <= floor {
                    0.0
                } else {
                    (v / floor).log10() / (max / floor).log10()
                }
            } else {
                v / max
            };
            LABEL_W + BAR_W * fraction.clamp(0.0, 1.0)
        };
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" class="title">{}</text>"#,
            top + 20.0,
            escape(&self.title)
        );
        let mut y = top + 34.0;
        let body_top = y;
        for (label, bars) in &self.groups {
            let group_h = bars.len() as f64 * (BAR_H + 3.0);
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" class="group" text-anchor="end">{}</text>"#,
                LABEL_W - 8.0,
                y + group_h / 2.0 + 4.0,
                escape(label)
            );
            for (kind, value) in bars {
                let (width, text) = match value {
                    Some(v) if v.is_finite() => (x(*v) - LABEL_W, (self.format)(*v)),
                    _ => (0.0, "n/a".to_string()),
                };
                let _ = writeln!(
                    svg,
                    r#"<rect x="{LABEL_W:.1}" y="{y:.1}" width="{width:.1}" height="{BAR_H:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    color(*kind),
                    kind.name(),
                    escape(&text)
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" class="value">{}</text>"#,
                    LABEL_W + width + 4.0,
                    y + BAR_H - 2.5,
                    escape(&text)
                );
                y += BAR_H + 3.0;
            }
            y += 10.0;
        }
        for (value, label) in &self.lines {
            let lx = x(*value);
            let _ = writeln!(
                svg,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{lx:.1}" y2="{:.1}" class="ref"/><text x="{lx:.1}" y="{:.1}" class="reflabel" text-anchor="middle">{}</text>"#,
                body_top - 4.0,
                y - 8.0,
                body_top - 6.0,
                escape(label)
            );
        }
    }
}

fn svg(results: &Results) -> String {
    let peers: Vec<Kind> = results
        .kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Direct)
        .collect();
    let everyone = results.kinds.clone();
    let cell_label = |(route, dir): (Route, Dir)| format!("{} {}", route.label(), dir.key());
    let mut panels = vec![
        Panel {
            title: "Throughput, ratio to a direct connection (higher is better)".into(),
            groups: bar_groups(&CELLS, cell_label, &peers, |k, cell| {
                throughput_ratio(results, k, cell)
            }),
            lines: vec![(1.0, "direct".into()), (0.6, "0.6".into())],
            format: |v| format!("{v:.2}"),
            log: false,
        },
        Panel {
            title: "Relay CPU seconds per GB relayed (lower is better)".into(),
            groups: bar_groups(&CELLS, cell_label, &peers, |k, cell| {
                cpu_per_gb(results, k, cell)
            }),
            lines: vec![(0.25, "0.25".into())],
            format: |v| format!("{v:.2} s"),
            log: false,
        },
        Panel {
            title: "Added round trip, 64-byte ping-pong, all pinned to one CPU (lower is better)"
                .into(),
            groups: bar_groups(
                &Route::ALL,
                |route| route.label().to_string(),
                &peers,
                |k, route| added_rtt(results, k, route),
            ),
            lines: vec![],
            format: |v| format!("{v:.1} µs"),
            log: false,
        },
        Panel {
            title: match &results.syscalls.skipped {
                None => "System calls per round trip, the relay's processes, strace -c (lower is better)"
                    .into(),
                Some(why) => format!("System calls per round trip: not counted ({why})"),
            },
            groups: bar_groups(
                &Route::ALL,
                |route| route.label().to_string(),
                &peers,
                |k, route| syscalls_per_rt(results, k, route),
            ),
            lines: vec![],
            format: |v| format!("{v:.1}"),
            log: false,
        },
        Panel {
            title: "Connections per second, ratio to direct (higher is better)".into(),
            groups: bar_groups(
                &Route::ALL,
                |route| route.label().to_string(),
                &peers,
                |k, route| conn_ratio(results, k, route),
            ),
            lines: vec![(1.0, "direct".into()), (0.75, "0.75".into())],
            format: |v| format!("{v:.2}"),
            log: false,
        },
        Panel {
            title: match &results.redis.skipped {
                None => "Redis requests/s through each relay (redis-benchmark, TCP→Unix), ratio to direct (higher is better)".into(),
                Some(why) => format!("Redis through the relay: not measured ({why})"),
            },
            groups: bar_groups(
                &redis::TESTS,
                |test| test.to_uppercase(),
                &peers,
                |k, test| redis_ratio(results, k, test),
            ),
            lines: vec![(1.0, "direct".into())],
            format: |v| format!("{v:.2}"),
            log: false,
        },
        Panel {
            title: "User-space memory per held idle connection, PSS (log scale, lower is better)"
                .into(),
            groups: vec![(
                "per connection".into(),
                peers
                    .iter()
                    .map(|k| {
                        (
                            *k,
                            results
                                .peers
                                .get(k)
                                .and_then(|p| p.idle.as_ref())
                                .and_then(|i| i.per_connection()),
                        )
                    })
                    .collect(),
            )],
            lines: vec![(1024.0, "1 KiB".into())],
            format: |v| bytes(Some(v)),
            log: true,
        },
        Panel {
            title: "Idle connections held under a 20000-descriptor limit".into(),
            groups: vec![(
                "held".into(),
                peers
                    .iter()
                    .map(|k| {
                        (
                            *k,
                            results
                                .peers
                                .get(k)
                                .and_then(|p| p.idle.as_ref())
                                .map(|i| i.held as f64),
                        )
                    })
                    .collect(),
            )],
            lines: vec![(9000.0, "9000".into())],
            format: |v| format!("{v:.0}"),
            log: false,
        },
    ];
    let mut stream_groups = Vec::new();
    for dir in [Dir::Up, Dir::Down] {
        let counts: Vec<usize> = results
            .peers
            .get(&Kind::Relay)
            .map(|p| {
                p.streams
                    .keys()
                    .filter(|(d, _)| *d == dir)
                    .map(|(_, n)| *n)
                    .collect()
            })
            .unwrap_or_default();
        for n in counts {
            stream_groups.push((
                format!("{} ×{n}", dir.key()),
                everyone
                    .iter()
                    .map(|k| (*k, streams(results, *k, dir, n).map(|v| v / 1e9)))
                    .collect(),
            ));
        }
    }
    panels.push(Panel {
        title: "Aggregate throughput of parallel streams, Unix→TCP, GB/s".into(),
        groups: stream_groups,
        lines: vec![],
        format: |v| format!("{v:.2}"),
        log: false,
    });
    let open_counts: Vec<usize> = results
        .peers
        .get(&Kind::Relay)
        .map(|p| p.conn_rate_open.keys().copied().collect())
        .unwrap_or_default();
    panels.push(Panel {
        title: "Connections per second with idle connections open, Unix→TCP".into(),
        groups: open_counts
            .iter()
            .map(|n| {
                (
                    format!("{n} open"),
                    everyone
                        .iter()
                        .map(|k| (*k, conn_open(results, *k, *n)))
                        .collect(),
                )
            })
            .collect(),
        lines: vec![],
        format: |v| format!("{v:.0}"),
        log: false,
    });

    let legend_h = 30.0;
    let header_h = 40.0;
    let total_h: f64 = header_h + legend_h + panels.iter().map(Panel::height).sum::<f64>() + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{total_h:.0}" viewBox="0 0 {WIDTH:.0} {total_h:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg,
        "<style>.title{{font-size:14px;font-weight:bold}}.group{{font-size:12px}}.value{{font-size:11px}}\
         .ref{{stroke:#444;stroke-dasharray:4 3}}.reflabel{{font-size:10px;fill:#444}}.legend{{font-size:12px}}</style>"
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="24" style="font-size:17px;font-weight:bold">simpletcpunixrelay and its peers — {}, {}</text>"#,
        today(),
        escape(&machine())
    );
    let mut lx = 10.0;
    for kind in &everyone {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            header_h,
            color(*kind),
            lx + 16.0,
            header_h + 10.5,
            kind.name()
        );
        lx += 30.0 + kind.name().len() as f64 * 7.0;
    }
    let mut top = header_h + legend_h;
    for panel in &panels {
        panel.render(&mut svg, top);
        top += panel.height();
    }
    svg.push_str("</svg>\n");
    svg
}
