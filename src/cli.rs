//! The command line: argh parses it, then every value is checked and turned
//! into a [`Config`]. Anything wrong is a [`Failure::Usage`] (exit status 2)
//! naming the argument, found before the relay touches the system.

use std::cell::RefCell;
use std::ffi::{CString, OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;
use std::time::Duration;

use argh::{ArgsInfo, FromArgs};

use crate::config::{Config, SandboxMode};
use crate::endpoint::{Endpoint, Role, Target, UnixAddr, parse_number};
use crate::failure::Failure;
use crate::log::Level;
use crate::peer::Allowlist;
use crate::proxy::ProxyVersion;
use crate::timespan::{self, Span};

/// A systemd time span as an argh value.
#[derive(Debug, Clone, Copy)]
struct SpanArg(Span);

impl FromStr for SpanArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        timespan::parse(&resolve(text)?).map(SpanArg)
    }
}

/// A count or descriptor number, read as systemd reads `MaxConnections=`
/// and systemd-socket-proxyd its `--connections-max=` ([`parse_unsigned`]).
#[derive(Debug, Clone, Copy)]
struct CountArg(usize);

impl FromStr for CountArg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = resolve(text)?;
        parse_unsigned(&text).map(|n| CountArg(n as usize))
    }
}

/// An unsigned number as systemd's `safe_atou()` reads one: leading
/// whitespace skipped, then an optional `+`, a `0x`, `0o` or `0b` prefix
/// for hexadecimal, octal or binary, otherwise decimal (a leading zero is
/// no octal); nothing after the digits; at most 4294967295. `-0` is 0, any
/// other negative number out of range.
fn parse_unsigned(text: &str) -> Result<u32, String> {
    let not_a_number = || format!("{} is not a number", quote(text));
    let s = text.trim_start_matches([' ', '\t', '\n', '\r']);
    let (radix, s) = [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ]
    .iter()
    .find_map(|(prefix, radix)| s.strip_prefix(prefix).map(|rest| (*radix, rest)))
    .unwrap_or((10, s));
    // What strtoul(…, radix) reads: more spaces, a sign, digits.
    let body = s.trim_start_matches(is_c_space);
    let (negative, digits) = match body.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, body.strip_prefix('+').unwrap_or(body)),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number());
    }
    let out_of_range = || format!("{} is out of range (at most 4294967295)", quote(text));
    let value = u64::from_str_radix(digits, radix).map_err(|_| out_of_range())?;
    match (negative, value) {
        (_, 0) => Ok(0),
        (true, _) => Err(out_of_range()),
        (false, value) => u32::try_from(value).map_err(|_| out_of_range()),
    }
}

/// What a value that is not UTF-8 is told.
const NOT_UTF8: &str = "the value is not valid UTF-8";

/// argh parses `&str`, and echoes arguments raw in its messages: an argument
/// that is not UTF-8 or holds a control character stands in for it as
/// `\0N\0` (N its index), which no real argument can contain. The value
/// parsers and [`Args::validate`] read the original through [`resolve`], and
/// messages show it quoted ([`quote_os`]).
fn placeholder(index: usize) -> String {
    format!("\0{index}\0")
}

fn is_placeholder(text: &str) -> bool {
    text.starts_with('\0')
}

thread_local! {
    /// The arguments being parsed, for [`resolve`].
    static ORIGINALS: RefCell<Vec<OsString>> = const { RefCell::new(Vec::new()) };
}

/// The original of an argument argh handed over: itself, or what its
/// placeholder stands for; an error if that is not UTF-8.
fn resolve(text: &str) -> Result<String, String> {
    if !is_placeholder(text) {
        return Ok(text.to_owned());
    }
    let original = ORIGINALS.with(|o| {
        let index: usize = text.trim_matches('\0').parse().ok()?;
        o.borrow().get(index).cloned()
    });
    match original.as_ref().map(|o| o.to_str()) {
        Some(Some(text)) => Ok(text.to_owned()),
        _ => Err(NOT_UTF8.into()),
    }
}

