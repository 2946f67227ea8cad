//! The relays under test: this project's binary and the peers it is compared
//! with (socat, haproxy, systemd-socket-proxyd), each started as a child
//! process listening on loopback or a Unix socket in the benchmark's own
//! directory, with a fixed open-file limit, optionally pinned to one CPU.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{self, Addr};

/// Open-file limit every relay runs with (soft and hard).
pub const NOFILE: u64 = 20_000;
/// `--connections-max` given to the relays that have one: far above any
/// count the benchmark opens, so that no run measures the limit instead.
pub const CONNECTIONS_MAX: &str = "20000";

/// What the client talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// No relay: the client connects to the backend itself.
    Direct,
    /// This project's relay.
    Relay,
    Socat,
    Haproxy,
    SocketProxyd,
    /// Another build of the relay, or the same one with other environment
    /// variables, to compare a change in the same run (`BENCH_CANDIDATE`,
    /// `BENCH_CANDIDATE_ENV`).
    Candidate,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Direct,
        Kind::Relay,
        Kind::Candidate,
        Kind::Socat,
        Kind::Haproxy,
        Kind::SocketProxyd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "simpletcpunixrelay",
            Kind::Socat => "socat",
            Kind::Haproxy => "haproxy",
            Kind::SocketProxyd => "systemd-socket-proxyd",
            Kind::Candidate => "candidate",
        }
    }

    /// How to get it, for the note printed when it is missing.
    pub fn install_hint(self) -> &'static str {
        match self {
            Kind::Socat => "apt-get install socat",
            Kind::Haproxy => "apt-get install haproxy",
            Kind::SocketProxyd => {
                "ships with systemd (apt-get install systemd; needs systemd-socket-activate too)"
            }
            Kind::Candidate => "set BENCH_CANDIDATE=PATH and/or BENCH_CANDIDATE_ENV='K=V ...'",
            Kind::Direct | Kind::Relay => "",
        }
    }
}

/// Which way a relay bridges the two socket families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// The relay listens on TCP, the backend is a Unix socket.
    TcpToUnix,
    /// The relay listens on a Unix socket, the backend is TCP.
    UnixToTcp,
}

impl Route {
    pub const ALL: [Route; 2] = [Route::TcpToUnix, Route::UnixToTcp];

    pub fn label(self) -> &'static str {
        match self {
            Route::TcpToUnix => "TCP→Unix",
            Route::UnixToTcp => "Unix→TCP",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Route::TcpToUnix => "tcp-unix",
            Route::UnixToTcp => "unix-tcp",
        }
    }
}

