//! Shell completion scripts for bash, zsh and fish, generated from the
//! command-line definition itself (argh's `ArgsInfo`), so that a new option
//! is completed as soon as it exists. `--completions SHELL` prints one; the
//! Debian package installs each where its shell looks.
//!
//! Each script completes what the program accepts, and nothing it refuses:
//! options, the values of those that have a fixed set (or users and groups),
//! and the endpoint forms in their places (LISTEN first, then CONNECT; the
//! LISTEN-only forms only there). A form that needs more after it (`unix:`,
//! `tcp:`, `fd:`, `sd-listen:`, `@`, a directory) is completed without a
//! trailing space; everything else with one. Short options are not offered
//! stacked (`-qv`): the only flags that could stack exclude each other.

use std::fmt::Write;

use argh::{CommandInfoWithArgs, FlagInfo, FlagInfoKind};

/// What an option's value is, for its completion.
enum Values {
    /// One of these words.
    Words(&'static str),
    /// A user name.
    Users,
    /// A group name.
    Groups,
    /// Anything (a number, a span, a mode): nothing to offer.
    Free,
}

fn values(long: &str) -> Values {
    match long {
        "--sandbox" => Values::Words("best-effort strict off"),
        "--proxy-protocol" => Values::Words("v1 v2"),
        "--completions" => Values::Words("bash zsh fish"),
        "--log-time" => Values::Words("yes no"),
        "--allow-uid" => Values::Users,
        "--allow-gid" | "--socket-group" => Values::Groups,
        _ => Values::Free,
    }
}

/// An endpoint form that is a word or a prefix, what it means, and whether
/// only LISTEN takes it.
struct Form {
    word: &'static str,
    description: &'static str,
    listen_only: bool,
}

const FORMS: &[Form] = &[
    Form {
        word: "sd-listen",
        description: "every socket passed by systemd socket activation",
        listen_only: true,
    },
    Form {
        word: "sd-listen:",
        description: "the passed sockets whose FileDescriptorName= is NAME",
        listen_only: true,
    },
    Form {
        word: "fd:",
        description: "inherited file descriptor N",
        listen_only: true,
    },
    Form {
        word: "unix:",
        description: "Unix socket: unix:PATH or unix:@NAME",
        listen_only: false,
    },
    Form {
        word: "tcp:",
        description: "TCP: tcp:HOST:PORT or tcp:[IPV6]:PORT",
        listen_only: false,
    },
    Form {
        word: "@",
        description: "Linux abstract Unix socket @NAME",
        listen_only: false,
    },
];

/// The completion script for `shell`.
pub fn script(
    program: &str,
    info: &CommandInfoWithArgs,
    shell: Option<&str>,
) -> Result<String, String> {
    let flags: Vec<&FlagInfo> = info.flags.iter().filter(|f| !f.hidden).collect();
    match shell {
        Some("bash") => Ok(bash(program, &flags)),
        Some("zsh") => Ok(zsh(program, &flags)),
        Some("fish") => Ok(fish(program, &flags)),
        Some(other) => Err(format!("'{other}' is not one of bash, zsh, fish")),
        None => Err("name a shell: bash, zsh or fish".into()),
    }
}

/// A flag's short form; argh adds `--help` without one, and this program
/// also takes `-h`.
fn short(flag: &FlagInfo) -> Option<char> {
    match flag.long {
        "--help" => Some('h'),
        _ => flag.short,
    }
}

fn takes_value(flag: &FlagInfo) -> bool {
    matches!(flag.kind, FlagInfoKind::Option { .. })
}

/// Every spelling of the options that take a value (`--connections-max`,
/// `-c`), for a shell `case` pattern or list.
fn with_value(flags: &[&FlagInfo]) -> Vec<String> {
    let mut names = Vec::new();
    for flag in flags.iter().filter(|f| takes_value(f)) {
        names.push(flag.long.to_string());
        if let Some(short) = short(flag) {
            names.push(format!("-{short}"));
        }
    }
    names
}

fn words(forms: impl Iterator<Item = &'static Form>) -> String {
    forms.map(|f| f.word).collect::<Vec<_>>().join(" ")
}

fn bash(program: &str, flags: &[&FlagInfo]) -> String {
    let function = format!("_{}", program.replace('-', "_"));
    let mut options = Vec::new();
    for flag in flags {
        options.push(flag.long.to_string());
        if let Some(short) = short(flag) {
            options.push(format!("-{short}"));
        }
    }
    let mut cases = String::new();
    for flag in flags.iter().filter(|f| takes_value(f)) {
        let generator = match values(flag.long) {
            Values::Words(list) => format!("compgen -W \"{list}\" -- \"$value\""),
            Values::Users => "compgen -u -- \"$value\"".into(),
            Values::Groups => "compgen -g -- \"$value\"".into(),
            Values::Free => continue,
        };
        let _ = writeln!(
            cases,
            "            {}) replies=($({generator})) ;;",
            flag.long
        );
    }
    let with_value = with_value(flags).join("|");
    let all_forms = words(FORMS.iter());
    let connect_forms = words(FORMS.iter().filter(|f| !f.listen_only));
    format!(
        r#"# bash completion for {program}, generated by `{program} --completions bash`
#
# The word is taken from COMP_LINE, whole: bash splits `unix:/run` and
# `--sandbox=strict` at ':' and '=' (COMP_WORDBREAKS), and the replies are
# cut back to the part bash replaces. No space follows a reply that needs
# more (unix:, tcp:, fd:, sd-listen:, @, a directory); every other reply
# gets one.
{function}() {{
    local line=${{COMP_LINE:0:COMP_POINT}}
    local word_re='((\\.|[^[:space:]\\])*)$'
    [[ $line =~ $word_re ]]
    local cur=${{BASH_REMATCH[1]}}
    local -a words
    read -ra words <<<"${{line:0:${{#line}}-${{#cur}}}}"
    local prev=${{words[${{#words[@]}}-1]}}
    # Which positional argument the word is: 0 LISTEN, 1 CONNECT.
    local i position=0 skip= dashdash=
    for ((i = 1; i < ${{#words[@]}}; i++)); do
        if [[ -n $skip ]]; then
            skip=
        elif [[ -z $dashdash && ${{words[i]}} == -- ]]; then
            dashdash=1
        elif [[ -z $dashdash && ${{words[i]}} == -?* ]]; then
            case ${{words[i]}} in
                {with_value}) skip=1 ;;
            esac
        else
            position=$((position + 1))
        fi
    done
    local -a replies=()
    local option= value=$cur lead= paths= formed=0
    if [[ -z $dashdash && $cur == --*=* ]]; then
        option=${{cur%%=*}} value=${{cur#*=}} lead=$option=
    elif [[ -n $skip ]]; then
        option=$prev
    fi
    if [[ -n $option ]]; then
        case $option in
{cases}        esac
        replies=("${{replies[@]/#/$lead}}")
    elif [[ -z $dashdash && $cur == -* ]]; then
        replies=($(compgen -W "{options}" -- "$cur"))
    elif ((position < 2)); then
        local forms="{connect_forms}" path=$cur
        ((position == 0)) && forms="{all_forms}"
        case $cur in
            unix:@* | @* | tcp:* | fd:* | sd-listen:*) path= ;;
            unix:*) lead=unix: path=${{cur#unix:}} ;;
            *:*) [[ $cur == */* ]] || path= ;;
            *) replies=($(compgen -W "$forms" -- "$cur")) formed=${{#replies[@]}} ;;
        esac
        if [[ -n $path || $cur == "" || $cur == unix: ]]; then
            local entry
            while IFS= read -r entry; do
                [[ -d $entry ]] && entry+=/
                replies+=("$lead$entry")
                paths=1
            done < <(if [[ $path == */* ]]; then compgen -f -- "$path"; else compgen -d -- "$path"; fi)
        fi
    fi
    if ((${{#replies[@]}} == 1)) && [[ ${{replies[0]}} == *[:/@] ]]; then
        compopt -o nospace 2>/dev/null
    fi
    # Bash replaces only what follows the last word-break character.
    local keep=0
    for ((i = 0; i < ${{#cur}}; i++)); do
        [[ ${{cur:i:1}} != [[:space:]] && $COMP_WORDBREAKS == *"${{cur:i:1}}"* ]] && keep=$((i + 1))
    done
    COMPREPLY=()
    for i in "${{replies[@]}}"; do
        COMPREPLY+=("${{i:keep}}")
    done
    # Quoting as for file names, but not for the forms, whose ':' and '@'
    # it would escape.
    [[ -n $paths ]] && ((formed == 0)) && compopt -o filenames 2>/dev/null
    return 0
}}
complete -F {function} {program}
"#,
        options = options.join(" "),
    )
}

/// Text inside a shell's single quotes, apostrophes kept (`'\''`).
fn single_quoted(text: &str) -> String {
    text.replace('\'', r"'\''")
}

/// A description inside zsh's `'[...]'`, where brackets end it and `:`
/// separates the parts of a spec.
fn zsh_description(description: &str) -> String {
    single_quoted(description)
        .replace('[', "(")
        .replace(']', ")")
        .replace(':', "\\:")
}

fn zsh(program: &str, flags: &[&FlagInfo]) -> String {
    let function = format!("_{}", program.replace('-', "_"));
    let mut specs = String::new();
    for flag in flags {
        let description = zsh_description(flag.description);
        let action = match (&flag.kind, values(flag.long)) {
            (FlagInfoKind::Option { arg_name }, Values::Words(list)) => {
                format!(":{arg_name}:({list})")
            }
            (FlagInfoKind::Option { arg_name }, Values::Users) => format!(":{arg_name}:_users"),
            (FlagInfoKind::Option { arg_name }, Values::Groups) => format!(":{arg_name}:_groups"),
            (FlagInfoKind::Option { arg_name }, Values::Free) => format!(":{arg_name}: "),
            (FlagInfoKind::Switch, _) => String::new(),
        };
        // What the option excludes: -q and -v each other, --help,
        // --version and --completions everything else.
        let names = match short(flag) {
            Some(short) => format!("-{short} {}", flag.long),
            None => flag.long.to_string(),
        };
        let exclusion = match flag.long {
            "--help" | "--version" | "--completions" => "(- *)".to_string(),
            "--quiet" | "--verbose" => "(-q --quiet -v --verbose)".to_string(),
            "--allow-uid" | "--allow-gid" => "*".to_string(),
            _ => format!("({names})"),
        };
        let spellings = match short(flag) {
            Some(short) => format!("{{-{short},{}}}", flag.long),
            None => flag.long.to_string(),
        };
        let _ = writeln!(
            specs,
            "    '{exclusion}'{spellings}'[{description}]{action}' \\"
        );
    }
    let form = |f: &Form| {
        format!(
            "'{}:{}'",
            f.word.replace(':', "\\:"),
            single_quoted(f.description)
        )
    };
    let words_of = |prefix: bool, listen: bool| {
        FORMS
            .iter()
            .filter(|f| f.word.ends_with([':', '@']) == prefix && (listen || !f.listen_only))
            .map(form)
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"#compdef {program}
# zsh completion for {program}, generated by `{program} --completions zsh`

# An endpoint: the forms (no space after a prefix such as unix:), then a path.
{function}_endpoint() {{
    local -a complete_forms prefix_forms
    # _arguments passes compadd options (-J ...) first; the role comes last.
    local role
    for role; do :; done
    if compset -P 'unix:'; then
        case $PREFIX in
            @*) _message -e names 'abstract socket name' ;;
            *) _files ;;
        esac
        return
    fi
    case $PREFIX in
        sd-listen:*) _message -e names 'FileDescriptorName= of the passed sockets'; return ;;
        fd:*) _message -e descriptors 'inherited file descriptor number'; return ;;
        tcp:*|@*) _message -e addresses 'address'; return ;;
        *:*) case $PREFIX in */*) ;; *) _message -e addresses 'HOST:PORT'; return ;; esac ;;
    esac
    case $role in
        listen) complete_forms=({listen_words}); prefix_forms=({listen_prefixes}) ;;
        *) complete_forms=({connect_words}); prefix_forms=({connect_prefixes}) ;;
    esac
    _alternative \
        'forms:endpoint form:{{_describe -t forms "endpoint form" complete_forms -- prefix_forms -S ""}}' \
        'files:socket file:_files'
}}

_arguments \
{specs}    '1:LISTEN:{function}_endpoint listen' \
    '2:CONNECT:{function}_endpoint connect'
"#,
        listen_words = words_of(false, true),
        listen_prefixes = words_of(true, true),
        connect_words = words_of(false, false),
        connect_prefixes = words_of(true, false),
    )
}

/// Text inside fish's single quotes, where `\` and `'` are escaped.
fn fish_quoted(text: &str) -> String {
    text.replace('\\', r"\\").replace('\'', r"\'")
}

fn fish(program: &str, flags: &[&FlagInfo]) -> String {
    let function = format!("__{}_endpoints", program.replace('-', "_"));
    let mut out = format!(
        "# fish completion for {program}, generated by `{program} --completions fish`\n\
         # fish adds no space after a completion ending in ':', '@' or '/'.\n\
         complete -c {program} -f -a '({function})'\n"
    );
    for flag in flags {
        let mut line = format!("complete -c {program} -l {}", &flag.long[2..]);
        if let Some(short) = short(flag) {
            let _ = write!(line, " -s {short}");
        }
        if takes_value(flag) {
            line.push_str(" -x");
            match values(flag.long) {
                Values::Words(list) => {
                    let _ = write!(line, " -a '{list}'");
                }
                Values::Users => line.push_str(" -a '(__fish_complete_users)'"),
                Values::Groups => line.push_str(" -a '(__fish_complete_groups)'"),
                Values::Free => {}
            }
        }
        let _ = write!(line, " -d '{}'", fish_quoted(flag.description));
        out.push_str(&line);
        out.push('\n');
    }
    let with_value = with_value(flags)
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let forms = |listen_only: bool| {
        FORMS
            .iter()
            .filter(|f| f.listen_only == listen_only)
            .map(|f| format!("'{}' '{}'", f.word, fish_quoted(f.description)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        out,
        r#"
# LISTEN and CONNECT: the endpoint forms in their place, then paths.
function {function}
    set -l position 0
    set -l skip 0
    set -l dashdash 0
    for token in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
        else if test $dashdash = 0; and test "$token" = --
            set dashdash 1
        else if test $dashdash = 0; and string match -q -- '-?*' $token
            switch $token
                case {with_value}
                    set skip 1
            end
        else
            set position (math $position + 1)
        end
    end
    test $position -lt 2; or return
    set -l token (commandline -ct)
    switch $token
        case 'unix:@*' '@*' 'tcp:*' 'fd:*' 'sd-listen:*'
            return
        case 'unix:*'
            for path in (__fish_complete_path (string sub -s 6 -- $token))
                echo unix:$path
            end
            return
    end
    if test $position = 0
        printf '%s\t%s\n' {listen_forms}
    end
    printf '%s\t%s\n' {common_forms}
    # A path has a '/' (./sock for the current directory): directories
    # until it has one.
    if string match -q -- '*/*' $token
        __fish_complete_path $token
    else if not string match -q -- '*:*' $token
        __fish_complete_directories $token
    end
end
"#,
        listen_forms = forms(true),
        common_forms = forms(false),
    );
    out
}
