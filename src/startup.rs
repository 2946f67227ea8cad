//! The start-up procedure, in the order that makes the sandbox cover every
//! thread: everything that needs privileges or the filesystem happens
//! first, single-threaded; the async runtime starts last.

use std::process::ExitCode;
use std::rc::Rc;

use crate::config::Config;
use crate::failure::Failure;
use crate::listener::{self, FileOptions, Opened};
use crate::{
    cli, endpoint, handover, log, notify, passed, resolver, runtime, sandbox, server, shutdown,
};
use crate::{debug, info, warn};

/// The program: parses the command line, runs the relay, and maps the
/// outcome to the exit status the specification gives it.
pub fn main() -> ExitCode {
    // Arguments as bytes: a path need not be UTF-8.
    let mut args = std::env::args_os();
    let program = args
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "simpletcpunixrelay".into());
    let program = program
        .rsplit('/')
        .next()
        .unwrap_or("simpletcpunixrelay")
        .to_string();
    let args: Vec<std::ffi::OsString> = args.collect();
    // Before parsing, so that even a usage error is logged the journal's way.
    log::init(log::Level::Info);
    end_on_panic();
    // The resolver helper is this program too, under a name of its own:
    // it never reaches the command line.
    resolver::helper_if_asked();
    let result = match cli::parse(&program, &args) {
        Ok(cli::Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Run(config)) => run(*config),
        Err(failure) => Err(failure),
    };
    match result {
        Ok(server::Served::HandedOver) => ExitCode::from(handover::EXIT_STATUS),
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            let kind = match failure {
                Failure::Usage(_) => "usage error",
                Failure::Startup(_) => "error",
            };
            log::fatal(format_args!(
                "{program}: {kind}: {}",
                cli::one_line(failure.message())
            ));
            ExitCode::from(failure.exit_code())
        }
    }
}

/// No thread may die while the process goes on looking healthy: a panic
/// anywhere (the engine's thread, the runtime's, the reactor's) ends the
/// relay with status 1 and one error line saying where. The listeners stay
/// in systemd's store, if they are there, for the next instance.
fn end_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::error!(
            "internal failure in thread '{}': {}{place}; exiting",
            thread.name().unwrap_or("unnamed"),
            payload.replace('\n', " ")
        );
        std::process::exit(1);
    }));
}

/// `--check`: everything a start would check before it binds, and nothing
/// else (`systemctl reload` runs this first, so that a typo fails the
/// reload instead of the next instance).
fn check(config: &Config) -> Result<server::Served, Failure> {
    listener::check(&config.listen)?;
    if config.allow.is_active() && matches!(config.listen, endpoint::Endpoint::Tcp { .. }) {
        return Err(Failure::Usage(format!(
            "--allow-uid/--allow-gid: LISTEN '{}' is TCP (TCP clients have no credentials)",
            config.listen
        )));
    }
    sandbox::check_strict(&sandbox::Policy::derive(config)).map_err(Failure::Startup)?;
    if resolves(config) {
        resolver::check()?;
    }
    log::write(
        log::Level::Info,
        true,
        format_args!(
            "check: the configuration is valid: {} -> {}",
            config.listen, config.connect
        ),
    );
    Ok(server::Served::Checked)
}