/// Where the programs are.
pub struct Tools {
    pub relay: PathBuf,
    /// The candidate's binary and extra environment, if one was asked for.
    candidate: Option<(PathBuf, Vec<(String, String)>)>,
    socat: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    proxyd: Option<PathBuf>,
    activate: Option<PathBuf>,
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Tools {
    pub fn find(relay: PathBuf) -> Tools {
        let binary = std::env::var_os("BENCH_CANDIDATE").map(PathBuf::from);
        let env: Vec<(String, String)> = std::env::var("BENCH_CANDIDATE_ENV")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let candidate = (binary.is_some() || !env.is_empty())
            .then(|| (binary.unwrap_or_else(|| relay.clone()), env));
        Tools {
            relay,
            candidate,
            socat: find_in_path("socat"),
            haproxy: find_in_path("haproxy"),
            proxyd: [
                "/lib/systemd/systemd-socket-proxyd",
                "/usr/lib/systemd/systemd-socket-proxyd",
            ]
            .map(PathBuf::from)
            .into_iter()
            .find(|p| p.is_file()),
            activate: find_in_path("systemd-socket-activate"),
        }
    }

    /// Whether `kind` can be run here.
    pub fn has(&self, kind: Kind) -> bool {
        match kind {
            Kind::Direct | Kind::Relay => true,
            Kind::Candidate => self.candidate.is_some(),
            Kind::Socat => self.socat.is_some(),
            Kind::Haproxy => self.haproxy.is_some(),
            Kind::SocketProxyd => self.proxyd.is_some() && self.activate.is_some(),
        }
    }

    /// The first line of the program's version output.
    pub fn version(&self, kind: Kind) -> String {
        let (program, flag) = match kind {
            Kind::Direct => return String::new(),
            Kind::Relay => (Some(&self.relay), "--version"),
            Kind::Candidate => {
                let Some((binary, env)) = &self.candidate else {
                    return String::new();
                };
                let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                return format!("{} {}", env.join(" "), binary.display())
                    .trim()
                    .to_string();
            }
            Kind::Socat => (self.socat.as_ref(), "-V"),
            Kind::Haproxy => (self.haproxy.as_ref(), "-v"),
            Kind::SocketProxyd => (self.proxyd.as_ref(), "--version"),
        };
        let Some(program) = program else {
            return String::new();
        };
        let output = Command::new(program)
            .arg(flag)
            .stdin(Stdio::null())
            .output();
        let text = output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.contains("version") || l.starts_with("systemd") || l.contains(". "))
            .or_else(|| text.lines().next())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// Makes a child die with the benchmark (`PR_SET_PDEATHSIG`; children are
/// only ever spawned from the main thread), optionally pinned to `cpu` (all
/// its threads and forks inherit the mask) and with an open-file limit.
/// The first line `program ARG` prints (its version, for `--version`,
/// `-V`…), or nothing if it cannot run.
pub fn first_line_of(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

pub fn prepare(command: &mut Command, cpu: Option<usize>, nofile: Option<u64>) {
    // SAFETY: cpu_set_t is plain data that CPU_ZERO/CPU_SET write inside.
    let cpus = cpu.map(|cpu| unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        set
    });
    let limit = nofile.map(|n| libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    });
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls on values prepared beforehand.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(limit) = &limit
                && libc::setrlimit(libc::RLIMIT_NOFILE, limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(set) = &cpus
                && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running relay.
pub struct Instance {
    pub kind: Kind,
    /// Where clients connect.
    pub listen: Addr,
    child: Child,
    /// The last lines it wrote on standard error.
    log: Arc<Mutex<Vec<String>>>,
}

impl Instance {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its recent standard error, for error messages.
    pub fn log_tail(&self) -> String {
        self.log.lock().expect("not poisoned").join(" | ")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // socat's per-connection children first, then the process itself.
        for pid in crate::procfs::tree(self.child.id()).into_iter().rev() {
            // SAFETY: kill takes a process id and a signal number; these
            // are processes this benchmark started (or their forks).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (for peers that cannot report the port
/// they bound).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `kind` bridging `route`: listening on loopback TCP or on a Unix
/// socket in `dir`, connecting to `target` (the benchmark's backend). Waits
/// until a connection through it gets an echo from the backend.
pub fn start(
    tools: &Tools,
    kind: Kind,
    route: Route,
    target: &Addr,
    dir: &Path,
    tag: &str,
    cpu: Option<usize>,
) -> io::Result<Instance> {
    let mut instance = spawn(tools, kind, route, target, dir, tag, cpu)?;
    wait_until_relaying(&mut instance, |listen| {
        client::open_idle(listen, Duration::from_secs(2)).map(drop)
    })?;
    Ok(instance)
}

/// Starts `kind` as [`start`] does, towards any `target` (such as a real
/// server), without waiting until it relays: that is
/// [`wait_until_relaying`] with a check that suits the target.
pub fn spawn(
    tools: &Tools,
    kind: Kind,
    route: Route,
    target: &Addr,
    dir: &Path,
    tag: &str,
    cpu: Option<usize>,
) -> io::Result<Instance> {
    let unix_listen = dir.join(format!("{tag}.sock"));
    let ours = matches!(kind, Kind::Relay | Kind::Candidate);
    let tcp_port = if route == Route::TcpToUnix && !ours {
        free_port()?
    } else {
        0
    };
    let listen = match route {
        Route::TcpToUnix => Addr::Tcp(([127, 0, 0, 1], tcp_port).into()),
        Route::UnixToTcp => Addr::Unix(unix_listen.clone()),
    };
    let missing = || io::Error::other(format!("{} is not installed", kind.name()));
    let mut command = match kind {
        Kind::Direct => return Err(io::Error::other("direct has no process")),
        Kind::Relay | Kind::Candidate => {
            let mut command = match (kind, &tools.candidate) {
                (Kind::Candidate, Some((binary, env))) => {
                    let mut command = Command::new(binary);
                    command.envs(env.iter().map(|(k, v)| (k, v)));
                    command
                }
                (Kind::Candidate, None) => return Err(missing()),
                _ => Command::new(&tools.relay),
            };
            let listen_arg = match &listen {
                Addr::Tcp(_) => "127.0.0.1:0".to_string(),
                Addr::Unix(path) => format!("unix:{}", path.display()),
            };
            command
                .args(["--connections-max", CONNECTIONS_MAX])
                .arg(listen_arg)
                .arg(match target {
                    Addr::Tcp(a) => a.to_string(),
                    Addr::Unix(path) => format!("unix:{}", path.display()),
                });
            command
        }
        Kind::Socat => {
            let mut command = Command::new(tools.socat.as_ref().ok_or_else(missing)?);
            // socat's defaults otherwise (8 KiB buffer), as it is usually run.
            let listen_arg = match &listen {
                Addr::Tcp(a) => format!(
                    "TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=4096",
                    a.port()
                ),
                Addr::Unix(path) => format!("UNIX-LISTEN:{},fork,backlog=4096", path.display()),
            };
            let connect_arg = match target {
                Addr::Tcp(a) => format!("TCP:{a},nodelay"),
                Addr::Unix(path) => format!("UNIX-CONNECT:{}", path.display()),
            };
            command.arg(listen_arg).arg(connect_arg);
            command
        }
        Kind::Haproxy => {
            let config = dir.join(format!("{tag}.haproxy.cfg"));
            let bind = match &listen {
                Addr::Tcp(a) => a.to_string(),
                Addr::Unix(path) => format!("unix@{}", path.display()),
            };
            let server = match target {
                Addr::Tcp(a) => a.to_string(),
                Addr::Unix(path) => format!("unix@{}", path.display()),
            };
            // Plain TCP mode with haproxy's defaults (maxconn derived from
            // the open-file limit, no splicing); long timeouts so idle
            // connections stay.
            std::fs::write(
                &config,
                format!(
                    "global\n  log stderr format raw local0 warning\n\
                     defaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
                     frontend bench\n  bind {bind}\n  default_backend backend\n\
                     backend backend\n  server backend {server}\n"
                ),
            )?;
            let mut command = Command::new(tools.haproxy.as_ref().ok_or_else(missing)?);
            command.arg("-db").arg("-f").arg(&config);
            command
        }
        Kind::SocketProxyd => {
            let mut command = Command::new(tools.activate.as_ref().ok_or_else(missing)?);
            command
                .arg("-l")
                .arg(listen.to_string())
                .arg(tools.proxyd.as_ref().ok_or_else(missing)?)
                .arg(format!("--connections-max={CONNECTIONS_MAX}"))
                .arg(target.to_string());
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    prepare(&mut command, cpu, Some(NOFILE));
    let mut child = command.spawn()?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (said_listening, listening) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = said_listening.send(rest.trim().to_string());
                }
                let mut log = log.lock().expect("not poisoned");
                if log.len() >= 20 {
                    log.remove(0);
                }
                log.push(line);
            }
        });
    }
    let mut instance = Instance {
        kind,
        listen,
        child,
        log,
    };
    if ours {
        let address = listening
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| {
                io::Error::other(format!(
                    "the relay did not say 'listening on' within 10 s: {}",
                    instance.log_tail()
                ))
            })?;
        if let Addr::Tcp(_) = instance.listen {
            instance.listen = Addr::Tcp(address.parse().map_err(|_| {
                io::Error::other(format!("cannot parse the relay's address {address:?}"))
            })?);
        }
    }
    Ok(instance)
}

/// Waits (10 s at most) until `probe`, given where `instance` listens,
/// succeeds: a connection through it reached the target.
pub fn wait_until_relaying(
    instance: &mut Instance,
    probe: impl Fn(&Addr) -> io::Result<()>,
) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let error = match probe(&instance.listen) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Ok(Some(status)) = instance.child.try_wait() {
            return Err(io::Error::other(format!(
                "{} exited ({status}): {}",
                instance.kind.name(),
                instance.log_tail()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{} is not relaying after 10 s ({error}): {}",
                instance.kind.name(),
                instance.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
