//! The man page, `--help` and the README's option table name the same
//! options, and the man page renders without warnings.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::skip;

/// Every `--long-option` and `-x` short option named in `text`.
fn options_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('-') {
        let before = if i == 0 { b' ' } else { bytes[i - 1] };
        if before.is_ascii_alphanumeric() || before == b'-' {
            continue;
        }
        let rest = &text[i..];
        let len = rest
            .char_indices()
            .skip(1)
            .find(|(_, c)| !(c.is_ascii_lowercase() || *c == '-'))
            .map_or(rest.len(), |(j, _)| j);
        let option = rest[..len].trim_end_matches('-');
        let is_long = option.starts_with("--") && option.len() > 3;
        let is_short = !option.starts_with("--") && option.len() == 2;
        if is_long || is_short {
            found.insert(option.to_string());
        }
    }
    found
}

fn help_options() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_simpletcpunixrelay"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Only the "Options:" block; the notes mention endpoint forms, not options.
    let block = help.split("Options:").nth(1).expect("an Options: section");
    let block = block.split("\nNotes:").next().unwrap();
    options_in(block)
}

fn readme_options() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("### Options")
        .nth(1)
        .expect("README has ### Options");
    let rows: String = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            // The first cell names the option(s).
            l.split('|').nth(1).unwrap_or("").to_string() + "\n"
        })
        .collect();
    options_in(&rows)
}

fn man_page() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/doc/simpletcpunixrelay.1"
    ))
    .unwrap()
}

fn man_options() -> BTreeSet<String> {
    let page = man_page();
    let section = page
        .split(".SH OPTIONS")
        .nth(1)
        .expect("man page has OPTIONS");
    let section = section.split("\n.SH ").next().unwrap();
    // Option lines are the ones right after .TP.
    let lines: Vec<&str> = section.lines().collect();
    let heads: String = lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .map(|w| {
            w[1].replace("\\-", "-")
                .replace("\\fR", " ")
                .replace("\\fI", " ")
                + "\n"
        })
        .collect();
    options_in(&heads)
}

#[test]
fn help_readme_and_man_page_name_the_same_options() {
    let (help, readme, man) = (help_options(), readme_options(), man_options());
    assert!(
        help.contains("--connections-max") && help.contains("-c"),
        "{help:?}"
    );
    assert!(
        help.len() >= 15,
        "suspiciously few options in --help: {help:?}"
    );
    assert_eq!(help, readme, "--help vs README options table");
    assert_eq!(help, man, "--help vs man page OPTIONS");
}

#[test]
fn man_page_renders_without_warnings() {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/simpletcpunixrelay.1");
    if let Ok(out) = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", page])
        .output()
    {
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "mandoc -T lint:\n{report}"
        );
        return;
    }
    match Command::new("man")
        .args(["--warnings", "-l", page])
        .env("MANWIDTH", "80")
        .output()
    {
        Ok(out) => {
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.trim().is_empty(),
                "man --warnings:\n{warnings}"
            );
        }
        Err(_) => skip("neither mandoc nor man is installed (apt-get install mandoc)"),
    }
}

#[test]
fn man_page_version_matches_the_crate() {
    assert!(
        man_page().contains(&format!(
            "\"simpletcpunixrelay {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "update the .TH line of doc/simpletcpunixrelay.1"
    );
}