/// Appends `c`, escaped if it is a control character or breaks a line.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\'' => out.push_str("\\'"),
        '\\' => out.push_str("\\\\"),
        c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
            out.extend(c.escape_debug());
        }
        c => out.push(c),
    }
}

/// An argument as a usage error names it: in single quotes, on one line,
/// with control characters escaped (`'a\nb'`, `'\u{1}'`), so that an
/// argument holding a newline is not echoed across lines and one of control
/// characters is not shown as empty.
pub(crate) fn quote(text: &str) -> String {
    quote_os(OsStr::new(text))
}

/// [`quote`] for bytes: those that are not UTF-8 are shown as `\xNN`.
pub(crate) fn quote_os(arg: &OsStr) -> String {
    let mut out = String::from("'");
    for chunk in arg.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            push_escaped(&mut out, c);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('\'');
    out
}

/// A message on one line: control characters escaped, whatever part of it
/// echoes an argument.
pub(crate) fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Linux's `MAX_TCP_KEEPIDLE`: the longest `--keepalive` the kernel takes.
const MAX_TCP_KEEPIDLE: u64 = 32767;

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
  with every systemd unit (us, ms, s, min, h, d, w, M = month, y = year); 0 means no limit.
Options take GNU forms too: --option=VALUE, grouped flags (-vc5); -- ends the options.
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
    example = "Expose a TCP-only service as a Unix socket:\n  $ mkdir /run/foobar-unix\n  $ {command_name} --socket-mode 0660 /run/foobar-unix/socket 127.0.0.1:8080\nRe-expose a Unix socket on TCP:\n  $ {command_name} 127.0.0.1:8000 /run/app.sock",
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
/// right after it is that value, not a request for help. `None`: no such
/// option.
fn option_kind(option: &str) -> Option<bool> {
    Args::get_args_info()
        .flags
        .iter()
        .find(|flag| flag.long == option || flag.short.is_some_and(|c| option == format!("-{c}")))
        .map(|flag| matches!(flag.kind, argh::FlagInfoKind::Option { .. }))
}

fn takes_a_value(option: &str) -> bool {
    option_kind(option) == Some(true)
}

/// The arguments in the forms argh reads, GNU's forms taken apart:
/// `--option=value` becomes `--option value`, grouped short options `-vq`
/// become `-v -q` (and `-c5`, `-vc5` give `-c` its value), `-h` becomes
/// `--help`. Nothing after `--`, and no option's value, is touched. Each
/// argument comes with whether it is free text (an option's value, or after
/// `--`) rather than something that may be an option.
fn normalise(args: &[OsString]) -> Result<Vec<(OsString, bool)>, Failure> {
    let mut out: Vec<(OsString, bool)> = Vec::with_capacity(args.len());
    let mut value_next = false;
    let mut options_ended = false;
    for arg in args {
        if options_ended || value_next {
            out.push((arg.clone(), true));
            value_next = false;
            continue;
        }
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            options_ended = true;
            out.push((arg.clone(), false));
            continue;
        }
        if bytes.starts_with(b"--") {
            if let Some(eq) = bytes.iter().position(|&b| b == b'=')
                && let Ok(name) = std::str::from_utf8(&bytes[..eq])
            {
                match option_kind(name) {
                    Some(true) => {
                        out.push((OsString::from(name), false));
                        out.push((OsStr::from_bytes(&bytes[eq + 1..]).to_owned(), true));
                        continue;
                    }
                    Some(false) => {
                        return Err(Failure::Usage(format!(
                            "{}: {name} takes no value (see --help)",
                            quote_os(arg)
                        )));
                    }
                    None => {}
                }
            }
            value_next = arg.to_str().is_some_and(takes_a_value);
            out.push((arg.clone(), false));
            continue;
        }
        if let Some(expanded) = arg
            .to_str()
            .and_then(|a| a.strip_prefix('-'))
            .and_then(short_group)
        {
            // A trailing value-taking option without its value takes the next argument.
            value_next = expanded
                .last()
                .is_some_and(|(a, v)| !*v && takes_a_value(a.to_str().unwrap_or_default()));
            out.extend(expanded);
            continue;
        }
        out.push((arg.clone(), false));
    }
    Ok(out)
}

