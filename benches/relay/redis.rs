//! A real application through each relay (issue 13): `redis-benchmark`
//! against a `redis-server` that the benchmark starts itself, listening on a
//! Unix socket in the run's scratch directory (no TCP port, no persistence,
//! no configuration file: nothing of the machine's own Redis, if it has one,
//! is read or touched). The client reaches it directly (`-s PATH`) and
//! through every relay bridging loopback TCP to that socket (`-h 127.0.0.1
//! -p PORT`), the TCP→Unix route, as a Redis behind a relay is usually
//! reached. Figures are requests per second as `redis-benchmark` reports
//! them, and the relay's CPU per request.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{self, Addr};
use crate::peers::{self, Instance, Kind, Route, Tools};
use crate::{Results, Settings};

/// The `redis-benchmark` tests run, one invocation each.
pub const TESTS: [&str; 2] = ["set", "get"];

/// How to get the programs, for the note printed when one is missing.
pub const INSTALL_HINT: &str = "apt-get install redis-server redis-tools";

/// What the application phase of a run was, beside the per-peer figures.
#[derive(Default)]
pub struct AppRun {
    pub server_version: String,
    pub client_version: String,
    /// Why it was not measured at all.
    pub skipped: Option<String>,
    /// The command line through a relay (`PORT` for the relay's port).
    pub command: String,
}

/// Requests per second of one test through one peer, repeated.
#[derive(Default)]
pub struct Series {
    pub samples: Vec<f64>,
    /// CPU seconds of the relay's process tree during the samples.
    pub cpu_seconds: f64,
    /// Requests made during the samples.
    pub requests: u64,
}

impl Series {
    pub fn median(&self) -> Option<f64> {
        crate::median(&self.samples)
    }

    /// The relay's CPU time per request, µs.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        (self.requests > 0 && self.cpu_seconds > 0.0)
            .then(|| self.cpu_seconds * 1e6 / self.requests as f64)
    }
}

/// A `redis-server` of the benchmark's own.
struct Server {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `program` on a Unix socket in `dir` (a directory of its own
    /// is made there) and waits (10 s at most) until it answers PING.
    fn start(program: &Path, dir: &Path) -> io::Result<Server> {
        let data = dir.join("redis");
        std::fs::create_dir_all(&data)?;
        let socket = data.join("redis.sock");
        let log = data.join("redis.log");
        let mut command = Command::new(program);
        // No configuration file: the arguments are the whole configuration.
        command
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&data)
            .args(["--daemonize", "no", "--logfile", ""])
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log)?,
            ));
        // Dies with the benchmark; its own open-file limit (the benchmark's,
        // raised) so that maxclients is not cut down.
        peers::prepare(&mut command, None, None);
        let mut server = Server {
            child: command.spawn()?,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let error = match ping(&Addr::Unix(server.socket.clone())) {
                Ok(()) => return Ok(server),
                Err(e) => e,
            };
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(io::Error::other(format!(
                    "redis-server exited ({status}): {}",
                    server.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis-server does not answer after 10 s ({error}): {}",
                    server.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One PING through `addr`, answered with PONG.
fn ping(addr: &Addr) -> io::Result<()> {
    let mut socket = client::connect(addr, Duration::from_secs(2))?;
    socket.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    socket.read_exact(&mut answer)?;
    if &answer == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "PING answered {:?}",
            String::from_utf8_lossy(&answer)
        )))
    }
}

/// The arguments that say where `redis-benchmark` connects.
fn target_args(addr: &Addr) -> Vec<String> {
    match addr {
        Addr::Unix(path) => vec!["-s".into(), path.display().to_string()],
        Addr::Tcp(a) => vec![
            "-h".into(),
            a.ip().to_string(),
            "-p".into(),
            a.port().to_string(),
        ],
    }
}

/// The rest of the command line: `requests` requests of `test` from
/// `clients` connections, as CSV.
fn load_args(test: &str, requests: u64, clients: usize) -> Vec<String> {
    [
        "-n",
        &requests.to_string(),
        "-c",
        &clients.to_string(),
        "-t",
        test,
        "--csv",
    ]
    .map(str::to_string)
    .to_vec()
}

