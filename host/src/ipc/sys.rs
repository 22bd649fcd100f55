//! The few OS calls process isolation needs that std does not offer:
//! resource limits, the parent-death signal, and signals to process groups.
//! Each `unsafe` block is a single libc call with plain integer arguments.

use std::io;

use super::protocol::OsLimits;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `setrlimit` reads the struct we pass by reference and touches
    // no other memory.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Bytes of memory this process holds that `RLIMIT_DATA` counts: `VmData`
/// of `/proc/self/status` (the heap and private writable mappings).
/// `None` where it cannot be read.
pub(crate) fn data_in_use() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmData:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// Applies `limits` to the calling process. Limits can only be lowered, so
/// a worker applies them to itself once it knows its task.
pub(crate) fn apply_limits(limits: &OsLimits) -> io::Result<()> {
    set_limit(libc::RLIMIT_DATA, limits.data_bytes, limits.data_bytes)?;
    set_limit(
        libc::RLIMIT_AS,
        limits.address_space_bytes,
        limits.address_space_bytes,
    )?;
    set_limit(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files)?;
    if let Some(seconds) = limits.cpu_seconds {
        // SIGXCPU at the soft limit (fatal by default), SIGKILL a second later.
        set_limit(libc::RLIMIT_CPU, seconds, seconds.saturating_add(1))?;
    }
    Ok(())
}

/// Applies `limits` as soft limits only, for a worker that runs one task
/// after another: a guest cannot call `setrlimit`, so the soft limit binds
/// it as firmly as a hard one, and the worker can raise it for the next
/// task. CPU time counts over the life of the process, so the budget is
/// added to what the worker has used so far.
pub(crate) fn apply_soft_limits(limits: &OsLimits) -> io::Result<()> {
    set_soft_limit(libc::RLIMIT_DATA, limits.data_bytes)?;
    set_soft_limit(libc::RLIMIT_AS, limits.address_space_bytes)?;
    set_soft_limit(libc::RLIMIT_NOFILE, limits.open_files)?;
    let cpu = match limits.cpu_seconds {
        Some(seconds) => cpu_seconds_used()?.saturating_add(seconds),
        None => libc::RLIM_INFINITY,
    };
    set_soft_limit(libc::RLIMIT_CPU, cpu)
}

fn set_soft_limit(resource: libc::__rlimit_resource_t, soft: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes only the struct we pass by reference.
    check(unsafe { libc::getrlimit(resource, &mut limit) })?;
    set_limit(resource, soft.min(limit.rlim_max), limit.rlim_max)
}

/// User plus system CPU time this process has used, rounded up.
fn cpu_seconds_used() -> io::Result<u64> {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes only the struct we pass by reference.
    check(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) })?;
    let seconds =
        |t: libc::timeval| u64::try_from(t.tv_sec).unwrap_or(0) + u64::from(t.tv_usec > 0);
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Asks the kernel to SIGKILL this process when its parent dies, then checks
/// the parent did not die already (in which case we were re-parented).
pub(crate) fn die_with_parent(expected_parent: u32) -> io::Result<()> {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    // SAFETY: `getppid` has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    if u32::try_from(parent).ok() != Some(expected_parent) {
        return Err(io::Error::other("the parent process is gone"));
    }
    Ok(())
}

/// The parent pid of this process.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: `getppid` has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    u32::try_from(parent).unwrap_or(0)
}

/// Sends `signal` to every process in the group led by `pgid`.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(io::Error::other)?;
    if pgid <= 1 {
        // Never signal "every process we can" (-1) or our own group (0).
        return Err(io::Error::other("refusing to signal a process group <= 1"));
    }
    // SAFETY: `killpg` takes integer arguments only.
    check(unsafe { libc::killpg(pgid, signal) })
}

/// Makes `SIGSEGV` and `SIGBUS` that are not Wasm traps kill the worker.
///
/// wasmtime handles these signals to implement traps and hands the ones it
/// does not own to the previous handler; when that is the default action it
/// merely restores it and returns, which drops a signal sent with `kill`.
/// Installed before the engine, this handler becomes that previous handler
/// and ends the process by the signal it got, so the parent reports the
/// crash precisely.
pub(crate) fn die_on_foreign_faults() -> io::Result<()> {
    for signal in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: `sigaction` is given a zeroed struct whose handler field
        // is a valid `extern "C"` function with the SA_SIGINFO signature;
        // `sigemptyset` initialises its mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = fatal_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            check(libc::sigaction(signal, &action, std::ptr::null_mut()))?;
        }
    }
    Ok(())
}

extern "C" fn fatal_signal(
    signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: `signal` and `raise` are async-signal-safe. The raised signal
    // is blocked while this handler runs, so it is delivered (with the
    // default action: terminate) as soon as the handler returns.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}
