//! The two command-line endpoints, LISTEN and CONNECT, parsed into a type
//! that says what each one is. Parsing never touches the system, so a bad
//! argument is rejected before anything is created or removed.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Longest `sun_path` content: 108 bytes minus the terminating NUL for a
/// path, minus the leading NUL for an abstract name.
pub const UNIX_PATH_MAX: usize = 107;

/// Where a Unix stream socket lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixAddr {
    /// A socket file in the filesystem.
    Path(PathBuf),
    /// A Linux abstract socket, written `@NAME`.
    Abstract(Vec<u8>),
}

/// The host part of a TCP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Empty host (`:PORT`): every interface, IPv4 and IPv6.
    Any,
    /// An IP literal.
    Ip(IpAddr),
    /// A name, resolved when it is used (`localhost` on LISTEN; any name on CONNECT).
    Name(String),
}

/// One endpoint as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `HOST:PORT`, `[IPV6]:PORT`, `tcp:…`.
    Tcp { host: Host, port: u16 },
    /// A path containing `/`, `unix:PATH`, `@NAME`, `unix:@NAME`.
    Unix(UnixAddr),
    /// `sd-listen` or `sd-listen:NAME`: sockets passed by systemd.
    SdListen(Option<String>),
    /// `fd:N`: an inherited file descriptor.
    Fd(RawFd),
}

/// CONNECT: where each client's connection goes. Unlike an [`Endpoint`] it
/// cannot be an inherited socket nor "every interface", by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address or a host name resolved at each connect.
    Tcp { host: TargetHost, port: u16 },
    /// A Unix socket path or abstract name.
    Unix(UnixAddr),
}

/// The host of a TCP [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Ip(IpAddr),
    Name(String),
}

impl TryFrom<Endpoint> for Target {
    type Error = String;

    fn try_from(endpoint: Endpoint) -> Result<Target, String> {
        match endpoint {
            Endpoint::Tcp {
                host: Host::Ip(ip),
                port,
            } => Ok(Target::Tcp {
                host: TargetHost::Ip(ip),
                port,
            }),
            Endpoint::Tcp {
                host: Host::Name(name),
                port,
            } => Ok(Target::Tcp {
                host: TargetHost::Name(name),
                port,
            }),
            Endpoint::Tcp {
                host: Host::Any, ..
            } => Err("CONNECT needs a host (e.g. 127.0.0.1:PORT)".into()),
            Endpoint::Unix(address) => Ok(Target::Unix(address)),
            Endpoint::SdListen(_) => Err("sd-listen can only be used as LISTEN".into()),
            Endpoint::Fd(_) => Err("fd:N can only be used as LISTEN".into()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp {
                host: TargetHost::Ip(ip),
                port,
            } => write!(f, "{}:{port}", Bracketed(ip)),
            Target::Tcp {
                host: TargetHost::Name(name),
                port,
            } => write!(f, "{name}:{port}"),
            Target::Unix(address) => write!(f, "{address}"),
        }
    }
}

/// An IP address as it stands before `:PORT`: IPv6 in brackets.
struct Bracketed<'a>(&'a IpAddr);

impl fmt::Display for Bracketed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(ip) => write!(f, "[{ip}]"),
            IpAddr::V4(ip) => write!(f, "{ip}"),
        }
    }
}

/// The socket address of an abstract name.
pub fn abstract_addr(name: &[u8]) -> std::io::Result<socket2::SockAddr> {
    let mut bytes = Vec::with_capacity(name.len() + 1);
    bytes.push(0);
    bytes.extend_from_slice(name);
    socket2::SockAddr::unix(OsStr::from_bytes(&bytes))
}

/// An address as the relay prints it: `127.0.0.1:80`, `[::1]:80`, `/path`, `@name`.
pub fn display_addr(address: &socket2::SockAddr) -> String {
    if let Some(ip) = address.as_socket() {
        return ip.to_string();
    }
    if let Some(path) = address.as_pathname() {
        return path.display().to_string();
    }
    if let Some(name) = address.as_abstract_namespace() {
        return format!("@{}", String::from_utf8_lossy(name));
    }
    "unnamed".into()
}

/// Which side of the relay an endpoint is for; they accept different forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Listen,
    Connect,
}