/// Runs the relay until a clean stop or a hand-over.
fn run(config: Config) -> Result<server::Served, Failure> {
    log::init(config.level);
    log::set_timestamps(config.log_time);
    if config.check {
        return check(&config);
    }
    let ready_fd = config.ready_fd.map(take_ready_fd).transpose()?;
    // Every descriptor socket activation or the store passed, taken once:
    // LISTEN takes its own, then the hand-over the stored connections.
    let mut passed = passed::take_all().map_err(|e| match config.listen {
        endpoint::Endpoint::SdListen(_) => Failure::Usage(format!(
            "LISTEN '{}': bad socket activation environment: {e}",
            config.listen
        )),
        _ => Failure::Startup(format!("bad socket activation environment: {e}")),
    })?;
    let passed_count = passed.len();
    // 1. Open LISTEN with plain blocking calls: no threads exist yet.
    let (opened, stale) = listener::open(
        &config.listen,
        FileOptions {
            mode: config.socket_mode,
            group: config.socket_group,
        },
        &mut passed,
    )?;
    if config.allow.is_active()
        && let Opened::Listeners(listeners) = &opened
        && listeners
            .iter()
            .any(|l| l.socket.local_addr().is_ok_and(|a| a.as_socket().is_some()))
    {
        return Err(Failure::Usage(format!(
            "--allow-uid/--allow-gid: LISTEN '{}' includes a TCP socket (TCP clients have no credentials)",
            config.listen
        )));
    }
    // Connections a previous instance stored, taken over (whatever LISTEN).
    let (adopted, orphans) = handover::adopt(&mut passed);
    // The rest is left open as it came, never used: a socket of another
    // name keeps its clients waiting in the backlog (`sd-listen:NAME`),
    // rather than refusing them.
    for rest in passed {
        rest.fd.map(std::os::fd::IntoRawFd::into_raw_fd);
    }
    // What stays in the store: everything passed but the connections.
    let kept = passed_count - orphans.len() - adopted.iter().map(|a| a.names.len()).sum::<usize>();
    raise_fd_limit();
    // 2. Host names for CONNECT are resolved by a helper process with a
    //    policy of its own, executed before the sandbox forbids exec.
    if resolves(&config) {
        resolver::spawn(config.sandbox)?;
    }
    // 3. Signals are queued from here on, so a stop is always graceful.
    let signals = shutdown::Signals::install()
        .map_err(|e| Failure::Startup(format!("cannot install signal handlers: {e}")))?;
    // 4. The notification socket is connected before the sandbox, which
    //    would refuse an abstract one.
    notify::connect();
    // All listeners share one name in the store: once stale ones are gone
    // from it, those that stay are stored again (after the removal, in
    // order, so that systemd does not take them for duplicates).
    let restore = stale.0 > 0;
    if restore {
        notify::remove_stored(listener::STORED_NAME);
    }
    let mut opened = opened;
    let mut store = server::Store {
        adopted,
        occupied: None,
    };
    if config.fd_store
        && let Opened::Listeners(listeners) = &mut opened
    {
        let stored = match config.listen {
            // The .socket unit keeps those; the store is for connections
            // (its sockets count as stored: erring on the safe side).
            endpoint::Endpoint::SdListen(_) | endpoint::Endpoint::Fd(_) => {
                notify::connected().then_some(0)
            }
            _ => store_listeners(listeners, restore),
        };
        let adopted_listeners = listeners.iter().filter(|l| l.from_store).count();
        let gone = if restore {
            stale.0 + adopted_listeners
        } else {
            0
        };
        store.occupied = stored.map(|new| kept.saturating_sub(gone) + new);
    }
    // 5. Confine the process while it has a single thread.
    confine(&config)?;
    // 6. Only now start the other threads: the engine that moves the
    //    bytes, then the runtime.
    crate::engine::start()
        .map_err(|e| Failure::Startup(format!("cannot start the relay engine: {e}")))?;
    runtime::start_reactor()
        .map_err(|e| Failure::Startup(format!("cannot start the runtime: {e}")))?;
    let config = Rc::new(config);
    let signals = signals
        .into_async()
        .map_err(|e| Failure::Startup(e.to_string()))?;
    runtime::block_on(async move {
        notify::start();
        resolver::start()?;
        // Broken connections and unknown names must not stay in the store.
        for name in orphans {
            notify::remove_stored(&name);
        }
        let stops = shutdown::Stops::new(signals);
        match server::serve(opened, store, config, stops, ready_fd).await {
            Ok(server::Served::Unreached) => Err(Failure::Startup(
                "the inherited connection could not be relayed".into(),
            )),
            Ok(served) => Ok(served),
            Err(e) => Err(Failure::Startup(e.to_string())),
        }
    })
}

/// Hands the listeners to systemd's file descriptor store, so that the
/// next instance adopts them; their socket files then stay at exit (the
/// unit's `RuntimeDirectory=` goes on `systemctl stop`). Returns how many
/// were added to the store (adopted ones are there already, unless `all`:
/// their entries were removed).
fn store_listeners(listeners: &mut listener::Listeners, all: bool) -> Option<usize> {
    use std::os::fd::AsFd;
    // An adopted listener is still in the store (systemd keeps it until
    // the unit stops).
    let fds: Vec<_> = listeners
        .iter()
        .filter(|l| all || !l.from_store)
        .map(|l| l.socket.as_fd())
        .collect();
    let stored = if fds.is_empty() {
        Ok(())
    } else {
        notify::store(listener::STORED_NAME, &fds)
    };
    match stored {
        Ok(()) => {
            let count = fds.len();
            for listener in listeners.iter_mut() {
                listener.keep_file();
            }
            info!(
                "listeners handed to systemd's file descriptor store: a restart refuses nobody, SIGUSR2 (systemctl reload) hands over open connections too"
            );
            Some(count)
        }
        Err(e) => {
            warn!(
                "cannot store the listeners ({e}): clients that connect during a restart will be refused"
            );
            None
        }
    }
}

/// Whether CONNECT is a host name, resolved by the helper at each connect.
fn resolves(config: &Config) -> bool {
    matches!(
        config.connect,
        endpoint::Target::Tcp {
            host: endpoint::TargetHost::Name(_),
            ..
        }
    )
}

/// Takes `--ready-fd N`: it must be open, and is closed on exec.
fn take_ready_fd(fd: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, Failure> {
    passed::take(fd).ok_or_else(|| {
        Failure::Usage(format!(
            "--ready-fd: descriptor {fd} is not open (s6-supervise opens the one named in notification-fd)"
        ))
    })
}

/// Applies the self-sandbox and logs what was enforced.
fn confine(config: &Config) -> Result<(), Failure> {
    let policy = sandbox::Policy::derive(config);
    sandbox::check_strict(&policy).map_err(Failure::Startup)?;
    let report = sandbox::apply(&policy).map_err(Failure::Startup)?;
    let complete = report.complete();
    if policy.mode == crate::config::SandboxMode::Off || !complete {
        warn!("{report}");
    } else {
        info!("{report}");
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: every connection needs
/// two descriptors, and the default soft limit (1024) caps the relay at a few
/// hundred connections.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), Some(maximum)) = (limit.current, limit.maximum) else {
        return;
    };
    if current < maximum
        && setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        )
        .is_ok()
    {
        debug!("open file limit raised from {current} to {maximum}");
    }
}
