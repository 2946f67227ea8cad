//! The completion scripts, run by their shells: what bash, zsh and fish
//! really offer after a command line, and whether a space follows.
//! (tests/supervisors.rs checks that every option of --help is in them.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PROGRAM: &str = "simpletcpunixrelay";

/// The script `--completions shell` prints, written into `dir`.
fn script(dir: &TempDir, shell: &str, name: &str) -> String {
    let out = command(&["--completions", shell]).output().unwrap();
    assert!(out.status.success(), "--completions {shell}: {out:?}");
    std::fs::write(dir.join(name), &out.stdout).unwrap();
    dir.arg(name)
}

/// A directory with a subdirectory `dir1` and a file `file1`, to complete
/// paths in.
fn paths() -> TempDir {
    let dir = TempDir::new();
    std::fs::create_dir(dir.join("dir1")).unwrap();
    std::fs::write(dir.join("file1"), "").unwrap();
    dir
}

fn shell_missing(shell: &'static str) -> bool {
    skip_if_missing(&[shell], shell)
}

// ---------------------------------------------------------------------------
// bash
// ---------------------------------------------------------------------------

/// What bash's completion function replies to `line` (the cursor at its
/// end), and whether it asked for no space after it. `compopt` is replaced
/// by a function that records its arguments.
struct BashReply {
    words: Vec<String>,
    nospace: bool,
}

fn bash_complete(file: &str, line: &str) -> BashReply {
    bash_complete_with(file, line, false)
}

/// As [`bash_complete`], with the bash-completion framework loaded first
/// when `framework`.
fn bash_complete_with(file: &str, line: &str, framework: bool) -> BashReply {
    let program = r#"
        if [ -n "$3" ]; then source /usr/share/bash-completion/bash_completion || exit 1; fi
        source "$1" || exit 1
        compopt() { printf 'compopt %s\n' "$*"; }
        COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
        _simpletcpunixrelay simpletcpunixrelay "" ""
        printf 'reply %s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", program, "bash", file])
        .arg(format!("{PROGRAM} {line}"))
        .arg(if framework { "framework" } else { "" })
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    BashReply {
        words: text
            .lines()
            .filter_map(|l| l.strip_prefix("reply "))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        nospace: text.lines().any(|l| l == "compopt -o nospace"),
    }
}

#[test]
fn bash_puts_no_space_only_after_what_needs_more() {
    if shell_missing("bash") {
        return;
    }
    let dir = TempDir::new();
    let file = script(&dir, "bash", "simpletcpunixrelay.bash");
    let spec = Command::new("bash")
        .args([
            "--norc",
            "-c",
            r#"source "$1" && complete -p simpletcpunixrelay"#,
        ])
        .arg("bash")
        .arg(&file)
        .output()
        .unwrap();
    let spec = String::from_utf8(spec.stdout).unwrap();
    assert!(spec.contains("-F _simpletcpunixrelay"), "{spec}");
    assert!(!spec.contains("nospace"), "nospace for every word: {spec}");

    let tmp = paths();
    let root = tmp.arg("");
    // (line, replies, no space after them)
    let cases: Vec<(String, Vec<String>, bool)> = vec![
        ("--verb".into(), vec!["--verbose".into()], false),
        (
            "-q --conne".into(),
            vec![
                "--connect-retry".into(),
                "--connect-timeout".into(),
                "--connections-max".into(),
            ],
            false,
        ),
        ("un".into(), vec!["unix:".into()], true),
        ("tc".into(), vec!["tcp:".into()], true),
        ("fd".into(), vec!["fd:".into()], true),
        (
            "sd-listen".into(),
            vec!["sd-listen".into(), "sd-listen:".into()],
            false,
        ),
        ("sd-listen:".into(), vec![], false),
        // CONNECT takes neither fd: nor sd-listen; -c's value is no endpoint.
        ("/run/x.sock fd".into(), vec![], false),
        (
            "-c 5 sd-listen".into(),
            vec!["sd-listen".into(), "sd-listen:".into()],
            false,
        ),
        ("-c 5 /x 127.0.0.1:80 ".into(), vec![], false),
        // Paths: bash replaces what follows ':', so unix: is not repeated.
        (format!("unix:{root}d"), vec![format!("{root}dir1/")], true),
        (format!("{root}d"), vec![format!("{root}dir1/")], true),
        (format!("{root}f"), vec![format!("{root}file1")], false),
        // Values, also after '=' (where bash splits the word too).
        ("--sandbox st".into(), vec!["strict".into()], false),
        ("--sandbox=st".into(), vec!["strict".into()], false),
        (
            "--proxy-protocol ".into(),
            vec!["v1".into(), "v2".into()],
            false,
        ),
        ("--allow-uid roo".into(), vec!["root".into()], false),
        ("--connect-timeout ".into(), vec![], false),
    ];
    for (line, words, nospace) in cases {
        let reply = bash_complete(&file, &line);
        let mut got = reply.words.clone();
        got.sort();
        assert_eq!(got, words, "bash completes '{line}'");
        assert_eq!(
            reply.nospace,
            nospace && !words.is_empty(),
            "bash: no space after '{line}' -> {words:?}?"
        );
    }
}