impl Endpoint {
    /// Parses an endpoint for the given role. The error is a reason, without
    /// the argument; the caller names the argument.
    ///
    /// ```
    /// use simpletcpunixrelay::endpoint::{Endpoint, Role, UnixAddr};
    ///
    /// let socket = Endpoint::parse("/run/foobar-unix/socket", Role::Listen).unwrap();
    /// assert_eq!(socket, Endpoint::Unix(UnixAddr::Path("/run/foobar-unix/socket".into())));
    /// assert!(Endpoint::parse("sd-listen", Role::Connect).is_err());
    /// ```
    pub fn parse(text: &str, role: Role) -> Result<Endpoint, String> {
        let endpoint = parse_any(text)?;
        match (&endpoint, role) {
            (Endpoint::SdListen(_), Role::Connect) => {
                Err("sd-listen can only be used as LISTEN".into())
            }
            (Endpoint::Fd(_), Role::Connect) => Err("fd:N can only be used as LISTEN".into()),
            (
                Endpoint::Tcp {
                    host: Host::Name(name),
                    ..
                },
                Role::Listen,
            ) if name != "localhost" => Err(format!(
                "cannot listen on host name '{name}': use an IP address, 'localhost' or an empty host (:PORT)"
            )),
            (
                Endpoint::Tcp {
                    host: Host::Any, ..
                },
                Role::Connect,
            ) => Err("CONNECT needs a host (e.g. 127.0.0.1:PORT)".into()),
            (Endpoint::Tcp { port: 0, .. }, Role::Connect) => {
                Err("cannot connect to port 0".into())
            }
            _ => Ok(endpoint),
        }
    }

    /// Parses an endpoint given as bytes, as Linux passes arguments. Only a
    /// Unix socket path or abstract name may be other than UTF-8: a path is
    /// a path, whatever its bytes.
    pub fn parse_os(text: &OsStr, role: Role) -> Result<Endpoint, String> {
        if let Some(text) = text.to_str() {
            return Endpoint::parse(text, role);
        }
        let bytes = text.as_bytes();
        let (bytes, prefixed) = match bytes.strip_prefix(b"unix:") {
            Some(rest) => (rest, true),
            None => (bytes, false),
        };
        if let Some(name) = bytes.strip_prefix(b"@") {
            if name.len() > UNIX_PATH_MAX {
                return Err(format!(
                    "abstract socket name is {} bytes, longer than the kernel allows ({UNIX_PATH_MAX})",
                    name.len()
                ));
            }
            return Ok(Endpoint::Unix(UnixAddr::Abstract(name.to_vec())));
        }
        if !prefixed && !bytes.contains(&b'/') {
            return Err(
                "is not valid UTF-8; only a Unix socket path (containing '/') or @NAME may be"
                    .into(),
            );
        }
        check_path(bytes)?;
        Ok(Endpoint::Unix(UnixAddr::Path(PathBuf::from(
            OsStr::from_bytes(bytes),
        ))))
    }
}

/// The kernel's limits on a socket path.
fn check_path(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("empty socket path".into());
    }
    if bytes.len() > UNIX_PATH_MAX {
        return Err(format!(
            "socket path is {} bytes, longer than the kernel allows ({UNIX_PATH_MAX})",
            bytes.len()
        ));
    }
    if bytes.contains(&0) {
        return Err("socket path contains a NUL byte".into());
    }
    Ok(())
}

/// A decimal number written with digits only (no sign, no space), as
/// systemd reads numbers.
pub fn parse_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_any(text: &str) -> Result<Endpoint, String> {
    if text.is_empty() {
        return Err("empty endpoint".into());
    }
    if let Some(rest) = text.strip_prefix("unix:") {
        return parse_unix(rest);
    }
    if let Some(rest) = text.strip_prefix("tcp:") {
        return parse_tcp(rest);
    }
    if text == "sd-listen" {
        return Ok(Endpoint::SdListen(None));
    }
    if let Some(name) = text.strip_prefix("sd-listen:") {
        if name.is_empty()
            || name.len() > 255
            || name.contains(':')
            || name.chars().any(|c| c.is_control())
        {
            return Err(format!(
                "'{name}' is not a valid socket name (FileDescriptorName=)"
            ));
        }
        return Ok(Endpoint::SdListen(Some(name.into())));
    }
    if let Some(number) = text.strip_prefix("fd:") {
        return match parse_number::<RawFd>(number) {
            Some(fd) => Ok(Endpoint::Fd(fd)),
            None => Err(format!("'{number}' is not a file descriptor number")),
        };
    }
    if text.starts_with('@') || text.contains('/') {
        return parse_unix(text);
    }
    parse_tcp(text)
}

fn parse_unix(text: &str) -> Result<Endpoint, String> {
    if let Some(name) = text.strip_prefix('@') {
        if name.is_empty() {
            return Err("empty abstract socket name".into());
        }
        if name.len() > UNIX_PATH_MAX {
            return Err(format!(
                "abstract socket name is {} bytes, longer than the kernel allows ({UNIX_PATH_MAX})",
                name.len()
            ));
        }
        return Ok(Endpoint::Unix(UnixAddr::Abstract(name.as_bytes().to_vec())));
    }
    check_path(text.as_bytes())?;
    Ok(Endpoint::Unix(UnixAddr::Path(PathBuf::from(
        OsStr::from_bytes(text.as_bytes()),
    ))))
}

