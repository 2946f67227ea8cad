//! The README's examples under a real systemd: a [`Container`] with the relay
//! at `/usr/bin`, the unit templates and `foobar.service` (a TCP-only service
//! on its own loopback) installed as the README says, and the programs of
//! `tests/nspawn/` staged at `/stage`, with [`client`] to reach foobar from
//! inside.

use std::fs;
use std::path::PathBuf;

use super::{
    CONTAINER_TOOLS, Container, TempDir, debian_rootfs, is_root, relay_bin, skip, skip_if_missing,
    unit_dir,
};

/// foobar.service in the container: TCP only, on its own loopback.
pub const FOOBAR_UNIT: &str = include_str!("../nspawn/foobar.service");

/// foobar itself (perl is in every Debian): greets, then echoes. After a
/// client that sent only "linger" has ended its sending, foobar keeps the
/// connection half-closed until /tmp/release exists, then says "released".
pub const FOOBAR_PL: &str = include_str!("../nspawn/foobar.pl");

/// The client: sends its message, half-closes, prints the reply; exit 3 if
/// it cannot connect. Run it with [`client`].
const CLIENT_PL: &str = include_str!("../nspawn/client.pl");

/// A client streaming the file DATA through ADDRESS, paced (PAUSE seconds
/// after each MiB), while it writes the echo into the file COPY (perl-base
/// has no digest; sha256sum compares the files).
const STREAM_PL: &str = include_str!("../nspawn/stream.pl");

/// A long-lived ping-pong client on ADDRESS until the file STOP exists:
/// prints how many answers came.
pub const PINGPONG_PL: &str = include_str!("../nspawn/pingpong.pl");

/// New clients on ADDRESS one after another until the file STOP exists
/// and at least MIN have been tried: prints how many were served.
const LOOP_PL: &str = include_str!("../nspawn/loop.pl");

/// Installs the units the way the README says, with the configuration the
/// README shows.
const INSTALL: &str = include_str!("../nspawn/install-units.sh");

/// The client in the container ([`CLIENT_PL`], staged at `/stage`): sends
/// `message` to `address` (a socket path or HOST:PORT), run with `prefix`
/// (`setpriv …`); returns the exit code, the reply and stderr.
pub fn client(
    container: &Container,
    prefix: &str,
    address: &str,
    message: &str,
) -> (i32, String, String) {
    let output = container.sh(&format!(
        "{prefix} perl /stage/client.pl {address} {message}"
    ));
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        output.stderr,
    )
}

/// The Debian root file system for systemd-nspawn; `None` (after a skip)
/// where root, nspawn or the file system cannot be had.
pub fn nspawn_root() -> Option<PathBuf> {
    if !is_root() {
        skip("needs root for systemd-nspawn");
        return None;
    }
    if skip_if_missing(CONTAINER_TOOLS, "systemd-container debootstrap") {
        return None;
    }
    match debian_rootfs() {
        Ok(root) => Some(root),
        Err(e) => {
            skip(&format!("cannot build the Debian root file system: {e}"));
            None
        }
    }
}

/// A container with systemd as PID 1, the relay at /usr/bin, foobar and
/// the units installed as the README says ([`INSTALL`]), and the clients
/// staged at /stage (the directory is kept while the container runs).
/// `None` (after a skip) where nspawn or a root file system cannot be had.
pub fn boot_with_units() -> Option<(Container, TempDir)> {
    let root = nspawn_root()?;
    let stage = TempDir::new();
    fs::write(stage.join("foobar.service"), FOOBAR_UNIT).unwrap();
    for (name, script) in [
        ("foobar.pl", FOOBAR_PL),
        ("client.pl", CLIENT_PL),
        ("stream.pl", STREAM_PL),
        ("pingpong.pl", PINGPONG_PL),
        ("loop.pl", LOOP_PL),
    ] {
        fs::write(stage.join(name), script).unwrap();
    }
    fs::create_dir(stage.join("units")).unwrap();
    for entry in fs::read_dir(unit_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), stage.join("units").join(entry.file_name())).unwrap();
    }
    let console = stage.join("console.log");
    let container = Container::boot(
        &root,
        &[
            (&relay_bin(), "/usr/bin/simpletcpunixrelay"),
            (&stage.0, "/stage"),
        ],
        console,
    );
    container.ok(INSTALL);
    Some((container, stage))
}
