//! The command line: argh parses it, then every value is checked and turned
//! into a [`Config`]. Anything wrong is a [`Failure::Usage`] (exit status 2)
//! naming the argument, found before the relay touches the system.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;
use std::time::Duration;

use argh::{ArgsInfo, FromArgs};

use crate::config::{Config, SandboxMode};
use crate::endpoint::{Endpoint, Role, Target, UnixAddr, parse_number};
use crate::failure::Failure;
use crate::identity::{Allowlist, ProxyVersion};
use crate::log::Level;
use crate::timespan::{self, Span};

/// A systemd time span as an argh value.
#[derive(Debug, Clone, Copy)]
struct SpanArg(Span);

impl FromStr for SpanArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if is_placeholder(text) {
            return Err(NOT_UTF8.into());
        }
        timespan::parse(text).map(SpanArg)
    }
}

/// A count written with digits only, as systemd reads numbers (`+5`, ` 5`
/// and `5x` are refused).
#[derive(Debug, Clone, Copy)]
struct CountArg(usize);

impl FromStr for CountArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if is_placeholder(text) {
            return Err(NOT_UTF8.into());
        }
        parse_number(text)
            .map(CountArg)
            .ok_or_else(|| format!("'{text}' is not a number"))
    }
}

/// What a value that is not UTF-8 is told.
const NOT_UTF8: &str = "the value is not valid UTF-8";

/// argh parses `&str`: an argument that is not UTF-8 stands in for it as
/// `\0N\0` (N its index), which no real argument can contain, and is put
/// back where a path is allowed (LISTEN, CONNECT).
fn placeholder(index: usize) -> String {
    format!("\0{index}\0")
}

fn is_placeholder(text: &str) -> bool {
    text.starts_with('\0')
}

const SECONDS_10: SpanArg = SpanArg(Some(Duration::from_secs(10)));
const SECONDS_30: SpanArg = SpanArg(Some(Duration::from_secs(30)));
const INFINITY: SpanArg = SpanArg(None);

#[derive(FromArgs, ArgsInfo)]
/// Relay stream connections between TCP and Unix sockets, in either direction:
/// accept on LISTEN, connect to CONNECT, copy bytes both ways until both sides are done.
#[argh(
    note = "Endpoints (LISTEN and CONNECT):
  HOST:PORT, tcp:HOST:PORT    TCP; LISTEN: IP literal, localhost or empty (:PORT = all interfaces);
                              CONNECT: any host name, resolved at each connect; port 0 on LISTEN = any free port
  [IPV6]:PORT                 TCP over IPv6
  PATH (containing /), unix:PATH   Unix socket file (./sock for the current directory)
  @NAME, unix:@NAME           Linux abstract Unix socket
  sd-listen, sd-listen:NAME   LISTEN only: sockets passed by systemd socket activation (named: FileDescriptorName=);
                              LISTEN_PID is optional (systemfd --no-pid, listenfd)
  fd:N                        LISTEN only: inherited fd N; a listening socket is served,
                              a connected one is relayed once, then the relay exits
Time spans use systemd syntax: 90, 90s, 500ms, 5min 20s, 1h30min, 1.5h, infinity,
  with every systemd unit (ns, us, ms, s, min, h, d, w, M = month, y = year); 0 means no limit.
Each listener logs 'listening on ADDR' (also with -q) once the relay is ready.
Signals: SIGTERM/SIGINT stop gracefully (a second one at once; connections still open are
  cut, TCP peers get a reset); SIGUSR2 (systemctl reload) hands open connections to the next
  instance through systemd's file descriptor store (--fd-store) and exits 3, or drains and exits 3
  without one; SIGHUP is logged and ignored (nothing to reload).