fn parse_tcp(text: &str) -> Result<Endpoint, String> {
    let hint = "expected HOST:PORT, [IPV6]:PORT, :PORT, a path containing '/', or @NAME";
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("missing ']' after IPv6 address; {hint}"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("no port; {hint}"))?;
        let ip: std::net::Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("'{inner}' is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("no port; {hint}"))?;
        if host.contains(':') {
            return Err(format!(
                "write IPv6 addresses in brackets, e.g. [{host}]:{port}"
            ));
        }
        let host = if host.is_empty() {
            Host::Any
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if is_host_name(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(format!("'{host}' is not a valid host name or IP address"));
        };
        (host, port)
    };
    if port.is_empty() {
        return Err(format!("no port; {hint}"));
    }
    let port = parse_number::<u16>(port)
        .ok_or_else(|| format!("'{port}' is not a port number (0-65535)"))?;
    Ok(Endpoint::Tcp { host, port })
}

fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixAddr::Path(path) => write!(f, "{}", path.display()),
            UnixAddr::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp {
                host: Host::Any,
                port,
            } => write!(f, ":{port}"),
            Endpoint::Tcp {
                host: Host::Ip(ip),
                port,
            } => write!(f, "{}:{port}", Bracketed(ip)),
            Endpoint::Tcp {
                host: Host::Name(name),
                port,
            } => write!(f, "{name}:{port}"),
            Endpoint::Unix(addr) => write!(f, "{addr}"),
            Endpoint::SdListen(None) => write!(f, "sd-listen"),
            Endpoint::SdListen(Some(name)) => write!(f, "sd-listen:{name}"),
            Endpoint::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn listen(text: &str) -> Result<Endpoint, String> {
        Endpoint::parse(text, Role::Listen)
    }
    fn connect(text: &str) -> Result<Endpoint, String> {
        Endpoint::parse(text, Role::Connect)
    }
    fn tcp(host: Host, port: u16) -> Endpoint {
        Endpoint::Tcp { host, port }
    }

    #[test]
    fn tcp_forms() {
        let v4 = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(listen("127.0.0.1:8000"), Ok(tcp(v4.clone(), 8000)));
        assert_eq!(listen("tcp:127.0.0.1:8000"), Ok(tcp(v4, 8000)));
        assert_eq!(listen(":8000"), Ok(tcp(Host::Any, 8000)));
        assert_eq!(listen("tcp::0"), Ok(tcp(Host::Any, 0)));
        assert_eq!(
            listen("[::1]:80"),
            Ok(tcp(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 80))
        );
        assert_eq!(
            listen("localhost:80"),
            Ok(tcp(Host::Name("localhost".into()), 80))
        );
        assert_eq!(
            connect("Example.org:443"),
            Ok(tcp(Host::Name("example.org".into()), 443))
        );
        assert_eq!(
            connect("tcp:[::1]:443"),
            Ok(tcp(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 443))
        );
    }

    #[test]
    fn unix_forms() {
        let path = |p: &str| Ok(Endpoint::Unix(UnixAddr::Path(p.into())));
        assert_eq!(listen("./sock"), path("./sock"));
        assert_eq!(listen("/run/x/socket"), path("/run/x/socket"));
        assert_eq!(connect("unix:sock"), path("sock"));
        assert_eq!(
            listen("@name"),
            Ok(Endpoint::Unix(UnixAddr::Abstract(b"name".to_vec())))
        );
        assert_eq!(
            connect("unix:@name"),
            Ok(Endpoint::Unix(UnixAddr::Abstract(b"name".to_vec())))
        );
    }

    #[test]
    fn systemd_forms() {
        assert_eq!(listen("sd-listen"), Ok(Endpoint::SdListen(None)));
        assert_eq!(
            listen("sd-listen:web"),
            Ok(Endpoint::SdListen(Some("web".into())))
        );
        assert_eq!(listen("fd:3"), Ok(Endpoint::Fd(3)));
    }

    #[test]
    fn bad_endpoints() {
        for bad in [
            "",
            "8000",
            "localhost",
            "127.0.0.1:",
            "127.0.0.1:65536",
            "127.0.0.1:http",
            "::1:80",
            "[::1]80",
            "[nope]:80",
            "unix:",
            "@",
            "fd:x",
            "fd:-1",
            "fd:+3",
            "127.0.0.1:+80",
            "sd-listen:",
            "bad host:80",
        ] {
            assert!(listen(bad).is_err(), "{bad:?} should be rejected as LISTEN");
        }
        assert!(listen("example.org:80").is_err());
        assert!(connect("sd-listen").is_err());
        assert!(connect("fd:3").is_err());
        assert!(connect(":80").is_err());
        assert!(connect("127.0.0.1:0").is_err());
        let long = format!("/tmp/{}", "x".repeat(103));
        assert!(listen(&long).is_err());
        assert!(listen(&long[..107]).is_ok());
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "127.0.0.1:80",
            "[::1]:80",
            ":80",
            "/run/x",
            "@abs",
            "sd-listen:a",
            "fd:3",
        ] {
            assert_eq!(listen(text).unwrap().to_string(), text);
        }
    }
}
