//! Restarts under systemd as PID 1 in `systemd-nspawn`: `systemctl reload`
//! hands every open connection to the next instance while clients keep
//! going, its failure paths leave the service running, and a package
//! upgrade hands over too.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

/// Runs a staged client in the background, as a transient service of the
/// container's systemd: its output in /tmp/NAME.out, its exit status in
/// /tmp/NAME.rc.
fn background(container: &Container, name: &str, command: &str) {
    container.ok(&format!(
        "systemd-run --quiet --collect --unit=client-{name} sh -c '{command} >/tmp/{name}.out 2>/tmp/{name}.err; echo $? >/tmp/{name}.rc'"
    ));
}

/// Waits for a background client to end; its output, or a panic with its
/// errors if it failed.
fn finished(container: &Container, name: &str) -> String {
    wait_until(&format!("{name} to finish"), || {
        container
            .sh(&format!("test -s /tmp/{name}.rc"))
            .status
            .success()
    });
    let rc = container.ok(&format!("cat /tmp/{name}.rc"));
    let err = container.ok(&format!("cat /tmp/{name}.err"));
    assert_eq!(rc.trim(), "0", "{name} failed: {err}");
    container.ok(&format!("cat /tmp/{name}.out"))
}

/// The main process of a unit, 0 while it has none.
fn main_pid(container: &Container, unit: &str) -> u32 {
    container
        .ok(&format!("systemctl show -p MainPID --value {unit}"))
        .trim()
        .parse()
        .unwrap()
}

/// `systemctl reload UNIT`, then waits until the next instance runs.
fn reload(container: &Container, unit: &str) {
    let before = main_pid(container, unit);
    container.ok(&format!("systemctl reload {unit}"));
    wait_until(&format!("the next instance of {unit}"), || {
        let pid = main_pid(container, unit);
        pid != 0
            && pid != before
            && container
                .ok(&format!("systemctl show -p SubState --value {unit}"))
                .trim()
                == "running"
    });
}