Sandbox (--sandbox): no capabilities, no_new_privs, Landlock, and a seccomp allowlist of system calls:
  sockets   accept4 connect shutdown socket (TCP, Unix stream), the socket options the relay uses
  bytes     splice pipe2 read write recv*/send* (data, PROXY headers, NOTIFY_SOCKET)
  waiting   epoll_* ppoll eventfd2 timerfd_* (the engine, the reactor, timeouts)
  process   threads only (clone with CLONE_THREAD), memory (never executable), signals, time, exit
  files     statx unlink (its socket file at exit); open/openat get EACCES
  Any other call (execve, bind, listen, ptrace, mount, unshare, ...) ends the relay with a line naming
  it (exit 159); SIMPLETCPUNIXRELAY_SECCOMP=log lets such calls through, logged by the kernel.",
    example = "Expose a TCP-only service as a Unix socket:\n  $ {command_name} --socket-mode 0660 /run/foobar-unix/socket 127.0.0.1:8080\nRe-expose a Unix socket on TCP:\n  $ {command_name} 127.0.0.1:8000 /run/app.sock",
    error_code(
        0,
        "clean stop: signal, --exit-idle-time, or a single fd:N connection done"
    ),
    error_code(
        1,
        "runtime or startup failure (address in use, missing directory, --sandbox strict not satisfiable, ...)"
    ),
    error_code(2, "usage error: bad endpoint, unknown option, malformed value"),
    error_code(
        3,
        "after SIGUSR2: connections handed to the file descriptor store (or drained): start the next instance"
    ),
    error_code(
        159,
        "a system call outside the seccomp allowlist, after one error line naming it"
    )
)]
struct Args {
    /// where to accept connections (see Endpoints)
    #[argh(positional, arg_name = "LISTEN")]
    listen: String,

    /// where to connect for each accepted connection (see Endpoints)
    #[argh(positional, arg_name = "CONNECT")]
    connect: String,

    /// most connections relayed at once; more clients wait in the listen backlog (default 256)
    #[argh(option, short = 'c', arg_name = "N", default = "CountArg(256)")]
    connections_max: CountArg,

    /// give up connecting to CONNECT after SPAN, all addresses together (default 10s; 0: no limit)
    #[argh(option, arg_name = "SPAN", default = "SECONDS_10")]
    connect_timeout: SpanArg,

    /// close a connection after SPAN without a byte in either direction (default infinity; 0: no limit)
    #[argh(option, arg_name = "SPAN", default = "INFINITY")]
    idle_timeout: SpanArg,

    /// exit 0 after SPAN with no open connection (default infinity)
    #[argh(option, arg_name = "SPAN", default = "INFINITY")]
    exit_idle_time: SpanArg,

    /// on SIGTERM/SIGINT, how long open connections may go on before they are cut (default 30s; 0: no limit)
    #[argh(option, arg_name = "SPAN", default = "SECONDS_30")]
    shutdown_timeout: SpanArg,

    /// permissions (octal, e.g. 0660) of the Unix socket file LISTEN creates (default: umask)
    #[argh(option, arg_name = "MODE")]
    socket_mode: Option<String>,

    /// group (name or number) of the Unix socket file LISTEN creates (default: the process's)
    #[argh(option, arg_name = "GROUP")]
    socket_group: Option<String>,

    /// self-confinement after start-up: best-effort, strict or off (default best-effort)
    #[argh(option, arg_name = "MODE", default = "String::from(\"best-effort\")")]
    sandbox: String,

    /// send CONNECT a PROXY protocol header with the client's address first: v1 or v2 (default: none)
    #[argh(option, arg_name = "VERSION")]
    proxy_protocol: Option<String>,

    /// accept only Unix clients running as this user (id or name; repeatable)
    #[argh(option, arg_name = "UID")]
    allow_uid: Vec<String>,

    /// accept only Unix clients in this group (id or name, primary or supplementary; repeatable)
    #[argh(option, arg_name = "GID")]
    allow_gid: Vec<String>,

    /// retry a refused or missing CONNECT (a backend still starting) with a short backoff until --connect-timeout, instead of closing the client at once
    #[argh(switch)]
    connect_retry: bool,

    /// SO_KEEPALIVE on the TCP sockets, probing after SPAN without traffic, so that dead peers of idle connections are noticed (default: off)
    #[argh(option, arg_name = "SPAN")]
    keepalive: Option<SpanArg>,

    /// once ready (when READY=1 is sent), write a newline to descriptor N and close it (s6's notification-fd)
    #[argh(option, arg_name = "N")]
    ready_fd: Option<CountArg>,

    /// hand the listeners to systemd's file descriptor store once bound, and adopt them from it at the next start, so that clients arriving during a restart wait in the backlog instead of being refused; SIGUSR2 then hands over open connections too (needs FileDescriptorStoreMax= > 0; implied when systemd sets $FDSTORE)
    #[argh(switch)]
    fd_store: bool,

