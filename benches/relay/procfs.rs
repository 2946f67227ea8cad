//! What a process tree costs, read from `/proc`: CPU time (`stat`), memory
//! (`status`, `smaps_rollup`) and open descriptors. A tree, because socat
//! forks a process per connection; its exited children's CPU time is found
//! in the parent's `cutime`/`cstime` once it has reaped them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// The fields of `/proc/PID/stat` the benchmark uses.
struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Then: state ppid pgrp session tty tpgid flags
    // minflt cminflt majflt cmajflt utime stime cutime cstime ...
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: number(1)? as u32,
        ticks: number(11)? + number(12)? + number(13)? + number(14)?,
    })
}

/// `root` and every live descendant of it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        if let Some(kids) = children.get(&found[next]) {
            found.extend(kids);
        }
        next += 1;
    }
    found
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer name and returns an integer.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) used so far by `root`, its live descendants
/// and the descendants it has reaped.
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.ticks)
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// Memory and descriptors of a process tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Sum of resident set sizes, bytes (counts shared pages once per process).
    pub rss: u64,
    /// Sum of proportional set sizes, bytes: shared pages split between the
    /// processes sharing them, so a forking peer is not overcharged.
    pub pss: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Processes in the tree.
    pub processes: u64,
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory of `root` and its live descendants.
pub fn memory(root: u32) -> Memory {
    let mut total = Memory::default();
    for pid in tree(root) {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        total.processes += 1;
        total.rss += kib_field(&status, "VmRSS:").unwrap_or(0);
        total.pss += fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| kib_field(&t, "Pss:"))
            .unwrap_or(0);
        total.fds += fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
    }
    total
}

/// The 1-minute load average, to tell how quiet the machine was.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The pipes process `pid` holds, counted by capacity in bytes
/// (`F_GETPIPE_SZ` through `/proc/PID/fd`).
pub fn pipes(pid: u32) -> BTreeMap<i64, usize> {
    let mut seen = BTreeSet::new();
    let mut by_size = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return by_size;
    };
    for entry in entries.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with("pipe:") || !seen.insert(target) {
            continue;
        }
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(entry.path())
        else {
            continue;
        };
        // SAFETY: fcntl with an integer command on a descriptor we own.
        let size = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETPIPE_SZ) };
        *by_size.entry(i64::from(size)).or_default() += 1;
    }
    by_size
}

/// "13 × 1024 KiB, 19 × 8 KiB".
pub fn describe_pipes(pipes: &BTreeMap<i64, usize>) -> String {
    if pipes.is_empty() {
        return "none".into();
    }
    pipes
        .iter()
        .rev()
        .map(|(size, count)| format!("{count} × {} KiB", size / 1024))
        .collect::<Vec<_>>()
        .join(", ")
}