/// `-vq` as `-v -q`, `-c5` as `-c 5`, `-h` as `--help`; `None` if `group`
/// (the text after `-`) is not made of this program's short options.
fn short_group(group: &str) -> Option<Vec<(OsString, bool)>> {
    let mut out = Vec::new();
    for (at, c) in group.char_indices() {
        if c == 'h' {
            out.push((OsString::from("--help"), false));
            continue;
        }
        let option = format!("-{c}");
        match option_kind(&option)? {
            false => out.push((OsString::from(option), false)),
            true => {
                out.push((OsString::from(option), false));
                let rest = &group[at + c.len_utf8()..];
                if !rest.is_empty() {
                    out.push((OsString::from(rest), true));
                }
                return Some(out);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Parses the arguments after the program name, as the bytes Linux passed.
/// Every usage error is one line.
pub fn parse(program: &str, args: &[OsString]) -> Result<Command, Failure> {
    let parsed = normalise(args).and_then(|args| parse_normalised(program, &args));
    ORIGINALS.with(|o| o.borrow_mut().clear());
    parsed.map_err(|failure| match failure {
        Failure::Usage(message) => Failure::Usage(one_line(&message)),
        other => other,
    })
}

fn parse_normalised(program: &str, args: &[(OsString, bool)]) -> Result<Command, Failure> {
    let options = |(arg, free): &(OsString, bool)| !*free && *arg != "--";
    let before_dashdash: Vec<&OsString> = args
        .iter()
        .take_while(|(a, free)| *free || *a != "--")
        .filter(|a| options(a))
        .map(|(a, _)| a)
        .collect();
    if before_dashdash.iter().any(|a| *a == "--version") {
        return Ok(Command::Print(format!(
            "{program} {}\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if let Some(at) = args
        .iter()
        .position(|a| options(a) && a.0 == "--completions")
    {
        let shell = args.get(at + 1).and_then(|(s, _)| s.to_str());
        return crate::completions::script(program, &Args::get_args_info(), shell)
            .map(Command::Print)
            .map_err(|r| Failure::Usage(format!("--completions: {r}")));
    }
    let originals: Vec<OsString> = args.iter().map(|(a, _)| a.clone()).collect();
    let mut texts: Vec<String> = Vec::with_capacity(args.len());
    let mut options_ended = false;
    for (index, (arg, free)) in args.iter().enumerate() {
        let plain = arg.to_str().filter(|t| !t.chars().any(|c| c.is_control()));
        match plain {
            Some(text) => texts.push(text.to_owned()),
            None if arg.as_bytes().starts_with(b"-") && !*free && !options_ended => {
                return Err(Failure::Usage(format!(
                    "{}: unrecognized option (see --help)",
                    quote_os(arg)
                )));
            }
            None => texts.push(placeholder(index)),
        }
        options_ended |= !*free && arg == "--";
    }
    ORIGINALS.with(|o| *o.borrow_mut() = originals);
    // The placeholders, written back quoted, for messages.
    let shown = |text: &str| {
        let mut text = text.to_owned();
        for (index, (arg, _)) in args.iter().enumerate() {
            let quoted = quote_os(arg);
            text = text.replace(&format!("'{}'", placeholder(index)), &quoted);
            text = text.replace(&placeholder(index), &quoted);
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
            if let Some(arg) = exit.output.strip_prefix("Unrecognized argument: ") {
                let arg = arg.strip_suffix('\n').unwrap_or(arg);
                let shown_arg = if is_placeholder(arg) {
                    shown(arg)
                } else {
                    quote(arg)
                };
                return Err(Failure::Usage(format!(
                    "unrecognized argument {shown_arg} (see --help)"
                )));
            }
            let reason = exit.output.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(Failure::Usage(format!("{} (see --help)", shown(&reason))));
        }
    };
    // The original bytes of an endpoint argument.
    let original = |text: &str| -> OsString {
        args.iter()
            .enumerate()
            .find(|(index, _)| placeholder(*index) == text)
            .map_or_else(|| OsString::from(text), |(_, (arg, _))| arg.clone())
    };
    let listen = original(&parsed.listen);
    let connect = original(&parsed.connect);
    parsed
        .validate(&listen, &connect)
        .map(|config| Command::Run(Box::new(config)))
}

/// The value of a string option, which must be UTF-8.
fn text(option: &str, value: &str) -> Result<String, Failure> {
    resolve(value).map_err(|r| Failure::Usage(format!("{option}: {r}")))
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
            .map_err(|r| usage(&format!("LISTEN {}", quote_os(listen_arg)), r))?;
        let connect = Endpoint::parse_os(connect_arg, Role::Connect)
            .and_then(Target::try_from)
            .map_err(|r| usage(&format!("CONNECT {}", quote_os(connect_arg)), r))?;
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
                parse_mode(&text("--socket-mode", value)?)
                    .map_err(|r| usage("--socket-mode", r))?,
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
                lookup_group(&text("--socket-group", value)?)
                    .map_err(|r| usage("--socket-group", r))?,
            ),
        };
        let sandbox = match text("--sandbox", &self.sandbox)?.as_str() {
            "best-effort" => SandboxMode::BestEffort,
            "strict" => SandboxMode::Strict,
            "off" => SandboxMode::Off,
            other => {
                return Err(usage(
                    "--sandbox",
                    format!("{} is not one of best-effort, strict, off", quote(other)),
                ));
            }
        };
        let proxy_protocol = match self
            .proxy_protocol
            .as_deref()
            .map(|v| text("--proxy-protocol", v))
            .transpose()?
            .as_deref()
        {
            None => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                return Err(usage(
                    "--proxy-protocol",
                    format!("{} is not one of v1, v2", quote(other)),
                ));
            }
        };
        let allow = Allowlist {
            uids: self
                .allow_uid
                .iter()
                .map(|u| lookup_user(&text("--allow-uid", u)?).map_err(|r| usage("--allow-uid", r)))
                .collect::<Result<_, _>>()?,
            gids: self
                .allow_gid
                .iter()
                .map(|g| {
                    lookup_group(&text("--allow-gid", g)?).map_err(|r| usage("--allow-gid", r))
                })
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
            Some(SpanArg(Some(span))) if span > Duration::from_secs(MAX_TCP_KEEPIDLE) => {
                return Err(usage(
                    "--keepalive",
                    format!(
                        "{} is more than {MAX_TCP_KEEPIDLE}s, the longest idle time Linux's TCP_KEEPIDLE takes",
                        timespan::format(Some(span))
                    ),
                ));
            }
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
                // Sockets passed to this process (socket activation, the
                // file descriptor store) are the relay's to serve or adopt.
                if crate::passed::listed()
                    .unwrap_or_default()
                    .iter()
                    .any(|(passed, _)| *passed == fd)
                {
                    return Err(usage(
                        "--ready-fd",
                        format!(
                            "{fd} is a socket passed to the relay (LISTEN_FDS), as fd:{fd} would name it, not a notification descriptor"
                        ),
                    ));
                }
                Some(fd)
            }
        };
        let log_time = match &self.log_time {
            None => true,
            Some(value) => crate::log::parse_boolean(&text("--log-time", value)?)
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

/// C's `isspace` in the C locale, which `strtoul` skips.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// A file mode as systemd reads one (`parse_mode()`, as for `SocketMode=`):
/// leading whitespace skipped, no sign, octal digits (leading zeros
/// allowed), at most 07777.
fn parse_mode(text: &str) -> Result<u32, String> {
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if trimmed.is_empty() {
        return Err(if text.is_empty() {
            "empty mode (give octal digits, e.g. 0660)".into()
        } else {
            format!("{} is blank, not an octal mode (e.g. 0660)", quote(text))
        });
    }
    let not_octal = || format!("{} is not an octal number (e.g. 0660)", quote(text));
    if trimmed.starts_with(['+', '-']) {
        return Err(not_octal());
    }
    // What strtoul(…, 8) reads after that: more spaces and a sign may follow.
    let digits = trimmed.trim_start_matches(is_c_space);
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(digits)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(not_octal());
    }
    let significant = digits.trim_start_matches('0');
    let mode = if significant.len() > 4 {
        None
    } else {
        u32::from_str_radix(
            if significant.is_empty() {
                "0"
            } else {
                significant
            },
            8,
        )
        .ok()
    };
    match mode {
        Some(0) => Ok(0),
        Some(mode) if mode <= 0o7777 && !negative => Ok(mode),
        _ => Err(format!(
            "{} is too large for a file mode (at most 07777)",
            quote(text)
        )),
    }
}

/// A user or group id as systemd's `parse_uid()` reads one: decimal digits
/// with no sign, no leading zero and no whitespace, and not one of the ids
/// that mean "invalid" (65535 and 4294967295, -1 in 16 and 32 bits).
/// `None`: not written as an id (then it may be a name).
fn parse_id(text: &str) -> Option<Result<u32, String>> {
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    let id = parse_number::<u64>(text)?;
    Some(match u32::try_from(id) {
        Ok(id) if id != 65535 && id != u32::MAX => Ok(id),
        _ => Err(format!("{} is not a valid user or group id", quote(text))),
    })
}

/// Why `text` cannot be a user or group name, by systemd's rules for
/// `User=` and `Group=` (`valid_user_group_name()` in relaxed mode): not
/// empty, no leading or trailing space, no control character, no `:` or
/// `/`, not digits only (with or without a `-`), not `.` or `..`.
fn invalid_name(text: &str) -> Option<&'static str> {
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if text.is_empty() {
        Some("is empty")
    } else if text.starts_with(' ') || text.ends_with(' ') {
        Some("begins or ends with a space")
    } else if text.chars().any(char::is_control) {
        Some("holds a control character")
    } else if text.contains([':', '/']) {
        Some("holds ':' or '/'")
    } else if digits(text) || text.strip_prefix('-').is_some_and(digits) {
        Some(
            "is a number that is not a valid id (no sign, no leading zero, not 65535 or 4294967295)",
        )
    } else if text == "." || text == ".." {
        Some("is '.' or '..'")
    } else {
        None
    }
}

/// A group id from a number or a group name.
pub fn lookup_group(text: &str) -> Result<libc::gid_t, String> {
    lookup_id(text, "group", crate::peer::group_id)
}

/// A user id from a number or a user name.
pub fn lookup_user(text: &str) -> Result<libc::uid_t, String> {
    lookup_id(text, "user", crate::peer::user_id)
}

/// An id from a number or a name of `kind` ("user" or "group"), looked up
/// with `find`.
fn lookup_id(
    text: &str,
    kind: &str,
    find: fn(&std::ffi::CStr) -> std::io::Result<Option<u32>>,
) -> Result<u32, String> {
    if let Some(id) = parse_id(text) {
        return id;
    }
    if let Some(why) = invalid_name(text) {
        return Err(format!(
            "{} is not a {kind} name or id: it {why}",
            quote(text)
        ));
    }
    let name = CString::new(text).map_err(|_| format!("{} is not a {kind} name", quote(text)))?;
    match find(&name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!("no {kind} named {}", quote(text))),
        Err(e) => Err(format!("cannot look up {kind} {}: {e}", quote(text))),
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
        assert_eq!(config.exit_idle_time, None);
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
    fn gnu_forms() {
        let config = run(&[
            "--connections-max=7",
            "--exit-idle-time=5min",
            "--idle-timeout=",
            "1s",
            "/tmp/x.sock",
            "127.0.0.1:80",
        ]);
        assert!(config.is_err(), "an empty value is the value: {config:?}");
        let config = run(&[
            "--exit-idle-time=5min",
            "--socket-mode=0660",
            "-vc9",
            "/tmp/x.sock",
            "127.0.0.1:80",
        ])
        .unwrap();
        assert_eq!(config.connections_max, 9);
        assert_eq!(config.exit_idle_time, Some(Duration::from_secs(300)));
        assert_eq!(config.socket_mode, Some(0o660));
        assert_eq!(config.level, Level::Debug);
        let config = run(&["/tmp/x.sock", "127.0.0.1:80", "--connections-max=7", "-q"]).unwrap();
        assert_eq!(config.connections_max, 7);
        assert_eq!(run(&["-c5", ":80", "/x"]).unwrap().connections_max, 5);
        // The value of an option is never an option.
        let config = run(&["--idle-timeout", "-1s", ":80", "/x"]).unwrap_err();
        assert!(config.contains("--idle-timeout"), "{config}");
        // Grouped flags are judged as if given apart.
        assert_eq!(run(&["-vq", ":80", "/x"]).unwrap_err(), "-q/-v: choose one");
        assert!(run(&["-vx", ":80", "/x"]).unwrap_err().contains("'-vx'"));
        assert!(
            run(&["--verbose=yes", ":80", "/x"])
                .unwrap_err()
                .contains("takes no value")
        );
        // After --, nothing is an option.
        assert!(
            run(&["--", "-v", "/x"])
                .unwrap_err()
                .contains("LISTEN '-v'")
        );
        assert!(matches!(
            parse("relay", &[OsString::from("-qh")]),
            Ok(Command::Print(_))
        ));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("a\nb"), "'a\\nb'");
        assert_eq!(quote("\u{1}\u{7f}"), "'\\u{1}\\u{7f}'");
        assert_eq!(quote("it's"), "'it\\'s'");
        assert_eq!(quote_os(OsStr::from_bytes(b"\xffa")), "'\\xffa'");
        let err = run(&[":80", "/x", "a\nb"]).unwrap_err();
        assert_eq!(err, "unrecognized argument 'a\\nb' (see --help)");
        let err = run(&[":80", "/x", "\u{1}\u{2}"]).unwrap_err();
        assert!(err.contains("'\\u{1}\\u{2}'"), "{err}");
        let err = run(&["--idle-timeout", "5\u{b}", ":80", "/x"]).unwrap_err();
        assert!(err.contains("'5\\u{b}'") && !err.contains('\u{b}'), "{err}");
        let err = run(&["--sandbox", "\n", ":80", "/x"]).unwrap_err();
        assert!(err.contains("'\\n'") && !err.contains('\n'), "{err}");
        // A value with a control character that systemd accepts is taken.
        let config = run(&["--idle-timeout", "5\n min", ":80", "/x"]).unwrap();
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(300)));
    }

    /// Random command lines, as bytes, through the whole parser: no panic,
    /// and every usage error is one line without a control character.
    #[test]
    fn random_command_lines_never_panic_and_errors_are_one_line() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let words = prop::sample::select(
            &[
                "-c",
                "-vc",
                "-vq",
                "-qh",
                "-h",
                "-x",
                "-",
                "--",
                "--connections-max",
                "--connections-max=",
                "--idle-timeout",
                "--idle-timeout=5s",
                "--exit-idle-time",
                "--keepalive",
                "--keepalive=10h",
                "--ready-fd",
                "--socket-mode",
                "--socket-mode=",
                "--socket-group",
                "--allow-uid",
                "--allow-gid",
                "--sandbox",
                "--proxy-protocol",
                "--verbose=1",
                "--quiet",
                "--version",
                "--completions",
                "--fd-store",
                "--connect-retry",
                "/tmp/x.sock",
                ":80",
                "127.0.0.1:0",
                "fd:3",
                "sd-listen",
                "@a",
                "5s",
                "+5s",
                "5.",
                "0",
                "007",
                "01777",
                "root",
                "v2",
                "off",
                "bash",
                "infinity",
            ][..],
        )
        .prop_map(|w| w.as_bytes().to_vec());
        let bytes = prop::collection::vec(any::<u8>(), 0..6);
        let arg = prop_oneof![3 => words, 1 => bytes];
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 20_000,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        runner
            .run(&prop::collection::vec(arg, 0..8), |args| {
                let args: Vec<OsString> = args
                    .into_iter()
                    .map(|a| OsStr::from_bytes(&a).to_owned())
                    .collect();
                if let Err(Failure::Usage(message)) = parse("relay", &args) {
                    prop_assert!(
                        !message.chars().any(char::is_control),
                        "{:?}: {:?}",
                        args,
                        message
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    /// As systemd-socket-proxyd reads --connections-max= (safe_atou).
    #[test]
    fn counts_as_systemd_reads_them() {
        for (text, value) in [
            ("5", 5),
            ("+5", 5),
            (" 5", 5),
            ("010", 10),
            ("0x10", 16),
            ("0o17", 15),
            ("0b101", 5),
            ("-0", 0),
            ("4294967295", u32::MAX),
        ] {
            assert_eq!(parse_unsigned(text), Ok(value), "{text:?}");
        }
        for (text, reason) in [
            ("", "not a number"),
            ("5 ", "not a number"),
            ("5x", "not a number"),
            ("1e3", "not a number"),
            ("0x", "not a number"),
            ("0o8", "not a number"),
            ("++5", "not a number"),
            ("-1", "out of range"),
            ("4294967296", "out of range"),
            ("99999999999999999999999", "out of range"),
        ] {
            let err = parse_unsigned(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        assert_eq!(
            run(&["-c", "0x10", ":80", "/x"]).unwrap().connections_max,
            16
        );
    }

    #[test]
    fn keepalive_within_tcp_keepidle() {
        let config = run(&["--keepalive", "32767s", ":80", "/x"]).unwrap();
        assert_eq!(config.keepalive, Some(Duration::from_secs(32767)));
        for span in ["32768s", "10h", "1d", "infinity"] {
            let err = run(&["--keepalive", span, ":80", "/x"]).unwrap_err();
            assert!(err.contains("--keepalive"), "{span}: {err}");
        }
        let err = run(&["--keepalive", "10h", ":80", "/x"]).unwrap_err();
        assert!(err.contains("32767"), "{err}");
    }

    #[test]
    fn modes_and_groups() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("2770"), Ok(0o2770));
        // As systemd's parse_mode(): leading zeros, leading whitespace.
        assert_eq!(parse_mode("01777"), Ok(0o1777));
        assert_eq!(parse_mode("00660"), Ok(0o660));
        assert_eq!(parse_mode("0000000000007777"), Ok(0o7777));
        assert_eq!(parse_mode(" 660"), Ok(0o660));
        assert_eq!(parse_mode("0"), Ok(0));
        assert!(
            parse_mode("0668")
                .unwrap_err()
                .contains("not an octal number")
        );
        assert!(parse_mode("").unwrap_err().contains("empty"));
        assert!(parse_mode("10000").unwrap_err().contains("too large"));
        assert!(
            parse_mode("77777777777777777777777")
                .unwrap_err()
                .contains("too large")
        );
        for bad in ["+660", "-660", "0660 ", "0x1b0", "0o660", "rw-rw----"] {
            assert!(
                parse_mode(bad).unwrap_err().contains("not an octal number"),
                "{bad:?}"
            );
        }
        assert_eq!(lookup_group("+0").map_err(|_| ()), Err(()));
        // parse_uid() refuses a leading zero, and then it is no name either.
        assert!(lookup_user("00").unwrap_err().contains("not a valid id"));
        assert!(lookup_group("007").unwrap_err().contains("not a valid id"));
        for bad in [
            "", " root", "root ", "a:b", "a/b", ".", "..", "-1", "r\noot",
        ] {
            assert!(
                lookup_user(bad)
                    .unwrap_err()
                    .contains("not a user name or id"),
                "{bad:?}"
            );
        }
        assert!(lookup_user("65535").is_err());
        assert!(lookup_user("4294967295").is_err());
        assert_eq!(lookup_group("0"), Ok(0));
        assert_eq!(lookup_group("root"), Ok(0));
    }
}