    /// check the command line and exit: parse every option, look up users and groups, check LISTEN's directory and the endpoints; bind, create and send nothing (exit 0 if a start would get this far, else the exit status it would have); systemctl reload runs it first
    #[argh(switch)]
    check: bool,

    /// print a completion script for SHELL (bash, zsh or fish) and exit
    #[argh(option, arg_name = "SHELL")]
    #[allow(dead_code)] // handled before argh runs, so that no endpoints are needed
    completions: Option<String>,

    /// start each log line with a UTC timestamp: yes or no (default yes; never in the journal); no under s6-log, svlogd or another logger that stamps lines itself
    #[argh(option, arg_name = "BOOL")]
    log_time: Option<String>,

    /// log errors only (and the 'listening on' lines)
    #[argh(switch, short = 'q')]
    quiet: bool,

    /// also log one line per connection when it ends: peer, bytes each way, duration
    #[argh(switch, short = 'v')]
    verbose: bool,

    /// print the version and exit
    #[argh(switch)]
    #[allow(dead_code)] // handled before argh runs, so that no endpoints are needed
    version: bool,
}

/// What the command line asks for.
pub enum Command {
    /// Print this text to standard output and exit 0 (`--help`, `--version`).
    Print(String),
    /// Run the relay.
    Run(Box<Config>),
}

/// Whether `option` (`--idle-timeout`, `-c`) takes a value, so that a `-h`
/// right after it is that value, not a request for help.
fn takes_a_value(option: &str) -> bool {
    Args::get_args_info().flags.iter().any(|flag| {
        matches!(flag.kind, argh::FlagInfoKind::Option { .. })
            && (flag.long == option || flag.short.is_some_and(|c| option == format!("-{c}")))
    })
}

/// Parses the arguments after the program name, as the bytes Linux passed.
pub fn parse(program: &str, args: &[OsString]) -> Result<Command, Failure> {
    let before_dashdash: Vec<&OsString> = args.iter().take_while(|a| *a != "--").collect();
    if before_dashdash.iter().any(|a| *a == "--version") {
        return Ok(Command::Print(format!(
            "{program} {}\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if let Some(at) = before_dashdash.iter().position(|a| *a == "--completions") {
        let shell = before_dashdash.get(at + 1).and_then(|s| s.to_str());
        return crate::completions::script(program, &Args::get_args_info(), shell)
            .map(Command::Print)
            .map_err(|r| Failure::Usage(format!("--completions: {r}")));
    }
    // -h is --help, unless it is the value of an option.
    let args: Vec<OsString> = args
        .iter()
        .enumerate()
        .map(|(index, arg)| {
            let value_of_option = index > 0 && args[index - 1].to_str().is_some_and(takes_a_value);
            let before_dashdash = index < before_dashdash.len();
            if arg == "-h" && !value_of_option && before_dashdash {
                OsString::from("--help")
            } else {
                arg.clone()
            }
        })
        .collect();
    let args = args.as_slice();
    let mut texts: Vec<String> = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        match arg.to_str() {
            Some(text) => texts.push(text.to_owned()),
            None if arg.as_bytes().starts_with(b"-") => {
                return Err(Failure::Usage(format!(
                    "'{}': unrecognized option, and not valid UTF-8 (see --help)",
                    arg.to_string_lossy()
                )));
            }
            None => texts.push(placeholder(index)),
        }
    }
    // The placeholders, written back as the user sees them, for messages.
    let shown = |text: &str| {
        let mut text = text.to_owned();
        for (index, arg) in args.iter().enumerate() {
            text = text.replace(&placeholder(index), &arg.to_string_lossy());
        }
        text
    };
    let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let parsed = match Args::from_args(&[program], &strs) {
        Ok(parsed) => parsed,
        Err(exit) if exit.status.is_ok() => {
            // argh's own help line, with the short form this program adds.
            let help = exit.output.replace(
                "  --help, help      display usage information",
                "  -h, --help        display usage information",
            );
            return Ok(Command::Print(help));
        }
        Err(exit) => {
            let reason = exit.output.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(Failure::Usage(format!("{} (see --help)", shown(&reason))));
        }
    };
    // The original bytes of an endpoint argument.
    let original = |text: &str| -> OsString {
        args.iter()
            .enumerate()
            .find(|(index, _)| placeholder(*index) == text)
            .map_or_else(|| OsString::from(text), |(_, arg)| arg.clone())
    };
    let listen = original(&parsed.listen);
    let connect = original(&parsed.connect);
    parsed
        .validate(&listen, &connect)
        .map(|config| Command::Run(Box::new(config)))
}

/// The value of a string option, which must be UTF-8.
fn text<'a>(option: &str, value: &'a str) -> Result<&'a str, Failure> {
    if is_placeholder(value) {
        Err(Failure::Usage(format!("{option}: {NOT_UTF8}")))
    } else {
        Ok(value)
    }
}