/// Restarting without losing clients, under systemd 252 as PID 1: through
/// expose@ and reexpose@ in a row (TCP 8081 → /run/foobar-unix/socket →
/// foobar's own loopback), `systemctl reload` hands every open connection
/// to the next instance, three times for each unit, while a client streams
/// 64 MiB each way, a ping-pong client keeps asking, a half-closed
/// connection waits for its answer and new clients keep arriving. Then
/// `systemctl restart` and `kill -9` keep the listeners (nobody refused),
/// and `systemctl stop` leaves no socket file and an empty store.
#[test]
fn hand_over_restarts_under_systemd_in_nspawn() {
    let started = Instant::now();
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    container.ok(&format!(
        "systemctl start foobar.service {expose} && systemctl start {reexpose}"
    ));
    let address = "127.0.0.1:8081";
    background(
        &container,
        "pingpong",
        &format!("perl /stage/pingpong.pl {address} /tmp/stop-pingpong"),
    );
    background(
        &container,
        "half",
        &format!("perl /stage/client.pl {address} linger"),
    );
    container.ok("head -c 64M /dev/urandom >/tmp/data");
    background(
        &container,
        "stream",
        &format!("perl /stage/stream.pl {address} /tmp/data 0.1 /tmp/copy"),
    );
    background(
        &container,
        "loop",
        &format!("perl /stage/loop.pl {address} /tmp/stop 200"),
    );
    // Every long-lived client is connected through both relays.
    let active = format!("systemctl show -p StatusText --value {expose}");
    wait_until("three connections through both relays", || {
        let status = container.ok(&active);
        let count = status
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        count.is_some_and(|n| n >= 3)
    });

    for _ in 0..3 {
        reload(&container, reexpose);
        reload(&container, expose);
    }
    for unit in [expose, reexpose] {
        let journal = container.ok(&format!("journalctl -o cat -u {unit}"));
        assert_eq!(
            journal.matches("took over").count(),
            3,
            "{unit}: three hand-overs\n{journal}"
        );
        assert!(
            !journal.contains("draining"),
            "{unit}: no fallback\n{journal}"
        );
        // The store holds the listener again, nothing else.
        container.wait_for_output(
            &format!("systemctl show -p NFileDescriptorStore --value {unit}"),
            "1",
        );
    }
    assert!(
        !container.sh("test -s /tmp/stream.rc").status.success(),
        "the stream must still run after the hand-overs (make it longer)"
    );

    // Every byte, once, in order, both ways.
    finished(&container, "stream");
    let sums = container.ok("sha256sum </tmp/data; sha256sum </tmp/copy; stat -c %s /tmp/copy");
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines[0], lines[1], "64 MiB up and back down: {sums}");
    assert_eq!(lines[2], "67108864", "{sums}");
    // The half-closed connection stayed half-closed, and gets its answer.
    container.ok("touch /tmp/release");
    assert_eq!(
        finished(&container, "half"),
        "hello from foobar\nlingerreleased\n"
    );

    // The socket-activated pair: its listener belongs to the .socket unit,
    // the store holds only the connections.
    let activated = "simpletcpunixrelay-activated@8082.service";
    container.ok("systemctl start simpletcpunixrelay-activated@8082.socket");
    background(
        &container,
        "activated",
        "perl /stage/pingpong.pl 127.0.0.1:8082 /tmp/stop-activated",
    );
    let status = format!("systemctl show -p StatusText --value {activated}");
    wait_until("the ping-pong client through the activated relay", || {
        container.sh(&status).stdout.contains(": 1 active")
    });
    reload(&container, activated);
    container.wait_for_output(
        &format!(
            "journalctl -o cat -u {activated} | grep -c 'took over 1 connection from the previous instance'"
        ),
        "1",
    );
    container.ok("touch /tmp/stop-activated");
    let answered = finished(&container, "activated");
    assert!(answered.starts_with("answered "), "{answered}");

    // The long-lived connection answered all along.
    container.ok("touch /tmp/stop-pingpong");
    let pingpong = finished(&container, "pingpong");
    assert!(pingpong.starts_with("answered "), "{pingpong}");
    eprintln!("ping-pong across six hand-overs: {pingpong}");

    // A planned restart keeps the listeners: nobody is refused, and the
    // loop of new clients goes on meanwhile.
    container.ok(&format!("systemctl restart {reexpose}"));
    container.ok(&format!("systemctl restart {expose}"));
    container.ok("touch /tmp/stop");
    let served = finished(&container, "loop");
    let counts: Vec<u32> = served
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[1] >= 200,
        "every client served across hand-overs and restarts: {served}{}",
        container.ok("cat /tmp/loop.err")
    );
    // So does a crash (its open connections die with it): a client that
    // arrives while the relay is dead waits in the backlog and is served by
    // the instance Restart=on-failure starts.
    for unit in [reexpose, expose] {
        let pid = main_pid(&container, unit);
        let (code, reply, stderr) = client(
            &container,
            &format!("kill -9 {pid};"),
            address,
            "after-a-crash",
        );
        assert_eq!(code, 0, "{unit}: {stderr}");
        assert_eq!(reply, "hello from foobar\nafter-a-crash");
        assert_ne!(main_pid(&container, unit), pid);
    }

    // Stop: no socket file, an empty store, no unit failed.
    container.ok(&format!("systemctl stop {reexpose} {expose}"));
    container.ok("test ! -e /run/foobar-unix/socket");
    for unit in [expose, reexpose] {
        assert_eq!(
            container
                .ok(&format!(
                    "systemctl show -p NFileDescriptorStore --value {unit}"
                ))
                .trim(),
            "0"
        );
    }
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
    eprintln!("hand-over test took {:.1?}", started.elapsed());
}