#[test]
fn bash_completes_the_same_with_the_bash_completion_framework_loaded() {
    if !Path::new("/usr/share/bash-completion/bash_completion").exists() {
        skip("bash-completion is not installed (apt-get install bash-completion)");
        return;
    }
    let dir = TempDir::new();
    let file = script(&dir, "bash", "simpletcpunixrelay.bash");
    for line in ["un", "--sandbox=st", "-c 5 sd-listen", "--verb"] {
        let (plain, framework) = (
            bash_complete_with(&file, line, false),
            bash_complete_with(&file, line, true),
        );
        assert_eq!(plain.words, framework.words, "'{line}'");
        assert_eq!(plain.nospace, framework.nospace, "'{line}'");
    }
}

// ---------------------------------------------------------------------------
// zsh
// ---------------------------------------------------------------------------

/// Set up inside an interactive zsh: compinit with the script's directory
/// in fpath, and compadd wrapped so that every match is printed with its
/// description, between control characters the echoed input cannot hold.
const ZSH_INIT: &str = r#"
PS1=''
stty columns 1000 2>/dev/null; COLUMNS=1000
fpath=("$ZSH_COMPLETIONS" $fpath)
autoload -Uz compinit
compinit -u -D
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a __hits __dscr
    if (( $@[(I)-d] )); then
        local __d=${@[$[${@[(i)-d]}+1]]}
        if [[ $__d == \(* ]]; then eval "__dscr=$__d"; else __dscr=("${(@P)__d}"); fi
    fi
    builtin compadd -A __hits -D __dscr "$@"
    local __i
    (( $#__hits )) || { builtin compadd "$@"; return }
    for __i in {1..$#__hits}; do
        print -rn -- $'\x01'"$__hits[$__i]"$'\x1f'"$__dscr[$__i]"$'\x02'
    done
    builtin compadd "$@"
}
__captured() { print -rn -- $'\x03'; exit }
comppostfuncs=(__captured)
"#;

/// Drives `zsh -f -i` in a pseudo-terminal (zsh/zpty): types the line and a
/// TAB, and prints what the completion system offered.
const ZSH_DRIVER: &str = r#"
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "ZSH_COMPLETIONS=${(q)1}; source ${(q)2}"
zpty -w z "$3"$'\t'
local out line
while zpty -r z line; do
    out+=$line
    [[ $out == *$'\x03'* ]] && break
done
print -rn -- ${out%%$'\x03'*}
"#;

/// (match, description) pairs zsh offers after `line`.
fn zsh_complete(dir: &TempDir, line: &str) -> Vec<(String, String)> {
    let out = Command::new("timeout")
        .args(["20", "zsh", "-f", "-c", ZSH_DRIVER, "zsh"])
        .arg(dir.arg(""))
        .arg(dir.arg("init.zsh"))
        .arg(format!("{PROGRAM} {line}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "zsh on '{line}': {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split('\x02')
        .filter_map(|item| item.split_once('\x01').map(|(_, hit)| hit))
        .map(|hit| {
            let (word, description) = hit.split_once('\x1f').unwrap_or((hit, ""));
            (word.to_string(), description.to_string())
        })
        .collect()
}

fn words_of(matches: &[(String, String)]) -> Vec<String> {
    let mut words: Vec<String> = matches.iter().map(|(w, _)| w.clone()).collect();
    words.sort();
    words.dedup();
    words
}

#[test]
fn zsh_completes_options_and_endpoint_forms_as_the_program_takes_them() {
    if shell_missing("zsh") {
        return;
    }
    let dir = TempDir::new();
    script(&dir, "zsh", "_simpletcpunixrelay");
    std::fs::write(dir.join("init.zsh"), ZSH_INIT).unwrap();
    let tmp = paths();

    assert_eq!(words_of(&zsh_complete(&dir, "--verb")), ["--verbose"]);
    // -q and -v exclude each other; nothing is offered stacked onto -q.
    let after_quiet = words_of(&zsh_complete(&dir, "-q -"));
    assert!(
        after_quiet.contains(&"--connections-max".to_string()),
        "{after_quiet:?}"
    );
    for excluded in ["-v", "--verbose", "-q", "--quiet"] {
        assert!(
            !after_quiet.iter().any(|w| w == excluded),
            "{excluded} after -q: {after_quiet:?}"
        );
    }
    let stacked = words_of(&zsh_complete(&dir, "-q"));
    assert!(
        stacked
            .iter()
            .all(|w| w.starts_with("-q") && w.len() == 2 || w.starts_with("--")),
        "zsh offers options stacked onto -q, which the program refuses: {stacked:?}"
    );

    // LISTEN: every form; CONNECT: not the LISTEN-only ones.
    let listen = words_of(&zsh_complete(&dir, ""));
    for form in ["sd-listen", "sd-listen:", "fd:", "unix:", "tcp:", "@"] {
        assert!(
            listen.iter().any(|w| w == form),
            "LISTEN lacks {form}: {listen:?}"
        );
    }
    let connect = words_of(&zsh_complete(&dir, "/run/x.sock "));
    for form in ["unix:", "tcp:", "@"] {
        assert!(
            connect.iter().any(|w| w == form),
            "CONNECT lacks {form}: {connect:?}"
        );
    }
    for form in ["sd-listen", "sd-listen:", "fd:"] {
        assert!(
            !connect.iter().any(|w| w == form),
            "CONNECT offers {form}: {connect:?}"
        );
    }
    assert_eq!(words_of(&zsh_complete(&dir, "-c 5 f")), ["fd:"]);
    // After unix:, paths.
    let root = tmp.arg("");
    assert_eq!(
        words_of(&zsh_complete(&dir, &format!("unix:{root}d"))),
        ["dir1"]
    );
    assert_eq!(
        words_of(&zsh_complete(&dir, "--sandbox ")),
        ["best-effort", "off", "strict"]
    );

    assert!(zsh_complete(&dir, "--connect-timeout ").is_empty());

    // Descriptions keep their apostrophes.
    let options = zsh_complete(&dir, "--socket-g");
    assert!(
        options.iter().any(|(_, d)| d.contains("the process's")),
        "{options:?}"
    );
}

// ---------------------------------------------------------------------------
// fish
// ---------------------------------------------------------------------------

/// (completion, description) pairs fish offers for `line` (`complete -C`).
fn fish_complete(file: &str, line: &str) -> Vec<(String, String)> {
    let out = Command::new("fish")
        .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
        .arg(file)
        .arg(format!("{PROGRAM} {line}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "fish: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (word, description) = l.split_once('\t').unwrap_or((l, ""));
            (word.to_string(), description.to_string())
        })
        .collect()
}

#[test]
fn fish_completes_options_and_endpoint_forms_as_the_program_takes_them() {
    if shell_missing("fish") {
        return;
    }
    let dir = TempDir::new();
    let file = script(&dir, "fish", "simpletcpunixrelay.fish");
    let tmp = paths();
    let complete = |line: &str| words_of(&fish_complete(&file, line));

    assert_eq!(complete("--verb"), ["--verbose"]);
    let listen = complete("");
    for form in ["sd-listen", "sd-listen:", "fd:", "unix:", "tcp:", "@"] {
        assert!(
            listen.iter().any(|w| w == form),
            "LISTEN lacks {form}: {listen:?}"
        );
    }
    let connect = complete("/run/x.sock ");
    assert!(connect.iter().any(|w| w == "unix:"), "{connect:?}");
    for form in ["sd-listen", "sd-listen:", "fd:"] {
        assert!(
            !connect.iter().any(|w| w == form),
            "CONNECT offers {form}: {connect:?}"
        );
    }
    assert!(complete("-c 5 f").contains(&"fd:".to_string()));
    assert!(complete("/x 127.0.0.1:80 ").is_empty());
    let root = tmp.arg("");
    assert_eq!(
        complete(&format!("unix:{root}d")),
        [format!("unix:{root}dir1/")]
    );
    assert_eq!(complete(&format!("{root}f")), [format!("{root}file1")]);
    assert_eq!(complete("--sandbox "), ["best-effort", "off", "strict"]);
    assert_eq!(complete("--socket-group roo"), ["root"]);
    // A span is no endpoint.
    assert!(complete("--connect-timeout ").is_empty());

    let options = fish_complete(&file, "--socket-g");
    assert!(
        options.iter().any(|(_, d)| d.contains("the process's")),
        "{options:?}"
    );
    assert!(Path::new(&file).exists());
}