/// A timeout of 0 means no timeout, as it does for systemd's own
/// (`TimeoutStopSec=0`, `TimeoutIdleSec=0`).
fn zero_is_infinity(span: Span) -> Span {
    span.filter(|d| !d.is_zero())
}

impl Args {
    fn validate(self, listen_arg: &OsStr, connect_arg: &OsStr) -> Result<Config, Failure> {
        let usage = |what: &str, reason: String| Failure::Usage(format!("{what}: {reason}"));
        let listen = Endpoint::parse_os(listen_arg, Role::Listen)
            .map_err(|r| usage(&format!("LISTEN '{}'", listen_arg.to_string_lossy()), r))?;
        let connect = Endpoint::parse_os(connect_arg, Role::Connect)
            .and_then(Target::try_from)
            .map_err(|r| usage(&format!("CONNECT '{}'", connect_arg.to_string_lossy()), r))?;
        let connections_max = self.connections_max.0;
        if connections_max == 0 {
            return Err(usage("--connections-max", "must be at least 1".into()));
        }
        if self.exit_idle_time.0 == Some(Duration::ZERO) {
            return Err(usage(
                "--exit-idle-time",
                "0 would exit before serving anyone; give a span such as 30s, or infinity".into(),
            ));
        }
        let creates_socket_file = matches!(listen, Endpoint::Unix(UnixAddr::Path(_)));
        let socket_mode = match &self.socket_mode {
            None => None,
            Some(_) if !creates_socket_file => {
                return Err(usage(
                    "--socket-mode",
                    "LISTEN is not a Unix socket path".into(),
                ));
            }
            Some(value) => Some(
                parse_mode(text("--socket-mode", value)?).map_err(|r| usage("--socket-mode", r))?,
            ),
        };
        let socket_group = match &self.socket_group {
            None => None,
            Some(_) if !creates_socket_file => {
                return Err(usage(
                    "--socket-group",
                    "LISTEN is not a Unix socket path".into(),
                ));
            }
            Some(value) => Some(
                lookup_group(text("--socket-group", value)?)
                    .map_err(|r| usage("--socket-group", r))?,
            ),
        };
        let sandbox = match text("--sandbox", &self.sandbox)? {
            "best-effort" => SandboxMode::BestEffort,
            "strict" => SandboxMode::Strict,
            "off" => SandboxMode::Off,
            other => {
                return Err(usage(
                    "--sandbox",
                    format!("'{other}' is not one of best-effort, strict, off"),
                ));
            }
        };
        let proxy_protocol = match self
            .proxy_protocol
            .as_deref()
            .map(|v| text("--proxy-protocol", v))
            .transpose()?
        {
            None => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                return Err(usage(
                    "--proxy-protocol",
                    format!("'{other}' is not one of v1, v2"),
                ));
            }
        };
        let allow = Allowlist {
            uids: self
                .allow_uid
                .iter()
                .map(|u| lookup_user(text("--allow-uid", u)?).map_err(|r| usage("--allow-uid", r)))
                .collect::<Result<_, _>>()?,
            gids: self
                .allow_gid
                .iter()
                .map(|g| lookup_group(text("--allow-gid", g)?).map_err(|r| usage("--allow-gid", r)))
                .collect::<Result<_, _>>()?,
        };
        if allow.is_active() && matches!(listen, Endpoint::Tcp { .. }) {
            let option = if self.allow_uid.is_empty() {
                "--allow-gid"
            } else {
                "--allow-uid"
            };
            return Err(usage(
                option,
                "needs a Unix LISTEN (TCP clients have no credentials)".into(),
            ));
        }
        let keepalive = match self.keepalive {
            None => None,
            Some(SpanArg(Some(span))) if span >= Duration::from_secs(1) => Some(span),
            Some(_) => {
                return Err(usage(
                    "--keepalive",
                    "give a span of at least 1s (TCP counts keepalive time in seconds)".into(),
                ));
            }
        };
        let ready_fd = match self.ready_fd {
            None => None,
            Some(CountArg(fd)) => {
                let fd = std::os::fd::RawFd::try_from(fd)
                    .map_err(|_| usage("--ready-fd", format!("{fd} is not a descriptor")))?;
                if fd <= 2 {
                    return Err(usage(
                        "--ready-fd",
                        format!("{fd} is standard input, output or error"),
                    ));
                }
                if listen == Endpoint::Fd(fd) {
                    return Err(usage("--ready-fd", format!("{fd} is LISTEN's descriptor")));
                }
                Some(fd)
            }
        };
        let log_time = match &self.log_time {
            None => true,
            Some(value) => crate::log::parse_boolean(text("--log-time", value)?)
                .map_err(|r| usage("--log-time", r))?,
        };
        let level = match (self.quiet, self.verbose) {
            (true, true) => return Err(usage("-q/-v", "choose one".into())),
            (true, false) => Level::Error,
            (false, true) => Level::Debug,
            (false, false) => Level::Info,
        };
        Ok(Config {
            listen,
            connect,
            connections_max,
            connect_timeout: zero_is_infinity(self.connect_timeout.0),
            idle_timeout: zero_is_infinity(self.idle_timeout.0),
            exit_idle_time: self.exit_idle_time.0,
            shutdown_timeout: zero_is_infinity(self.shutdown_timeout.0),
            socket_mode,
            socket_group,
            sandbox,
            proxy_protocol,
            allow,
            connect_retry: self.connect_retry,
            fd_store: self.fd_store
                || std::env::var("FDSTORE")
                    .ok()
                    .and_then(|n| parse_number::<u32>(&n))
                    .is_some_and(|n| n > 0),
            keepalive,
            ready_fd,
            check: self.check,
            level,
            log_time,
        })
    }
}

