//! Memory figures from `/proc`, and timing a child process with its peak
//! RSS.
//!
//! Peak RSS comes from `wait4`'s resource usage (per child, unlike
//! `getrusage(RUSAGE_CHILDREN)`). It cannot be read for a child this
//! harness starts itself: `std::process` starts children with `vfork`, and
//! at `exec` the kernel folds the high-water RSS of the *parent's* address
//! space into the child's `ru_maxrss` (a `fork` copies the parent's page
//! tables, with the same effect). So [`measure`] runs the command through a
//! fresh, small copy of this binary ([`LAUNCHER_ARG`]), whose own RSS is far
//! below any measured program's.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Resident and proportional set size of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size.
    pub rss: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss: u64,
    /// Anonymous pages (heap, stacks, linear memories): what the process
    /// costs beyond the file pages it maps, which other processes share and
    /// the kernel can drop.
    pub anonymous: u64,
}

/// Reads `/proc/<pid>/smaps_rollup` (`self` for this process).
pub fn memory(pid: &str) -> Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    Ok(Memory {
        rss: kib_field(&text, "Rss:").context("no Rss in smaps_rollup")?,
        pss: kib_field(&text, "Pss:").context("no Pss in smaps_rollup")?,
        anonymous: kib_field(&text, "Anonymous:").context("no Anonymous in smaps_rollup")?,
    })
}

/// Drops `path`'s clean pages from the page cache (written back first), so
/// the next program that maps it reads them in as it touches them.
///
/// Why: a mapped file's resident pages depend on what is already cached.
/// On a fault the kernel maps every cached page of the surrounding 64 KiB
/// ("fault-around"), so a binary the linker just wrote, fully cached, shows
/// a higher RSS than the same binary read in page by page; two builds of
/// one program then differ by 20% in peak RSS for that reason alone.
pub fn evict_from_page_cache(path: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.sync_data()
        .with_context(|| format!("writing back {}", path.display()))?;
    // SAFETY: the descriptor is open for the duration of the call;
    // `posix_fadvise` only advises the kernel about its pages.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        bail!(
            "posix_fadvise on {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(r)
        );
    }
    Ok(())
}

/// The value of a `Key:   N kB` line, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Resident bytes of this process's Wasm linear memories, as wasmtime's
/// pooling allocator lays them out: each slot is the accessible part of a
/// memory (its initial image and heap, possibly several mappings) followed
/// by a huge inaccessible reservation (at least `min_reserve` bytes). Fiber
/// stacks, tables and the heap are not followed by one, so they are not
/// counted.
pub fn resident_linear_memory(min_reserve: u64) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps").context("reading /proc/self/smaps")?;
    let mut total = 0;
    // Resident bytes of the current run of contiguous accessible mappings.
    let mut run_rss = 0;
    let mut prev_end = 0u64;
    let mut current: Option<(u64, u64, bool)> = None; // (start, end, accessible)
    let mut size = 0;
    let mut flush = |mapping: (u64, u64, bool), rss: u64, size: u64, total: &mut u64| {
        let (start, end, accessible) = mapping;
        if start != prev_end {
            run_rss = 0;
        }
        if accessible {
            run_rss += rss;
        } else if size >= min_reserve {
            *total += run_rss;
            run_rss = 0;
        } else {
            run_rss = 0;
        }
        prev_end = end;
    };
    let mut rss = 0;
    for line in text.lines() {
        if let Some((range, rest)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            if let Some(mapping) = current.take() {
                flush(mapping, rss, size, &mut total);
            }
            let accessible = !rest.starts_with("---");
            current = Some((start, end, accessible));
            rss = 0;
            size = end - start;
        } else if let Some(v) = kib_field(line, "Rss:") {
            rss = v;
        }
    }
    if let Some(mapping) = current.take() {
        flush(mapping, rss, size, &mut total);
    }
    Ok(total)
}

/// CPU time (user + system, in clock ticks of 10 ms) a process has used,
/// from `/proc/<pid>/stat`; 0 if it cannot be read.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 0-based 11 and 12 after `)`.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Number of memory mappings of this process (bounded by
/// `vm.max_map_count`).
pub fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `MemAvailable` of the machine, in bytes.
pub fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kib_field(&t, "MemAvailable:"))
        .unwrap_or(0)
}

/// First argument that makes this binary a launcher: it runs the rest of
/// its command line as a timed child and prints a [`Timed`] as JSON.
pub const LAUNCHER_ARG: &str = "__isola-bench-launch";

/// How a timed child process went.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Timed {
    /// From spawn to reaped.
    pub wall: Duration,
    /// Peak resident set size of the child.
    pub max_rss: u64,
    /// Its stdout.
    pub stdout: Vec<u8>,
}

/// Runs `program args...` through a launcher (see the module docs): wall
/// time from spawn to exit and a true peak RSS.
pub fn measure(command: &Command) -> Result<Timed> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let output = Command::new(exe)
        .arg(LAUNCHER_ARG)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting the launcher")?;
    if !output.status.success() {
        bail!("{command:?} failed under the launcher ({})", output.status);
    }
    serde_json::from_slice(&output.stdout).context("the launcher's report")
}

/// The launcher's `main`: runs `args` (program first) with [`run_timed`]
/// and prints the result as JSON.
pub fn launcher_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let Some((program, rest)) = args.split_first() else {
        eprintln!("{LAUNCHER_ARG}: no program");
        return std::process::ExitCode::from(2);
    };
    match run_timed(Command::new(program).args(rest)) {
        Ok(timed) => match serde_json::to_string(&timed) {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{LAUNCHER_ARG}: {err}");
                std::process::ExitCode::from(1)
            }
        },
        Err(err) => {
            eprintln!("{LAUNCHER_ARG}: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs `command` to completion, timing it from spawn to exit and reading
/// its peak RSS. Stdout is captured (through a pipe read after exit, so it
/// must stay small), stderr is passed through. Fails on a non-zero exit.
pub fn run_timed(command: &mut Command) -> Result<Timed> {
    use std::io::Read as _;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: `pid` is our child, not yet reaped (std's `Child` only
        // reaps in `wait`/`try_wait`, which are not called); the pointers
        // are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    if reaped != pid {
        bail!("wait4 on {command:?}: {}", std::io::Error::last_os_error());
    }
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)
            .context("reading the child's stdout")?;
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{command:?} failed (wait status {status:#x})");
    }
    Ok(Timed {
        wall,
        // `ru_maxrss` is in KiB on Linux.
        max_rss: (usage.ru_maxrss as u64) * 1024,
        stdout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Rss:                1234 kB\nPss:                 100 kB\n";
        assert_eq!(kib_field(text, "Rss:"), Some(1234 * 1024));
        assert_eq!(kib_field(text, "Pss:"), Some(100 * 1024));
        assert_eq!(kib_field(text, "Swap:"), None);
    }

    #[test]
    fn own_memory_is_readable() {
        let m = memory("self").expect("smaps_rollup");
        assert!(m.rss > 0 && m.pss > 0);
        assert!(m.anonymous > 0 && m.anonymous <= m.rss);
    }

    #[test]
    fn times_a_child() {
        let t = run_timed(Command::new("true").arg("x")).expect("true runs");
        assert!(t.max_rss > 0);
        assert!(t.wall.as_nanos() > 0);
        assert!(run_timed(&mut Command::new("false")).is_err());
    }
}
