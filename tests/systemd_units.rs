//! The unit templates in `systemd/`: `systemd/check-units` (`systemd-analyze
//! verify` and exposure scores) passes them, each within its exposure
//! target, and catches bad ones.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// Exposure targets for each service instance.
const EXPOSURE_TARGETS: &[(&str, f64)] = &[
    ("simpletcpunixrelay-expose@foobar.service", 0.5),
    ("simpletcpunixrelay-reexpose@foobar.service", 1.0),
    ("simpletcpunixrelay-activated@8082.service", 1.0),
];

/// `systemd/check-units`, run from an unrelated directory: every unit as an
/// instance passes `systemd-analyze verify` with nothing on stderr, and each
/// service's exposure is within its target.
#[test]
fn units_verify_and_reach_their_exposure_targets() {
    if skip_if_missing(&["systemd-analyze"], "systemd") {
        return;
    }
    let elsewhere = TempDir::new();
    let mut check_units = Command::new(unit_dir().join("check-units"));
    check_units.current_dir(&elsewhere.0);
    let output = run_tool(check_units);
    let table = &output.stdout;
    eprintln!("{table}{}", output.stderr);
    assert!(output.status.success(), "check-units failed:\n{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    for row in &rows {
        assert_eq!(row.last(), Some(&"ok"), "verify: {table}");
    }
    assert!(
        rows.iter()
            .any(|r| r[0] == "simpletcpunixrelay-activated@8082.socket")
    );
    for (unit, target) in EXPOSURE_TARGETS {
        let row = rows
            .iter()
            .find(|r| r[0] == *unit)
            .unwrap_or_else(|| panic!("{unit} missing:\n{table}"));
        let score: f64 = row[1].parse().expect("a score");
        assert!(score <= *target, "{unit}: {score} > {target}");
    }

    // The same scores straight from systemd-analyze, each template file given
    // as a path (scored as instance "i"), from an empty directory.
    for (unit, target) in EXPOSURE_TARGETS {
        let template = unit.split('@').next().unwrap().to_string() + "@.service";
        let mut security = Command::new(tool("systemd-analyze").unwrap());
        security
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit_dir().join(&template))
            .current_dir(&elsewhere.0);
        let output = run_tool(security).stdout;
        let score: f64 = output
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no score for {template}:\n{output}"));
        assert!(score <= *target, "{template}: {score} > {target}");
    }
}

/// check-units really fails on a bad key (verify itself exits 0 on those) and
/// on a score above its limit.
#[test]
fn check_units_catches_bad_units() {
    if skip_if_missing(&["systemd-analyze"], "systemd") {
        return;
    }
    let copy = TempDir::new();
    for entry in fs::read_dir(unit_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name().to_str().unwrap())).unwrap();
    }
    let expose = copy.join("simpletcpunixrelay-expose@.service");
    let unit = fs::read_to_string(&expose).unwrap();
    fs::write(
        &expose,
        unit.replace("PrivateNetwork=yes", "PrivateNetwork=no\nNoSuchKey=1"),
    )
    .unwrap();
    let mut check_units = Command::new(unit_dir().join("check-units"));
    check_units.arg(&copy.0).current_dir(&copy.0);
    let output = run_tool(check_units);
    let report = &output.stdout;
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("Unknown key 'NoSuchKey'"), "{report}");
    let row = report
        .lines()
        .find(|l| l.starts_with("simpletcpunixrelay-expose@foobar.service"))
        .unwrap();
    assert!(row.contains('!') && row.ends_with("FAILED"), "{report}");
}