/// Runs `redis-benchmark` once against `addr`, killed after `timeout`;
/// returns the requests per second it reports for `test`.
fn run_benchmark(
    program: &Path,
    addr: &Addr,
    test: &str,
    requests: u64,
    clients: usize,
    timeout: Duration,
) -> io::Result<f64> {
    let mut command = Command::new(program);
    command
        .args(target_args(addr))
        .args(load_args(test, requests, clients))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    peers::prepare(&mut command, None, None);
    let mut child = command.spawn()?;
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("piped")));
    let stderr = collect(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let said = || {
        let text = format!("{stdout} {stderr}");
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        text.chars().take(300).collect::<String>()
    };
    let Some(status) = status else {
        return Err(io::Error::other(format!(
            "redis-benchmark still running after {timeout:?}, killed: {}",
            said()
        )));
    };
    let rate = stdout.lines().find_map(|line| {
        let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
        let name = fields.next()?;
        if !name.eq_ignore_ascii_case(test) {
            return None;
        }
        fields.next()?.parse::<f64>().ok()
    });
    match rate {
        Some(rate) if status.success() && rate > 0.0 => Ok(rate),
        _ => Err(io::Error::other(format!(
            "redis-benchmark {status}, no figure for {test}: {}",
            said()
        ))),
    }
}

/// The application phase: starts a `redis-server`, a relay of each kind in
/// `kinds` in front of it, and measures them all in turn.
pub fn measure(tools: &Tools, dir: &Path, kinds: &[Kind], s: &Settings, results: &mut Results) {
    let server_program = peers::find_in_path("redis-server");
    let client_program = peers::find_in_path("redis-benchmark");
    let (Some(server_program), Some(client_program)) = (server_program, client_program) else {
        let missing: Vec<&str> = ["redis-server", "redis-benchmark"]
            .into_iter()
            .filter(|name| peers::find_in_path(name).is_none())
            .collect();
        let note = format!(
            "{} not found: the Redis measurement is skipped (install: {INSTALL_HINT})",
            missing.join(" and ")
        );
        println!("note: {note}");
        results.notes.push(note);
        results.redis.skipped = Some(format!("{} not installed", missing.join(" and ")));
        return;
    };
    // "Redis server v=7.0.15 sha=… malloc=… build=…": the version is enough.
    results.redis.server_version = crate::peers::first_line_of(&server_program, "--version")
        .split(" sha=")
        .next()
        .unwrap_or("")
        .to_string();
    results.redis.client_version = crate::peers::first_line_of(&client_program, "--version");
    results.redis.command = format!(
        "redis-benchmark -h 127.0.0.1 -p PORT {}",
        load_args("TEST", s.redis_requests, s.redis_clients).join(" ")
    );
    println!("redis: starting redis-server on a Unix socket");
    let server = match Server::start(&server_program, dir) {
        Ok(server) => server,
        Err(e) => {
            let note = format!("the Redis measurement is skipped: {e}");
            println!("note: {note}");
            results.notes.push(note);
            results.redis.skipped = Some(format!("redis-server did not start: {e}"));
            return;
        }
    };
    let backend = Addr::Unix(server.socket.clone());
    let mut lineup: Vec<(Kind, Addr, Option<Instance>)> = Vec::new();
    for &kind in kinds {
        if kind == Kind::Direct {
            lineup.push((kind, backend.clone(), None));
            continue;
        }
        let started = peers::spawn(
            tools,
            kind,
            Route::TcpToUnix,
            &backend,
            dir,
            &format!("redis-{}", kind.name()),
            None,
        )
        .and_then(|mut instance| {
            peers::wait_until_relaying(&mut instance, ping)?;
            Ok(instance)
        });
        match started {
            Ok(instance) => lineup.push((kind, instance.listen.clone(), Some(instance))),
            Err(e) => results.error(kind, format!("redis: cannot start for TCP→Unix: {e}")),
        }
    }
    let run = |addr: &Addr, test: &str, requests: u64| {
        run_benchmark(
            &client_program,
            addr,
            test,
            requests,
            s.redis_clients,
            s.redis_timeout,
        )
    };
    println!("redis-benchmark warm-up");
    for (kind, addr, _) in &lineup {
        if let Err(e) = run(addr, "set", (s.redis_requests / 10).max(1000)) {
            results.error(*kind, format!("redis warm-up: {e}"));
        }
    }
    for _ in 0..s.reps {
        for test in TESTS {
            println!("redis-benchmark {test} (TCP→Unix)");
            for (kind, addr, instance) in &lineup {
                let pid = instance.as_ref().map(Instance::pid);
                let cpu_before = crate::cpu_of(pid);
                match run(addr, test, s.redis_requests) {
                    Ok(rate) => {
                        // Let a forking peer's children exit and be reaped.
                        std::thread::sleep(Duration::from_millis(20));
                        let cpu = crate::cpu_of(pid) - cpu_before;
                        println!("  {:<22} {rate:.0} requests/s  cpu {cpu:.2}s", kind.name());
                        let series = results.peer(*kind).redis.entry(test).or_default();
                        series.samples.push(rate);
                        series.cpu_seconds += cpu;
                        series.requests += s.redis_requests;
                    }
                    Err(e) => results.error(*kind, format!("redis {test}: {e}")),
                }
            }
        }
    }
    drop(lineup);
    drop(server);
}