/// A file mode as systemd reads one (`SocketMode=`): one to four octal
/// digits, nothing else.
fn parse_mode(text: &str) -> Result<u32, String> {
    let octal =
        !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(text, 8) {
        Ok(mode) if octal => Ok(mode),
        _ => Err(format!("'{text}' is not an octal file mode (e.g. 0660)")),
    }
}

/// A user or group id as systemd accepts one: digits only, and not one of
/// the ids that mean "invalid" (65535 and 4294967295, -1 in 16 and 32 bits).
fn parse_id(text: &str) -> Option<Result<u32, String>> {
    let id = parse_number::<u64>(text)?;
    Some(match u32::try_from(id) {
        Ok(id) if id != 65535 && id != u32::MAX => Ok(id),
        _ => Err(format!("'{text}' is not a valid user or group id")),
    })
}

/// Calls a `get*nam_r` function with a buffer that grows on ERANGE until
/// the record fits: a group with thousands of members (LDAP, say) is
/// still found. `Ok(None)`: no such entry.
fn lookup_record<T>(
    name: &CString,
    call: impl Fn(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
) -> Result<Option<T>, std::io::Error> {
    let mut size = 16 << 10;
    loop {
        let mut record = std::mem::MaybeUninit::<T>::uninit();
        let mut buffer = vec![0 as libc::c_char; size];
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(
            name.as_ptr(),
            record.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        match rc {
            0 if result.is_null() => return Ok(None),
            // SAFETY: the call succeeded and filled `record`; only its id
            // field is read, which does not point into the buffer.
            0 => return Ok(Some(unsafe { record.assume_init() })),
            libc::ERANGE if size < 64 << 20 => size *= 4,
            rc => return Err(std::io::Error::from_raw_os_error(rc)),
        }
    }
}

/// A group id from a number or a group name.
pub fn lookup_group(text: &str) -> Result<libc::gid_t, String> {
    if let Some(id) = parse_id(text) {
        return id;
    }
    let name = CString::new(text).map_err(|_| format!("'{text}' is not a group name"))?;
    // SAFETY: every pointer is valid for the duration of the call and the
    // buffer length is passed; the result points into `group` or is null.
    let found = lookup_record(&name, |n, g, b, l, r| unsafe {
        libc::getgrnam_r(n, g, b, l, r)
    });
    match found {
        Ok(Some(group)) => Ok(group.gr_gid),
        Ok(None) => Err(format!("no group named '{text}'")),
        Err(e) => Err(format!("cannot look up group '{text}': {e}")),
    }
}

/// A user id from a number or a user name.
pub fn lookup_user(text: &str) -> Result<libc::uid_t, String> {
    if let Some(id) = parse_id(text) {
        return id;
    }
    let name = CString::new(text).map_err(|_| format!("'{text}' is not a user name"))?;
    // SAFETY: as in lookup_group.
    let found = lookup_record(&name, |n, u, b, l, r| unsafe {
        libc::getpwnam_r(n, u, b, l, r)
    });
    match found {
        Ok(Some(user)) => Ok(user.pw_uid),
        Ok(None) => Err(format!("no user named '{text}'")),
        Err(e) => Err(format!("cannot look up user '{text}': {e}")),
    }
}

/// The configuration for these arguments, for the unit tests of other
/// modules; panics on a usage error.
#[cfg(test)]
pub(crate) fn config_for(args: &[&str]) -> Config {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    match parse("relay", &args) {
        Ok(Command::Run(config)) => *config,
        _ => panic!("bad test arguments {args:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse("simpletcpunixrelay", &args) {
            Ok(Command::Run(config)) => Ok(*config),
            Ok(Command::Print(text)) => Err(format!("printed {text}")),
            Err(Failure::Usage(text)) => Err(text),
            Err(Failure::Startup(text)) => panic!("startup failure while parsing: {text}"),
        }
    }

    #[test]
    fn options_anywhere() {
        let config = run(&[
            "-c",
            "5",
            "/tmp/x.sock",
            "--idle-timeout",
            "5min",
            "127.0.0.1:80",
            "-v",
        ])
        .unwrap();
        assert_eq!(config.connections_max, 5);
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.shutdown_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.exit_idle_time, None);
        assert_eq!(config.level, Level::Debug);
    }

    #[test]
    fn usage_errors_name_the_argument() {
        let cases: &[(&[&str], &str)] = &[
            (&["-c", "abc", ":80", "/x"], "-c"),
            (&["-c", "0", ":80", "/x"], "--connections-max"),
            (&[":80", "/x", "--idle-timeout", "soon"], "--idle-timeout"),
            (
                &["/x", "127.0.0.1:80", "--socket-mode", "999"],
                "--socket-mode",
            ),
            (&[":80", "/x", "--socket-mode", "0660"], "--socket-mode"),
            (
                &["/x", "127.0.0.1:80", "--socket-group", "no-such-group-here"],
                "--socket-group",
            ),
            (&[":80", "/x", "--sandbox", "maybe"], "--sandbox"),
            (&[":99999", "/x"], "LISTEN ':99999'"),
            (&[":80", "sd-listen"], "CONNECT 'sd-listen'"),
            (&[":80"], "CONNECT"),
            (&[":80", "/x", "--frobnicate"], "--frobnicate"),
            (&[":80", "/x", "--proxy-protocol", "v3"], "--proxy-protocol"),
            (&[":80", "/x", "--allow-uid", "0"], "--allow-uid"),
            (&["127.0.0.1:80", "/x", "--allow-gid", "0"], "--allow-gid"),
            (
                &["/y", "/x", "--allow-uid", "no-such-user-here"],
                "--allow-uid",
            ),
        ];
        for (args, named) in cases {
            let err = run(args).expect_err(&format!("{args:?} should fail"));
            assert!(err.contains(named), "{args:?}: {err:?} should name {named}");
            assert!(!err.contains('\n'), "{err:?} should be one line");
        }
    }

    #[test]
    fn modes_and_groups() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("2770"), Ok(0o2770));
        assert!(parse_mode("0668").is_err());
        assert!(parse_mode("").is_err());
        for bad in ["+660", "-660", " 660", "0660 ", "0x1b0", "10000", "00660"] {
            assert!(parse_mode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(lookup_group("+0").map_err(|_| ()), Err(()));
        assert!(lookup_user("65535").is_err());
        assert!(lookup_user("4294967295").is_err());
        assert_eq!(lookup_group("0"), Ok(0));
        assert_eq!(lookup_group("root"), Ok(0));
    }
}