/// The failure paths of `systemctl reload`, under systemd 252 as PID 1,
/// with a ping-pong client through reexpose@ all along:
/// - a typo in the environment file fails the reload with the relay's own
///   message (ExecReload= runs `--check` first), and the running instance
///   and its connection go on untouched;
/// - a drop-in that lowers FileDescriptorStoreMax= below what the hand-over
///   needs: the relay finds out that systemd did not keep everything, takes
///   the connection back and drains it, and the next instance starts;
/// - a restart with another LISTEN closes the stored listener it no longer
///   names (its clients are refused, not left waiting) and leaves only the
///   new one in the store.
#[test]
fn reload_failure_paths_under_systemd_in_nspawn() {
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    let env = "/etc/simpletcpunixrelay/reexpose-foobar.env";
    container.ok(&format!(
        "systemctl start foobar.service {expose} && systemctl start {reexpose}"
    ));
    background(
        &container,
        "pingpong",
        "perl /stage/pingpong.pl 127.0.0.1:8081 /tmp/stop-pingpong",
    );
    let status = format!("systemctl show -p StatusText --value {reexpose}");
    wait_until("the ping-pong client through reexpose@", || {
        container.sh(&status).stdout.contains(": 1 active")
    });

    // 1. A typo: the reload fails, nothing else happens.
    let pid = main_pid(&container, reexpose);
    container.ok(&format!(
        "cp {env} /tmp/good.env && echo 'OPTIONS=--idle-timout 5s' >> {env}"
    ));
    let reloaded = container.sh(&format!("systemctl reload {reexpose}"));
    assert!(
        !reloaded.status.success(),
        "a bad configuration fails the reload"
    );
    let journal = container.ok(&format!("journalctl -o cat -u {reexpose}"));
    assert!(
        journal.contains("usage error: unrecognized argument '--idle-timout'"),
        "the relay's message is in the journal:\n{journal}"
    );
    assert_eq!(
        main_pid(&container, reexpose),
        pid,
        "the same instance runs"
    );
    assert_eq!(
        container
            .ok(&format!("systemctl is-active {reexpose}"))
            .trim(),
        "active"
    );
    assert!(
        container.sh(&status).stdout.contains(": 1 active"),
        "still relaying"
    );
    container.ok(&format!("cp /tmp/good.env {env}"));

    // 2. A store smaller than the hand-over needs (the listener fits, the
    //    connection does not): found out, the connection drains.
    container.ok(&format!(
        "mkdir -p /etc/systemd/system/{reexpose}.d && printf '[Service]\\nFileDescriptorStoreMax=2\\n' > /etc/systemd/system/{reexpose}.d/small.conf && systemctl daemon-reload"
    ));
    container.ok(&format!("systemctl reload {reexpose}"));
    container.wait_for_output(
        &format!("journalctl -o cat -u {reexpose} | grep -c 'systemd did not keep them all'"),
        "1",
    );
    assert_eq!(
        main_pid(&container, reexpose),
        pid,
        "draining, not gone yet"
    );
    container.ok("touch /tmp/stop-pingpong");
    let pingpong = finished(&container, "pingpong");
    assert!(pingpong.starts_with("answered "), "{pingpong}");
    wait_until("the next instance of reexpose@", || {
        let now = main_pid(&container, reexpose);
        now != 0 && now != pid
    });
    container.wait_for_output(
        &format!("systemctl show -p NFileDescriptorStore --value {reexpose}"),
        "1",
    );
    container.ok(&format!(
        "rm -r /etc/systemd/system/{reexpose}.d && systemctl daemon-reload"
    ));

    // 3. Another LISTEN: the stored listener for 8081 is closed, not kept
    //    unserved.
    container.ok(&format!(
        "sed -i s/8081/8083/ {env} && systemctl restart {reexpose}"
    ));
    let journal = container.ok(&format!("journalctl -o cat -u {reexpose}"));
    assert!(
        journal.contains("closed 1 stored listener that LISTEN no longer names"),
        "{journal}"
    );
    let (code, _, stderr) = client(&container, "", "127.0.0.1:8081", "stale");
    assert_ne!(code, 0, "8081 refuses instead of hanging: {stderr}");
    let (code, reply, stderr) = client(&container, "", "127.0.0.1:8083", "new");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reply, "hello from foobar\nnew");
    assert_eq!(
        container
            .ok(&format!(
                "systemctl show -p NFileDescriptorStore --value {reexpose}"
            ))
            .trim(),
        "1"
    );
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
}

/// The package `packaging/build-deb` wrote (CI builds it before the tests).
fn built_package() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

/// Upgrading the Debian package hands every running relay over to the new
/// binary (postinst reloads the running instances): under systemd 252 in
/// nspawn, with the package installed by dpkg, a ping-pong connection
/// through reexpose@ and expose@ goes on answering across `dpkg -i` of the
/// package again (an upgrade as far as the maintainer scripts can tell).
#[test]
fn a_package_upgrade_hands_over_under_systemd_in_nspawn() {
    let Some(root) = nspawn_root() else {
        return;
    };
    let Some(package) = built_package() else {
        skip("no package in target/debian (run packaging/build-deb first)");
        return;
    };
    let stage = TempDir::new();
    fs::copy(&package, stage.join("package.deb")).unwrap();
    fs::write(stage.join("foobar.service"), FOOBAR_UNIT).unwrap();
    fs::write(stage.join("foobar.pl"), FOOBAR_PL).unwrap();
    fs::write(stage.join("pingpong.pl"), PINGPONG_PL).unwrap();
    let container = Container::boot(&root, &[(&stage.0, "/stage")], stage.join("console.log"));
    container.ok(include_str!("nspawn/install-package.sh"));
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    background(
        &container,
        "pingpong",
        "perl /stage/pingpong.pl 127.0.0.1:8081 /tmp/stop",
    );
    let status = format!("systemctl show -p StatusText --value {reexpose}");
    wait_until("the ping-pong client through both relays", || {
        container.ok(&status).contains(": 1 active")
    });
    let before = (main_pid(&container, expose), main_pid(&container, reexpose));

    container.ok("dpkg -i /stage/package.deb >/dev/null");
    for (unit, pid) in [(expose, before.0), (reexpose, before.1)] {
        wait_until(&format!("{unit} to be handed over"), || {
            let now = main_pid(&container, unit);
            now != 0
                && now != pid
                && container
                    .ok(&format!("journalctl -o cat -u {unit}"))
                    .contains("took over 1 connection from the previous instance")
        });
    }
    container.ok("touch /tmp/stop");
    let answered = finished(&container, "pingpong");
    assert!(answered.starts_with("answered "), "{answered}");
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
}
