//! What this process holds, read from `/proc`: children, zombies, open file
//! descriptors and resident memory. Used to prove that tasks leave nothing
//! behind.

use std::time::{Duration, Instant};

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
/// The command name may contain spaces and parentheses, so split after the
/// last `)`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Pids of every process whose parent is `parent`, zombies included.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(fields) = stat_fields(pid)
            && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        {
            children.push(pid);
        }
    }
    children.sort_unstable();
    children
}

/// Processes whose command name (`comm`, at most 15 bytes: a program
/// started through a symlink takes the link's name) is `name`, zombies
/// included, with their state letter; only children of `parent` if given.
pub fn processes_named(name: &str, parent: Option<u32>) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; the name may hold spaces and `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().unwrap_or("?").to_owned();
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        if comm == name && parent.is_none_or(|parent| ppid == Some(parent)) {
            found.push((pid, state));
        }
    }
    found.sort_unstable();
    found
}

/// Children of this process that are zombies (dead but not reaped).
pub fn zombie_children() -> Vec<u32> {
    children_of(std::process::id())
        .into_iter()
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z")))
        .collect()
}

/// Whether `pid` runs anything (a zombie does not).
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// Open file descriptors of this process, not counting wasmtime's handle
/// on `/proc/self/pagemap`: its pooling allocator opens that once per
/// process, on first use, and keeps it (it is not per runner, so not a
/// leak).
pub fn open_fds() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).map_or(true, |target| !target.ends_with("pagemap"))
        })
        .count()
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Polls `done` every 20 ms until it holds or `limit` passes; returns
/// whether it held. Process exits and reaping are asynchronous, so checks
/// of "nothing left" wait for them with a generous bound.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `pid`. Errors (the process is already gone) are
/// returned, not panicked on: a fault injector races with normal exits.
pub fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    if pid <= 1 {
        return Err(std::io::Error::other("refusing to signal pid <= 1"));
    }
    // SAFETY: `kill` takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
