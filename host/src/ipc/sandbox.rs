//! The OS sandbox around a process task's worker: the layers a guest that
//! escaped wasmtime (a Cranelift or WASI bug) still has to get through.
//!
//! Four independent layers of the worker's own, each a function here that reports a
//! [`LayerState`] instead of failing, so the caller decides whether a
//! missing layer is a warning or a refusal.
//!
//! | layer | function | stops | does not stop |
//! |---|---|---|---|
//! | a network namespace of the parent's workers (made by its first sandboxed worker, see `process::netns`) | [`enter_network_namespace`] in the first worker, [`join_network_namespace`] in the others | any network use, even through a socket the filter would let by: the namespace has only a loopback interface, and that one is down; abstract UNIX sockets of the host (they live in the network namespace) | pathname UNIX sockets (files: Landlock's job), nothing outside networking |
//! | Landlock | [`FileRules`] | opening, creating, renaming, linking, removing, truncating anything outside [`Grants`]; writing inside read-only grants; executing files; with Landlock ABI 4+ TCP `bind`/`connect`; with ABI 6+ signals to processes outside the sandbox and abstract UNIX sockets made outside it | `stat`, `access`, `readlink` of any path (Landlock does not cover metadata reads), descriptors the worker opened before (the IPC pipes, the preopened grants), `truncate(2)` below ABI 3, ioctl on devices below ABI 5 |
//! | seccomp-BPF allowlist | [`install_seccomp`] ([`FILTER_TEMPLATE`]) | every system call a worker does not make once it runs guests: `socket`, `execve`, `ptrace`, `fork`/`vfork`/`clone` of a process, `mount`, `unshare`, `setns`, `bpf`, `io_uring_*`, `perf_event_open`, `process_vm_*`, `keyctl`, `userfaultfd`, `kill` (any), `tgkill` of other processes, chmod/chown, … (the call is not made: the worker ends with [`FORBIDDEN_SYSCALL_EXIT`] and names it on stderr) | what an allowed call does with allowed arguments: reading and writing open descriptors, `openat` (Landlock limits where), `mmap`/`mprotect` (a guest that owns the process can still make memory executable: the filter cuts the kernel's attack surface, not the process's own memory); `prlimit64` on itself, so soft limits can be raised up to the hard ones |
//! | closing inherited descriptors | [`close_other_fds`] | a descriptor an embedding program leaked without `O_CLOEXEC` reaching the worker | descriptors the worker opens itself |
//! | cgroup limits (made by the parent: [`crate::ipc::cgroup`]) | memory beyond the task's process memory limit, swap, kernel and shared memory included (what `RLIMIT_DATA` misses); more than 64 threads; with `RunnerConfig::worker_cpu_quota`, more CPU than that | memory bandwidth, disk I/O, the wall time of a throttled worker (its timeout does) |
//!
//! # Order
//!
//! 1. At the very start of the worker, while it is still one thread:
//!    [`close_other_fds`] (keeping 0, 1, 2), then
//!    [`enter_network_namespace`] or [`join_network_namespace`] (a
//!    threaded process cannot change its user namespace).
//! 2. Before any task (a pre-started worker does it while it waits), once
//!    its engine and epoch ticker are up: [`install_seccomp`], which also
//!    installs the SIGSYS reporter. The filter allows Landlock's own
//!    calls, which can only take rights away. The epoch ticker's thread,
//!    which never opens a file, gives up every file as it starts
//!    ([`deny_files_on_this_thread`]).
//! 3. A pre-started worker makes its Landlock ruleset ([`FileRules`]) while
//!    it waits, with the rules every task of its runner shares (the compile
//!    cache, `/proc/self/status`). Once a task's program is loaded, before
//!    its directories are opened and its guest runs, the task's own grants
//!    are added and the ruleset is enforced ([`FileRules::enforce`]).
//!
//! A worker that runs several tasks (`reuse_worker`) keeps the Landlock
//! rules of its first task (rulesets only ever narrow), so its parent hands
//! it only tasks with the same grants. Its grants include what loading a
//! later task reads: the compile cache's directory (a component's artifact
//! is reopened through `/proc/self/fd/N`, which Landlock checks against the
//! artifact's own path), the Wasm file (read when an artifact is missing
//! and the worker compiles), and `/proc/self/status` (read by the
//! memory-limit check before each task).
//!
//! # Threads
//!
//! seccomp filters are applied to every thread of the worker at once
//! (`SECCOMP_FILTER_FLAG_TSYNC`). Landlock can do the same only from ABI 8
//! (Linux 7.0, `LANDLOCK_RESTRICT_SELF_TSYNC`); below it, `landlock_restrict_self`
//! binds only the calling thread and the threads it starts afterwards. A
//! worker already has its epoch ticker thread (and, if it ran a task before,
//! tokio's blocking-pool threads) when it gets its task, and a guest that
//! took over the process could run code on one of those. The ticker denied
//! itself every file when it started; on such kernels [`FileRules::enforce`]
//! asks each other thread to restrict itself: it sends
//! each one a real-time signal whose handler calls `landlock_restrict_self`
//! on the same ruleset (as glibc does for `setuid` in a threaded process),
//! waits for every thread to answer, and reports [`LayerState::Partial`] if
//! one did not. (go-landlock does the same.) Each thread then has a domain
//! of its own with the same rules; Landlock's signal and abstract-socket
//! scopes treat those as different domains, which kernels before 6.15 also
//! apply between threads of one process. The worker signals none of its
//! other threads and connects to no socket, so nothing it does crosses them.
//!
//! A worker lists its threads before its task arrives
//! ([`FileRules::note_quiet_threads`]: a pre-started worker's main thread
//! while it waits, a cold worker's ticker once it denied itself every
//! file); if at most one thread is not denied, the task's enforcement on
//! that thread skips the listing unless [`THREADS_STARTED`] moved since.
//! That rests on one invariant: once its epoch ticker runs, a worker
//! starts threads only through its Tokio runtime (the blocking pool),
//! whose `thread_name_fn` counts each one on the spawning thread before it
//! exists ([`THREADS_STARTED`]), and whose `on_thread_start` counts it
//! again once it runs ([`THREADS_RUNNING`]): a listing taken while the two
//! differ does not count. Code that starts a thread any other way between
//! that listing and its task's enforcement must count it too.
//!
//! # Cost (measured on the development machine, kernel 6.18)
//!
//! `unshare(CLONE_NEWNET)` costs about 0.6-0.7 ms (a user namespace around
//! it adds about 0.05 ms), a quarter of a cold process task's 2.2 ms start,
//! which is why it belongs before the handshake of pre-started workers.
//! Loading the seccomp filter costs the kernel about 0.06 ms, most of it
//! filling its per-filter action cache (it runs the program for each of
//! about 460 system call numbers): a binary tree ([`FILTER_TEMPLATE`]),
//! where a linear program of the same rules took 0.3 ms. A pre-started
//! worker pays it before its task exists; a cold one on its way to its
//! task. The Landlock ruleset, made
//! while a pre-started worker waits ([`FileRules`]), leaves about 0.09 ms
//! on the task's way (the listing of threads and `landlock_restrict_self`,
//! slow as the first calls after an idle wait are). Allowed system calls
//! cost nearly nothing: those allowed whatever their arguments are
//! answered from the kernel's per-filter action cache.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, RestrictSelfAttr, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};

/// Exit status of a worker that made a system call the filter forbids (the
/// SIGSYS reporter's `_exit`), next to
/// [`WORKER_OUT_OF_MEMORY`](crate::outcome::WORKER_OUT_OF_MEMORY) (86),
/// and defined beside it. Like it, no guest can choose it: a guest's exit
/// code travels in a frame, never as the worker's status. The reporter
/// writes the system call's number to stderr first
/// ([`parse_forbidden_syscall`] reads it back).
pub(crate) const FORBIDDEN_SYSCALL_EXIT: i32 = crate::outcome::WORKER_FORBIDDEN_SYSCALL;

/// What the SIGSYS reporter writes before the system call's number.
pub(crate) const FORBIDDEN_SYSCALL_PREFIX: &str = "isola worker: forbidden system call ";

/// What a worker's sandbox may reach on the file system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Grants {
    /// Files and directories (each with everything beneath it) the worker may
    /// read: the read-only directory grants, and whatever loading programs
    /// after the sandbox is up reads (see the module docs).
    pub read: Vec<PathBuf>,
    /// Directories the worker may read, and create, change, rename and
    /// delete files and directories in: the writable directory grants.
    pub write: Vec<PathBuf>,
}

/// How far one layer of the sandbox is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LayerState {
    /// In force, as documented for the layer.
    Enforced,
    /// In force with a gap, which the text names.
    Partial(String),
    /// Not in force; the text says why (the kernel lacks it, a setting
    /// forbids it, ...).
    Unavailable(String),
}

impl LayerState {
    /// Whether the layer is fully in force.
    pub(crate) fn is_enforced(&self) -> bool {
        matches!(self, LayerState::Enforced)
    }
}

impl fmt::Display for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerState::Enforced => f.write_str("enforced"),
            LayerState::Partial(why) => write!(f, "partial: {why}"),
            LayerState::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// What a worker's sandbox turned out to be, layer by layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Landlock: the file system (and, from ABI 4, TCP; from ABI 6, signals
    /// and abstract UNIX sockets).
    pub landlock: LayerState,
    /// The seccomp-BPF allowlist.
    pub seccomp: LayerState,
    /// The fresh network namespace.
    pub network_namespace: LayerState,
}

impl Applied {
    /// Whether every layer is fully in force.
    pub(crate) fn is_complete(&self) -> bool {
        self.landlock.is_enforced()
            && self.seccomp.is_enforced()
            && self.network_namespace.is_enforced()
    }
}

// ---------------------------------------------------------------------
// Network namespace
// ---------------------------------------------------------------------

/// Moves the worker into a network namespace of its own, which has nothing
/// but a loopback interface that is down: no connection can leave it, and
/// the host's abstract UNIX sockets (which belong to a network namespace)
/// are out of reach.
///
/// Tries `unshare(CLONE_NEWNET)` (which needs `CAP_SYS_ADMIN`), then, as an
/// unprivileged user, `unshare(CLONE_NEWUSER | CLONE_NEWNET)`: the new user
/// namespace grants that capability over the new network namespace only.
/// The user namespace maps the worker's own user and group to themselves
/// (`setgroups` denied first, as the kernel requires), so files it creates
/// and the permissions it gets are what they were.
///
/// Call it while the worker is a single thread: the kernel refuses a new
/// user namespace to a threaded process (`EINVAL`), and that is reported as
/// [`LayerState::Unavailable`]. (`CLONE_NEWNET` alone has no such rule.)
///
/// Does not stop anything but networking; costs about 0.6 ms.
pub(crate) fn enter_network_namespace() -> LayerState {
    // SAFETY: `unshare` takes a flag set and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return LayerState::Enforced;
    }
    let direct = io::Error::last_os_error();
    if direct.raw_os_error() != Some(libc::EPERM) {
        return LayerState::Unavailable(format!("cannot create a network namespace: {direct}"));
    }
    // SAFETY: `getuid` and `getgid` take no arguments and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: as above, a flag set only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        let why = match err.raw_os_error() {
            Some(libc::EINVAL) => format!(
                "the worker already runs several threads, and a new user namespace needs a \
                 single-threaded process ({err})"
            ),
            Some(libc::EPERM | libc::EACCES | libc::ENOSPC | libc::EUSERS) => format!(
                "unprivileged user namespaces are disabled here ({err}; see \
                 user.max_user_namespaces, kernel.unprivileged_userns_clone or an AppArmor \
                 userns restriction)"
            ),
            _ => err.to_string(),
        };
        return LayerState::Unavailable(format!(
            "not privileged to create a network namespace ({direct}), and no user namespace \
             either: {why}"
        ));
    }
    // The change of credentials made the process undumpable, its /proc
    // files root's: its own id maps among them.
    // SAFETY: `prctl` with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    if let Err(err) = map_own_ids(uid, gid) {
        // The network namespace is in place all the same. Unmapped, the
        // worker's user shows as the overflow id inside, but the kernel
        // still checks files against its real one.
        tracing::debug!("the worker's user namespace has no id map: {err}");
    }
    // Every capability in the new namespaces: none is needed, and without
    // them nothing in the process can bring the loopback interface up.
    if let Err(err) = drop_capabilities() {
        return LayerState::Partial(format!(
            "the worker keeps its capabilities in its own namespaces: {err}"
        ));
    }
    LayerState::Enforced
}

/// Moves this process into the network namespace that process `pid` (the
/// worker's parent) holds open as descriptor `net`, through the user
/// namespace it holds as `user` first, if any: one namespace, made once by
/// the parent's first sandboxed worker with [`enter_network_namespace`],
/// for all its workers, so a worker's start costs two `setns` calls
/// instead of the 0.6 ms of a namespace of its own. The descriptors are
/// reached through `/proc/PID/fd/N`, which needs the parent to be
/// dumpable and of the worker's user.
///
/// Joining a user namespace it owns gives the worker every capability
/// inside it; they are dropped at once (the worker needs none), so it
/// cannot so much as bring the loopback interface up.
///
/// Call it while the process is a single thread (the kernel refuses to move
/// a threaded process to another user namespace), and before setting a
/// parent-death signal: the change of credentials clears it.
pub(crate) fn join_network_namespace(pid: u32, user: Option<i32>, net: i32) -> LayerState {
    let open = |fd: i32, name: &str| {
        File::open(format!("/proc/{pid}/fd/{fd}")).map_err(|e| {
            format!(
                "cannot open the shared {name} namespace (descriptor {fd} of process {pid}): {e}"
            )
        })
    };
    let join = |file: &File, kind: libc::c_int, name: &str| {
        // SAFETY: `setns` takes a descriptor we own, open for the call, and a
        // namespace type; it touches no memory of ours.
        if unsafe { libc::setns(file.as_raw_fd(), kind) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot join the shared {name} namespace: {}",
                io::Error::last_os_error()
            ))
        }
    };
    let result = (|| {
        let net = open(net, "network")?;
        match user {
            Some(user) => {
                join(&open(user, "user")?, libc::CLONE_NEWUSER, "user")?;
                join(&net, libc::CLONE_NEWNET, "network")?;
                drop_capabilities().map_err(|e| format!("cannot drop capabilities: {e}"))?;
                // The change of credentials made the process undumpable
                // (its /proc files root's), which would hide its memory
                // figures from its own user; a worker was dumpable before
                // and stays so.
                // SAFETY: `prctl` with integer arguments only.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
                Ok(())
            }
            None => join(&net, libc::CLONE_NEWNET, "network"),
        }
    })();
    match result {
        Ok(()) => LayerState::Enforced,
        Err(why) => LayerState::Unavailable(why),
    }
}

/// Empties this thread's effective, permitted and inheritable capability
/// sets (`capset`, version 3 headers).
fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3 (linux/capability.h): two `Data` words.
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: `capset` reads the header and two data words, which are live
    // locals laid out as the kernel's structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps `uid` and `gid` to themselves in the user namespace just entered.
fn map_own_ids(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    match std::fs::write("/proc/self/setgroups", "deny") {
        // Kernels before 3.19 have no such file and no such rule.
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
}

// ---------------------------------------------------------------------
// Landlock
// ---------------------------------------------------------------------

/// `landlock_create_ruleset` flag: return the highest ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The Landlock ABI version of the running kernel, or why there is none
/// (`ENOSYS`: not built in; `EOPNOTSUPP`: built in, not enabled at boot).
fn landlock_abi() -> io::Result<i32> {
    // SAFETY: with a null attribute, a size of 0 and the VERSION flag, the
    // kernel reads no memory and only returns its ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0_usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::try_from(version).unwrap_or(i32::MAX))
}

/// The Landlock ABI version of this kernel, for diagnostics (`isola check
/// --sandbox`); `None` without Landlock.
pub(crate) fn landlock_abi_version() -> Option<i32> {
    landlock_abi().ok()
}

/// Why there is no Landlock, from [`landlock_abi`]'s error.
fn landlock_missing(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "this kernel has no Landlock (it needs Linux 5.13 or later, built with \
             CONFIG_SECURITY_LANDLOCK)"
                .to_owned()
        }
        Some(libc::EOPNOTSUPP) => "Landlock is built into this kernel but not enabled (add \
                                   `landlock` to the `lsm=` boot parameter)"
            .to_owned(),
        _ => format!("cannot query Landlock: {err}"),
    }
}

/// Rights on a read-only grant: read files, list directories. Not
/// `Execute`: a worker never runs a file.
fn read_access() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Rights on a writable grant: everything this ABI controls except
/// executing files, making device, FIFO and socket files, device ioctls
/// and connecting to UNIX sockets, which no WASI call needs.
fn write_access(abi: ABI) -> BitFlags<AccessFs> {
    let never = AccessFs::Execute
        | AccessFs::MakeChar
        | AccessFs::MakeBlock
        | AccessFs::MakeFifo
        | AccessFs::MakeSock
        | AccessFs::IoctlDev
        | AccessFs::ResolveUnix;
    AccessFs::from_all(abi) & !never
}

/// Opens `path` for a Landlock rule (`O_PATH`: no read permission needed)
/// and says whether it is a directory.
fn open_for_rule(path: &Path) -> io::Result<(File, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    let is_dir = file.metadata()?.is_dir();
    Ok((file, is_dir))
}

/// Restricts the worker's file system access to `grants` with Landlock,
/// for good: read-only grants can be read and listed, writable ones also
/// changed; everything else is refused with `EACCES` by the kernel, to
/// every thread of the worker (see the module docs on threads) and every
/// thread it starts later. [`FileRules`] in one call (the worker uses it in
/// steps); see it for what the ruleset handles.
///
/// Call it after the task's program is loaded and before its directories
/// are opened. [`install_seccomp`]'s filter allows Landlock's calls (they
/// only take rights away), so it may already be in place. Reads and writes
/// on descriptors opened before are not checked again; opening anything,
/// even relative to a directory opened before (every WASI path call), is.
#[cfg(test)]
pub(crate) fn restrict_files(grants: &Grants) -> LayerState {
    let mut rules = match FileRules::new() {
        Ok(rules) => rules,
        Err(state) => return state,
    };
    rules.allow_grants(grants);
    rules.enforce()
}

/// A Landlock ruleset being filled in, not yet in force: what
/// `restrict_files` does, in steps, so that a pre-started worker can make
/// the ruleset and give the rules every task shares while it waits (the
/// kernel's part costs about 0.1 ms, which a task would otherwise wait
/// for), and only its task's own paths and the enforcement remain on the
/// task's way.
///
/// The ruleset handles every file-system right of the running kernel's
/// Landlock ABI, so nothing the kernel can control is left open; with ABI 4
/// or later it also refuses every TCP `bind` and `connect` (no port is
/// granted), with ABI 6 or later signals to processes outside the sandbox
/// and connecting to abstract UNIX sockets created outside it. Paths that
/// cannot be opened are left out (they stay unreachable). Rules only ever
/// add rights, so a path given twice costs one rule, and one given read
/// and then write access gets both.
pub(crate) struct FileRules {
    abi: ABI,
    /// `None` once the kernel refused a rule; [`FileRules::enforce`] then
    /// reports why, in `refused`.
    ruleset: Option<landlock::RulesetCreated>,
    refused: Option<RulesetError>,
    /// Paths with a rule already, and whether that rule lets them be
    /// written.
    given: Vec<(PathBuf, bool)>,
    /// `/proc/self/task`, opened with the ruleset: listing the worker's
    /// threads again through it when the rules go into force spares the
    /// task a path lookup in `/proc` (see [`restrict_other_threads`]).
    /// `None` if it could not be opened: the listing then opens it.
    threads: Option<rustix::fs::Dir>,
    /// Set by [`FileRules::note_quiet_threads`] when at most one thread
    /// had to be reached: that thread (`None`: none), and
    /// [`THREADS_STARTED`] then.
    quiet: Option<(Option<libc::pid_t>, usize)>,
}

/// Threads the worker's runtime has started (counted in its
/// `thread_name_fn`, on the spawning thread: Tokio's blocking pool), the
/// only threads a worker starts once its epoch ticker runs. [`FileRules::enforce`] compares it with the count
/// [`FileRules::note_quiet_threads`] saw.
pub(crate) static THREADS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// Of [`THREADS_STARTED`], those that have begun to run (counted in the
/// runtime's `on_thread_start`, on the new thread): a thread counted in
/// one and not yet in the other may not be listed in `/proc` yet.
pub(crate) static THREADS_RUNNING: AtomicUsize = AtomicUsize::new(0);

impl FileRules {
    /// Makes an empty ruleset: nothing is allowed until a rule says so.
    /// `Err` with [`LayerState::Unavailable`] where the kernel has no
    /// Landlock or refuses the ruleset.
    pub(crate) fn new() -> Result<Self, LayerState> {
        let (abi, ruleset) = empty_ruleset()?;
        Ok(FileRules {
            abi,
            ruleset: Some(ruleset),
            refused: None,
            given: Vec::new(),
            threads: File::open("/proc/self/task")
                .ok()
                .and_then(|dir| rustix::fs::Dir::new(dir).ok()),
            quiet: None,
        })
    }

    /// Adds a rule for each of `grants`' paths.
    pub(crate) fn allow_grants(&mut self, grants: &Grants) {
        for path in &grants.read {
            self.allow(path, false);
        }
        for path in &grants.write {
            self.allow(path, true);
        }
    }

    /// Lets the worker read `path` (and list it, and everything beneath it,
    /// if it is a directory), and with `write` also change it (see
    /// [`write_access`]). A path that cannot be opened gets no rule.
    pub(crate) fn allow(&mut self, path: &Path, write: bool) {
        if self
            .given
            .iter()
            .any(|(given, writable)| given == path && (*writable || !write))
        {
            return;
        }
        let Some(ruleset) = self.ruleset.take() else {
            return;
        };
        let (file, is_dir) = match open_for_rule(path) {
            Ok(opened) => opened,
            Err(err) => {
                let path = path.display();
                tracing::debug!("{path} is left out of the worker's Landlock rules: {err}");
                self.ruleset = Some(ruleset);
                return;
            }
        };
        let access = if write {
            write_access(self.abi)
        } else {
            read_access()
        };
        // Directory rights on a file are an error: keep the file ones.
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(self.abi)
        };
        match ruleset.add_rule(PathBeneath::new(file, access)) {
            Ok(ruleset) => {
                self.ruleset = Some(ruleset);
                self.given.push((path.to_owned(), write));
            }
            Err(err) => self.refused = Some(err),
        }
    }

    /// Lists the worker's threads now, while it waits for its task: if at
    /// most one thread is one Landlock would have to reach (the others
    /// denied themselves every file, [`deny_files_on_this_thread`]),
    /// [`FileRules::enforce`] on that thread need not list them again as
    /// long as the worker's runtime has started no thread since
    /// ([`THREADS_STARTED`]). A worker's task is then spared the listing
    /// (0.03-0.06 ms of its start, measured with workload 1): all of its
    /// threads but its main thread and the ticker's come from that runtime.
    /// Any thread may note, the ticker's for a cold worker (after it denied
    /// itself every file) or the main thread for a pre-started one.
    pub(crate) fn note_quiet_threads(&mut self) {
        // Before the listing: a thread started while it runs is then
        // counted as new, whether the listing saw it or not. And a thread
        // counted but not yet running (the runtime counts it on the
        // thread that starts it, before it exists) would be missed by the
        // listing: the note then does not hold.
        let started = THREADS_STARTED.load(Ordering::SeqCst);
        if THREADS_RUNNING.load(Ordering::SeqCst) != started {
            self.quiet = None;
            return;
        }
        let own = current_tid();
        self.quiet = match other_threads(own, &mut self.threads) {
            Ok(mut reach) => {
                if !denied_already(own) {
                    reach.push(own);
                }
                (reach.len() <= 1).then(|| (reach.first().copied(), started))
            }
            Err(_) => None,
        };
    }

    /// Puts the ruleset in force on every thread of the process, for good.
    pub(crate) fn enforce(self) -> LayerState {
        let abi = self.abi;
        let Some(created) = self.ruleset else {
            let why = self
                .refused
                .map_or_else(|| "no ruleset".to_owned(), |err| err.to_string());
            return LayerState::Unavailable(format!("Landlock refused the ruleset: {why}"));
        };
        let quiet = self.quiet.is_some_and(|(reach, started)| {
            reach.is_none_or(|tid| tid == current_tid())
                && started == THREADS_STARTED.load(Ordering::SeqCst)
        });
        match enforce_ruleset(created, abi, self.threads, quiet) {
            Ok(state) => state,
            Err(err) => LayerState::Unavailable(format!("Landlock refused the ruleset: {err}")),
        }
    }
}

/// A ruleset with no rule yet, handling every right the running kernel's
/// Landlock ABI controls (see [`FileRules`]), with `no_new_privs`, and that
/// ABI. `Err` with [`LayerState::Unavailable`] where the kernel has no
/// Landlock or refuses the ruleset.
fn empty_ruleset() -> Result<(ABI, landlock::RulesetCreated), LayerState> {
    let abi = match landlock_abi() {
        Ok(version) => ABI::from(version),
        Err(err) => return Err(LayerState::Unavailable(landlock_missing(&err))),
    };
    if abi == ABI::Unsupported {
        return Err(LayerState::Unavailable(
            "this kernel reports no Landlock ABI".to_owned(),
        ));
    }
    let create = || -> Result<landlock::RulesetCreated, RulesetError> {
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
        if abi >= ABI::V4 {
            // Handled with no port granted: every TCP bind and connect is
            // refused.
            ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
        }
        if abi >= ABI::V6 {
            ruleset = ruleset.scope(Scope::from_all(abi))?;
        }
        Ok(ruleset.create()?.no_new_privs(true))
    };
    create()
        .map(|ruleset| (abi, ruleset))
        .map_err(|err| LayerState::Unavailable(format!("Landlock refused the ruleset: {err}")))
}

/// Enforces `created`, made at `abi`, on every thread; `threads` is
/// `/proc/self/task`, if open already; `quiet`: no other thread needs
/// reaching (see [`FileRules::note_quiet_threads`]).
fn enforce_ruleset(
    mut created: landlock::RulesetCreated,
    abi: ABI,
    mut threads: Option<rustix::fs::Dir>,
    quiet: bool,
) -> Result<LayerState, RulesetError> {
    let mut gaps = Vec::new();
    // The seccomp filter's TSYNC install set `no_new_privs` on every
    // thread (and threads inherit it): one `prctl` fewer on a task's way.
    if SECCOMP_INSTALLED.load(Ordering::SeqCst) {
        created = created.no_new_privs(false);
    }
    if abi >= ABI::V8 {
        created = created.all_threads(true)?;
    } else if !quiet {
        // The other threads join first, while this one can still list them
        // in /proc (restricted, it could not).
        match created.try_clone().map(Option::<OwnedFd>::from) {
            Ok(Some(ruleset_fd)) => {
                if let Err(why) = restrict_other_threads(&ruleset_fd, &mut threads) {
                    gaps.push(why);
                }
            }
            // The kernel has no ruleset to share (a dummy one): nothing to do.
            Ok(None) => {}
            Err(err) => gaps.push(format!(
                "cannot share the ruleset with the worker's other threads: {err}"
            )),
        }
    }
    let status = created.restrict_self()?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => {}
        RulesetStatus::PartiallyEnforced => {
            gaps.push(format!(
                "the kernel (Landlock ABI {abi}) enforces only part of the ruleset"
            ));
        }
        RulesetStatus::NotEnforced => {
            return Ok(LayerState::Unavailable(format!(
                "the kernel (Landlock ABI {abi}) did not enforce the ruleset"
            )));
        }
    }
    if abi >= ABI::V8 && !status.all_threads {
        gaps.push("the ruleset binds only the thread that applied it".to_owned());
    }
    if abi < ABI::V3 {
        gaps.push(format!(
            "Landlock ABI {abi} cannot refuse truncate(2) of files outside the grants"
        ));
    }
    Ok(if gaps.is_empty() {
        LayerState::Enforced
    } else {
        LayerState::Partial(gaps.join("; "))
    })
}

/// Threads that locked themselves out of the file system with
/// [`deny_files_on_this_thread`]: [`restrict_other_threads`] need not reach
/// them (0 marks a free cell).
static DENIED_THREADS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];

/// Restricts the calling thread, for good, to no file system access at all,
/// no TCP and (with Landlock ABI 6+) no signals or abstract sockets beyond
/// its domain, and records it so [`FileRules::enforce`] skips it: a task's
/// ruleset could only allow it more. For threads that never open anything
/// (the epoch ticker), started before any task: it saves signalling them
/// when the task's ruleset goes up (about 0.1 ms of each process start).
/// Does nothing where Landlock is missing; such a thread is then signalled
/// as any other. Keep the returned guard until the thread ends: it takes
/// the thread off the record, so a later thread given the same id is not
/// taken for a restricted one.
pub(crate) fn deny_files_on_this_thread() -> DeniedThread {
    let Ok((_, ruleset)) = empty_ruleset() else {
        return DeniedThread(None);
    };
    if let Ok(RulesetStatus::FullyEnforced) = ruleset.restrict_self().map(|status| status.ruleset) {
        let tid = current_tid();
        for (i, cell) in DENIED_THREADS.iter().enumerate() {
            if cell
                .compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return DeniedThread(Some(i));
            }
        }
    }
    DeniedThread(None)
}

/// A thread's place in the record of [`deny_files_on_this_thread`].
pub(crate) struct DeniedThread(Option<usize>);

impl Drop for DeniedThread {
    fn drop(&mut self) {
        if let Some(cell) = self.0.and_then(|i| DENIED_THREADS.get(i)) {
            cell.store(0, Ordering::SeqCst);
        }
    }
}

/// Whether `tid` restricted itself with [`deny_files_on_this_thread`].
fn denied_already(tid: libc::pid_t) -> bool {
    DENIED_THREADS
        .iter()
        .any(|cell| cell.load(Ordering::SeqCst) == tid)
}

/// Most threads [`restrict_other_threads`] keeps track of.
const MAX_THREADS: usize = 256;
/// The ruleset the signalled threads join.
static JOIN_RULESET: AtomicI32 = AtomicI32::new(-1);
/// How many signalled threads have answered.
static JOIN_ANSWERS: AtomicUsize = AtomicUsize::new(0);
/// Who answered: a thread id, negated if its `landlock_restrict_self` failed.
static JOIN_ANSWERED: [AtomicI32; MAX_THREADS] = [const { AtomicI32::new(0) }; MAX_THREADS];
/// Set while [`restrict_other_threads`] runs (the statics above are its).
static JOINING: AtomicBool = AtomicBool::new(false);
/// How long the other threads get to answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The signal that asks a thread to join the ruleset: the last real-time
/// one, which neither glibc (it keeps the first two or three), wasmtime nor
/// tokio use.
fn join_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// Runs on each signalled thread: `no_new_privs` (per thread, and Landlock
/// requires it), then `landlock_restrict_self` on the shared ruleset, then
/// records the answer. Only system calls and atomics: async-signal-safe.
extern "C" fn join_ruleset(_signal: libc::c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot, valid
    // for the life of the thread; saving and restoring it keeps the
    // interrupted code's errno intact.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    let ruleset = libc::c_long::from(JOIN_RULESET.load(Ordering::SeqCst));
    let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
    let no_flags: libc::c_long = 0;
    // SAFETY: `prctl(PR_SET_NO_NEW_PRIVS)`, `landlock_restrict_self` and
    // `gettid` take integer arguments only and touch no memory of ours.
    let (joined, tid) = unsafe {
        let joined = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) == 0
            && libc::syscall(libc::SYS_landlock_restrict_self, ruleset, no_flags) == 0;
        (joined, libc::syscall(libc::SYS_gettid))
    };
    let tid = i32::try_from(tid).unwrap_or(0);
    let slot = JOIN_ANSWERS.fetch_add(1, Ordering::SeqCst);
    if let Some(cell) = JOIN_ANSWERED.get(slot) {
        cell.store(if joined { tid } else { -tid }, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// Clears [`JOINING`] when dropped.
struct JoinDone;

impl Drop for JoinDone {
    fn drop(&mut self) {
        JOINING.store(false, Ordering::SeqCst);
    }
}

/// This thread's id.
fn current_tid() -> libc::pid_t {
    // SAFETY: `gettid` takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// The ids of this process's threads other than `own` and those that
/// denied themselves every file already.
fn other_threads(
    own: libc::pid_t,
    task_dir: &mut Option<rustix::fs::Dir>,
) -> io::Result<Vec<libc::pid_t>> {
    let wanted = |name: &[u8]| {
        std::str::from_utf8(name)
            .ok()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
            .filter(|&tid| tid != own && !denied_already(tid))
    };
    let mut tids = Vec::new();
    if let Some(dir) = task_dir.as_mut() {
        // The kernel lists the live threads anew on every read from the
        // start.
        dir.rewind();
        for entry in dir.by_ref() {
            if let Some(tid) = wanted(entry?.file_name().to_bytes()) {
                tids.push(tid);
            }
        }
        return Ok(tids);
    }
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = wanted(entry?.file_name().as_encoded_bytes()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Installs `handler` (a plain or SA_SIGINFO handler, or `SIG_IGN`/`SIG_DFL`)
/// for `signal` with `flags` and every signal blocked while it runs;
/// returns the action it replaced.
fn set_signal_action(
    signal: libc::c_int,
    handler: libc::sighandler_t,
    flags: libc::c_int,
) -> io::Result<libc::sigaction> {
    // SAFETY: an all-zero `sigaction` is a valid value of the plain C
    // struct; `handler` is `SIG_IGN`, `SIG_DFL` or an `extern "C"` function
    // of the signature `flags` announces; `sigfillset` initialises the mask
    // it is given; `sigaction` reads the new action and writes the old one
    // into structs we own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigfillset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, &action, &mut previous) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(previous)
    }
}

/// Makes every other thread of the process restrict itself with the
/// Landlock ruleset `ruleset` (for kernels whose Landlock cannot restrict a
/// whole process). Threads started meanwhile by threads that already
/// joined inherit the restriction; new ones are looked for until none
/// appear. `Err` says which threads are not restricted.
///
/// Assumes this thread is the only one that starts threads while it runs
/// (true of a worker: its runtime is on this thread).
fn restrict_other_threads(
    ruleset: &OwnedFd,
    threads: &mut Option<rustix::fs::Dir>,
) -> Result<(), String> {
    let own = current_tid();
    let mut list = |own| {
        other_threads(own, threads).map_err(|e| format!("cannot list the worker's threads: {e}"))
    };
    let mut pending = list(own)?;
    if pending.is_empty() {
        return Ok(());
    }
    if JOINING.swap(true, Ordering::SeqCst) {
        return Err("the worker's threads are already being restricted".to_owned());
    }
    let _done = JoinDone;
    JOIN_RULESET.store(ruleset.as_raw_fd(), Ordering::SeqCst);
    JOIN_ANSWERS.store(0, Ordering::SeqCst);
    for cell in &JOIN_ANSWERED {
        cell.store(0, Ordering::SeqCst);
    }
    let signal = join_signal();
    let handler = join_ruleset as *const () as libc::sighandler_t;
    let previous = set_signal_action(signal, handler, libc::SA_RESTART | libc::SA_ONSTACK)
        .map_err(|e| format!("cannot install the thread-restricting handler: {e}"))?;
    let pid = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut signalled: Vec<libc::pid_t> = Vec::new();
    let mut failure = None;
    for _ in 0..4 {
        for tid in pending {
            // SAFETY: `tgkill` takes integer arguments only; it signals a
            // thread of this very process.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::c_long::from(pid),
                    libc::c_long::from(tid),
                    libc::c_long::from(signal),
                )
            };
            if sent == 0 {
                signalled.push(tid);
            } else {
                let err = io::Error::last_os_error();
                // ESRCH: the thread ended meanwhile; that is fine.
                if err.raw_os_error() != Some(libc::ESRCH) {
                    failure = Some(format!("cannot signal thread {tid}: {err}"));
                }
            }
        }
        // The answers come within microseconds (a handler on each thread):
        // yield to them rather than sleep, whose timer slack alone would
        // cost each task start 50-100 us.
        let mut spins = 0u32;
        while JOIN_ANSWERS.load(Ordering::SeqCst) < signalled.len() && Instant::now() < deadline {
            if spins < 10_000 {
                spins += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        pending = match list(own) {
            Ok(tids) => tids
                .into_iter()
                .filter(|t| !signalled.contains(t))
                .collect(),
            Err(err) => {
                failure = Some(err);
                Vec::new()
            }
        };
        if pending.is_empty() {
            break;
        }
    }
    // A thread that has not run the handler yet must not die of the
    // signal's default action later: leave it ignored unless someone else
    // had a handler for it.
    let restore = if previous.sa_sigaction == libc::SIG_DFL {
        set_signal_action(signal, libc::SIG_IGN, 0).map(drop)
    } else {
        // SAFETY: puts back the action `sigaction` returned, unchanged.
        match unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    };
    if let Err(err) = restore {
        tracing::debug!("cannot reset signal {signal} after restricting threads: {err}");
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    let answers = JOIN_ANSWERS.load(Ordering::SeqCst).min(MAX_THREADS);
    let answered: Vec<i32> = JOIN_ANSWERED[..answers]
        .iter()
        .map(|cell| cell.load(Ordering::SeqCst))
        .collect();
    let failed: Vec<i32> = answered.iter().filter(|t| **t < 0).map(|t| -t).collect();
    if !failed.is_empty() {
        return Err(format!(
            "Landlock refused to restrict the worker's threads {failed:?}"
        ));
    }
    let missing: Vec<libc::pid_t> = list(own)?
        .into_iter()
        .filter(|t| !answered.contains(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the worker's threads {missing:?} are not restricted (they did not answer; this \
             kernel's Landlock cannot restrict a whole process before ABI 8)"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------
// seccomp
// ---------------------------------------------------------------------

/// Set once the filter is installed: a second install would be refused by
/// the first filter (it forbids `seccomp` and most of `prctl`).
static SECCOMP_INSTALLED: AtomicBool = AtomicBool::new(false);

/// `si_code` of a SIGSYS that a seccomp filter raised (`SYS_SECCOMP` in
/// `<asm-generic/siginfo.h>`).
const SI_CODE_SECCOMP: libc::c_int = 1;

/// `(number, "SYS_name")` pairs of the given `libc::SYS_*` constants.
#[cfg(target_arch = "x86_64")]
macro_rules! syscalls {
    ($($sys:ident),* $(,)?) => {
        &[$((libc::$sys, stringify!($sys))),*]
    };
}

/// System calls a worker may make with any arguments once it runs guests
/// (x86_64). Each was seen in `strace -f` of workers running the test
/// guests after their `run` frame (see ARCHITECTURE.md / the issue), or is
/// the same call by another name that libc or the kernel may pick. The
/// tests compile it, with the argument rules, into [`FILTER_TEMPLATE`].
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
#[cfg_attr(not(test), expect(dead_code, reason = "compiled into FILTER_TEMPLATE by the tests, which check the two agree"))]
const ALWAYS_ALLOWED: &[(libc::c_long, &str)] = syscalls![
    // The IPC pipes and tokio's eventfd (read, write, writev); files the
    // guest has open through WASI (pread64/pwrite64 for fd_read/fd_write,
    // readv/preadv/pwritev where a vectored path is taken); lseek (std's
    // `read_to_end` size hint); close.
    SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_preadv,
    SYS_pwritev, SYS_lseek, SYS_close,
    // WASI path operations, all relative to a preopened directory
    // (cap-std resolves with openat2 RESOLVE_BENEATH, falling back to
    // openat): Landlock decides which paths they reach. Also the artifact
    // of a program loaded after the sandbox (a reused worker).
    SYS_openat, SYS_openat2, SYS_newfstatat, SYS_fstat, SYS_statx, SYS_readlinkat,
    SYS_getdents64, SYS_mkdirat, SYS_unlinkat, SYS_renameat, SYS_renameat2, SYS_linkat,
    SYS_symlinkat, SYS_utimensat,
    // fd_filestat_set_size, fd_sync, fd_datasync, fd_advise, fd_allocate.
    SYS_ftruncate, SYS_fsync, SYS_fdatasync, SYS_fadvise64, SYS_fallocate,
    // wasmtime: linear memories, tables, fiber stacks, code and signal
    // stacks (mmap, mprotect, munmap, madvise to reset); the allocator
    // (brk, mmap, mremap for large reallocations).
    SYS_mmap, SYS_munmap, SYS_mprotect, SYS_mremap, SYS_madvise, SYS_brk,
    // Locks and condition variables (futex); what glibc and std do in a
    // thread they start (set_robust_list, rseq, sched_getaffinity from
    // pthread_getattr_np) or that waits (sched_yield); ids.
    SYS_futex, SYS_set_robust_list, SYS_rseq, SYS_sched_yield, SYS_sched_getaffinity,
    SYS_gettid, SYS_getpid,
    // Traps are signals: wasmtime's handlers return through rt_sigreturn on
    // their own signal stacks; glibc masks signals around thread start
    // and exit.
    SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sigaltstack, SYS_restart_syscall,
    // Clocks: the epoch ticker's sleep, WASI clocks and poll_oneoff, tokio's
    // timers (clock_gettime and gettimeofday are vDSO calls unless the
    // clock source has none).
    SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep,
    SYS_gettimeofday,
    // WASI random_get and wasmtime's own seeds; a reused worker's CPU
    // budget (getrusage).
    SYS_getrandom, SYS_getrusage,
    // tokio's event loop.
    SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl,
    // Thread and worker exit.
    SYS_exit, SYS_exit_group,
    // The older path calls, which std uses for some of its own (mkdir,
    // remove_file, rename): the worker's compile cache writes and cleans up
    // through them. They reach no path their *at forms do not, and
    // Landlock limits both alike.
    SYS_mkdir, SYS_rmdir, SYS_unlink, SYS_rename, SYS_link, SYS_symlink, SYS_readlink,
    SYS_access,
    // Landlock, which the worker enters after this filter (the filter goes
    // up while a pre-started worker waits; Landlock needs the task's
    // grants): its calls can only take rights away.
    SYS_landlock_create_ruleset, SYS_landlock_add_rule, SYS_landlock_restrict_self,
    // wasmtime's copy-on-write memory image of a module compiled in memory
    // (no cache file to map: a cache that cannot be written, or none) is a
    // sealed memfd, made when the module is first instantiated.
    SYS_memfd_create,
];

/// System calls allowed only with some arguments (x86_64); see
/// [`FILTER_TEMPLATE`] for which.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
#[cfg_attr(not(test), expect(dead_code, reason = "the names of the calls FILTER_TEMPLATE allows with arguments, checked by a test"))]
const ALLOWED_WITH_ARGUMENTS: &[(libc::c_long, &str)] = syscalls![
    SYS_clone, SYS_clone3, SYS_fcntl, SYS_ioctl, SYS_prctl, SYS_tgkill, SYS_rt_sigaction,
    SYS_prlimit64,
];

/// Every x86_64 system call libc names, for [`syscall_name`].
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ALL_NAMED: &[(libc::c_long, &str)] = syscalls![
    SYS_read, SYS_write, SYS_open, SYS_close, SYS_stat, SYS_fstat, SYS_lstat, SYS_poll, SYS_lseek,
    SYS_mmap, SYS_mprotect, SYS_munmap, SYS_brk, SYS_rt_sigaction, SYS_rt_sigprocmask,
    SYS_rt_sigreturn, SYS_ioctl, SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev, SYS_access,
    SYS_pipe, SYS_select, SYS_sched_yield, SYS_mremap, SYS_msync, SYS_mincore, SYS_madvise,
    SYS_shmget, SYS_shmat, SYS_shmctl, SYS_dup, SYS_dup2, SYS_pause, SYS_nanosleep,
    SYS_getitimer, SYS_alarm, SYS_setitimer, SYS_getpid, SYS_sendfile, SYS_socket, SYS_connect,
    SYS_accept, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_shutdown, SYS_bind,
    SYS_listen, SYS_getsockname, SYS_getpeername, SYS_socketpair, SYS_setsockopt,
    SYS_getsockopt, SYS_clone, SYS_fork, SYS_vfork, SYS_execve, SYS_exit, SYS_wait4, SYS_kill,
    SYS_uname, SYS_semget, SYS_semop, SYS_semctl, SYS_shmdt, SYS_msgget, SYS_msgsnd,
    SYS_msgrcv, SYS_msgctl, SYS_fcntl, SYS_flock, SYS_fsync, SYS_fdatasync, SYS_truncate,
    SYS_ftruncate, SYS_getdents, SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_rename, SYS_mkdir,
    SYS_rmdir, SYS_creat, SYS_link, SYS_unlink, SYS_symlink, SYS_readlink, SYS_chmod,
    SYS_fchmod, SYS_chown, SYS_fchown, SYS_lchown, SYS_umask, SYS_gettimeofday, SYS_getrlimit,
    SYS_getrusage, SYS_sysinfo, SYS_times, SYS_ptrace, SYS_getuid, SYS_syslog, SYS_getgid,
    SYS_setuid, SYS_setgid, SYS_geteuid, SYS_getegid, SYS_setpgid, SYS_getppid, SYS_getpgrp,
    SYS_setsid, SYS_setreuid, SYS_setregid, SYS_getgroups, SYS_setgroups, SYS_setresuid,
    SYS_getresuid, SYS_setresgid, SYS_getresgid, SYS_getpgid, SYS_setfsuid, SYS_setfsgid,
    SYS_getsid, SYS_capget, SYS_capset, SYS_rt_sigpending, SYS_rt_sigtimedwait,
    SYS_rt_sigqueueinfo, SYS_rt_sigsuspend, SYS_sigaltstack, SYS_utime, SYS_mknod, SYS_uselib,
    SYS_personality, SYS_ustat, SYS_statfs, SYS_fstatfs, SYS_sysfs, SYS_getpriority,
    SYS_setpriority, SYS_sched_setparam, SYS_sched_getparam, SYS_sched_setscheduler,
    SYS_sched_getscheduler, SYS_sched_get_priority_max, SYS_sched_get_priority_min,
    SYS_sched_rr_get_interval, SYS_mlock, SYS_munlock, SYS_mlockall, SYS_munlockall,
    SYS_vhangup, SYS_modify_ldt, SYS_pivot_root, SYS__sysctl, SYS_prctl, SYS_arch_prctl,
    SYS_adjtimex, SYS_setrlimit, SYS_chroot, SYS_sync, SYS_acct, SYS_settimeofday, SYS_mount,
    SYS_umount2, SYS_swapon, SYS_swapoff, SYS_reboot, SYS_sethostname, SYS_setdomainname,
    SYS_iopl, SYS_ioperm, SYS_init_module, SYS_delete_module, SYS_quotactl, SYS_nfsservctl,
    SYS_getpmsg, SYS_putpmsg, SYS_afs_syscall, SYS_tuxcall, SYS_security, SYS_gettid,
    SYS_readahead, SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr,
    SYS_fgetxattr, SYS_listxattr, SYS_llistxattr, SYS_flistxattr, SYS_removexattr,
    SYS_lremovexattr, SYS_fremovexattr, SYS_tkill, SYS_time, SYS_futex, SYS_sched_setaffinity,
    SYS_sched_getaffinity, SYS_set_thread_area, SYS_io_setup, SYS_io_destroy,
    SYS_io_getevents, SYS_io_submit, SYS_io_cancel, SYS_get_thread_area, SYS_lookup_dcookie,
    SYS_epoll_create, SYS_epoll_ctl_old, SYS_epoll_wait_old, SYS_remap_file_pages,
    SYS_getdents64, SYS_set_tid_address, SYS_restart_syscall, SYS_semtimedop, SYS_fadvise64,
    SYS_timer_create, SYS_timer_settime, SYS_timer_gettime, SYS_timer_getoverrun,
    SYS_timer_delete, SYS_clock_settime, SYS_clock_gettime, SYS_clock_getres,
    SYS_clock_nanosleep, SYS_exit_group, SYS_epoll_wait, SYS_epoll_ctl, SYS_tgkill, SYS_utimes,
    SYS_vserver, SYS_mbind, SYS_set_mempolicy, SYS_get_mempolicy, SYS_mq_open, SYS_mq_unlink,
    SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr, SYS_kexec_load,
    SYS_waitid, SYS_add_key, SYS_request_key, SYS_keyctl, SYS_ioprio_set, SYS_ioprio_get,
    SYS_inotify_init, SYS_inotify_add_watch, SYS_inotify_rm_watch, SYS_migrate_pages,
    SYS_openat, SYS_mkdirat, SYS_mknodat, SYS_fchownat, SYS_futimesat, SYS_newfstatat,
    SYS_unlinkat, SYS_renameat, SYS_linkat, SYS_symlinkat, SYS_readlinkat, SYS_fchmodat,
    SYS_faccessat, SYS_pselect6, SYS_ppoll, SYS_unshare, SYS_set_robust_list,
    SYS_get_robust_list, SYS_splice, SYS_tee, SYS_sync_file_range, SYS_vmsplice, SYS_move_pages,
    SYS_utimensat, SYS_epoll_pwait, SYS_signalfd, SYS_timerfd_create, SYS_eventfd,
    SYS_fallocate, SYS_timerfd_settime, SYS_timerfd_gettime, SYS_accept4, SYS_signalfd4,
    SYS_eventfd2, SYS_epoll_create1, SYS_dup3, SYS_pipe2, SYS_inotify_init1, SYS_preadv,
    SYS_pwritev, SYS_rt_tgsigqueueinfo, SYS_perf_event_open, SYS_recvmmsg, SYS_fanotify_init,
    SYS_fanotify_mark, SYS_prlimit64, SYS_name_to_handle_at, SYS_open_by_handle_at,
    SYS_clock_adjtime, SYS_syncfs, SYS_sendmmsg, SYS_setns, SYS_getcpu, SYS_process_vm_readv,
    SYS_process_vm_writev, SYS_kcmp, SYS_finit_module, SYS_sched_setattr, SYS_sched_getattr,
    SYS_renameat2, SYS_seccomp, SYS_getrandom, SYS_memfd_create, SYS_kexec_file_load, SYS_bpf,
    SYS_execveat, SYS_userfaultfd, SYS_membarrier, SYS_mlock2, SYS_copy_file_range,
    SYS_preadv2, SYS_pwritev2, SYS_pkey_mprotect, SYS_pkey_alloc, SYS_pkey_free, SYS_statx,
    SYS_rseq, SYS_pidfd_send_signal, SYS_io_uring_setup, SYS_io_uring_enter,
    SYS_io_uring_register, SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig,
    SYS_fsmount, SYS_fspick, SYS_pidfd_open, SYS_clone3, SYS_close_range, SYS_openat2,
    SYS_pidfd_getfd, SYS_faccessat2, SYS_process_madvise, SYS_epoll_pwait2, SYS_mount_setattr,
    SYS_quotactl_fd, SYS_landlock_create_ruleset, SYS_landlock_add_rule,
    SYS_landlock_restrict_self, SYS_memfd_secret, SYS_process_mrelease, SYS_futex_waitv,
    SYS_set_mempolicy_home_node, SYS_fchmodat2, SYS_mseal,
];

/// The name of x86_64 system call `nr` (`"socket"` for 41), for a worker's
/// outcome; `None` for numbers libc does not name (including x32 calls,
/// whose numbers carry bit 30) and on other architectures.
#[cfg(target_arch = "x86_64")]
pub(crate) fn syscall_name(nr: i64) -> Option<&'static str> {
    ALL_NAMED
        .iter()
        .find(|&&(number, _)| number == nr)
        .map(|&(_, name)| name.strip_prefix("SYS_").unwrap_or(name))
}

/// The name of system call `nr`: only x86_64's are known.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn syscall_name(_nr: i64) -> Option<&'static str> {
    None
}

/// The worker's seccomp filter (x86_64): a classic BPF program, one
/// `struct sock_filter` per 8 bytes (`code` u16, `jt` u8, `jf` u8, `k` u32,
/// little-endian), compiled by libseccomp from the rules in this module's
/// tests (`compile_filter_rules`), as a binary tree over the system call numbers
/// (libseccomp's optimize level 2). The tests check it against those rules
/// and regenerate it (`make seccomp-filter`).
///
/// It is built ahead and kept here, not built when a worker starts, for
/// two reasons. The kernel runs a new filter once for each of its ~460
/// system call numbers to fill its action cache, so a filter's length is
/// paid at every worker start: this tree (about 150 instructions, at most
/// a dozen run per call) loads in about 0.06 ms, where `seccompiler`'s
/// linear program of the same rules (457 instructions) took 0.3 ms, on a
/// cold worker's way to its task. And building it needs the C library
/// libseccomp, which no build of Isola should need (only its tests do).
///
/// What it allows: [`ALWAYS_ALLOWED`], whatever the arguments, plus, with
/// these arguments only: `clone` of a *thread* (`CLONE_VM | CLONE_SIGHAND |
/// CLONE_THREAD` set and no `CLONE_NEW*` namespace flag: a new process is
/// refused, so is glibc's `fork`/`posix_spawn` fallback); `fcntl` with
/// `F_GETFD`, `F_SETFD`, `F_GETFL`, `F_SETFL`, `F_DUPFD_CLOEXEC` or the
/// seals wasmtime puts on a memory image's memfd (not
/// `F_SETOWN`/`F_SETSIG`, which aim SIGIO at other processes, nor locks);
/// `ioctl` with `FIONBIO`, `FIOCLEX`, `FIONCLEX` (std's nonblocking and
/// close-on-exec switches) or `TCGETS` (isatty); `prctl` with
/// `PR_SET_NAME`/`PR_GET_NAME` (thread names) or `PR_SET_NO_NEW_PRIVS`;
/// `tgkill` of this process's own threads (`raise`, `abort`, the
/// fatal-fault handler of `ipc::sys`, Landlock's thread join);
/// `rt_sigaction` of any signal but SIGSYS (the fault handler resets
/// SIGSEGV/SIGBUS, `abort` resets SIGABRT; the SIGSYS reporter stays);
/// `prlimit64` of this process (`pid` 0: a reused worker's next limits).
/// Arguments compare as the full 64-bit register, so a value with high
/// bits set is refused even where the kernel reads only the low half.
/// `clone3` answers `ENOSYS`: its flags live in memory a filter cannot
/// read, and on `ENOSYS` glibc starts threads with `clone`, which the
/// filter can check. Anything else: `SECCOMP_RET_TRAP` (SIGSYS; see
/// [`install_sigsys_reporter`]). A call of another architecture's ABI
/// (`int 0x80`'s i386, or x32) kills the process at once.
#[cfg(target_arch = "x86_64")]
const FILTER_TEMPLATE: &[u8] = include_bytes!("worker_filter.x86_64.bpf");

/// A stand-in for the worker's process id in [`FILTER_TEMPLATE`]'s
/// `tgkill` rule, which [`filter_for`] replaces with the worker's own:
/// above any id Linux gives a process (`PID_MAX_LIMIT` is 2^22), and
/// checked to be the one comparison in the program with this value.
#[cfg(target_arch = "x86_64")]
const PID_PLACEHOLDER: u32 = 0x7a5e_c0de;

/// `BPF_JMP | BPF_JEQ | BPF_K` (`<linux/bpf_common.h>`): the comparison
/// that holds [`PID_PLACEHOLDER`].
#[cfg(target_arch = "x86_64")]
const BPF_JEQ_K: u16 = 0x15;

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
#[cfg(target_arch = "x86_64")]
const BPF_MAX_INSTRUCTIONS: usize = 4096;

/// [`FILTER_TEMPLATE`] as instructions, for process `pid`; `Err` says
/// what is wrong with the template (a build that damaged it).
#[cfg(target_arch = "x86_64")]
fn filter_for(pid: u32) -> Result<Vec<libc::sock_filter>, String> {
    let length = FILTER_TEMPLATE.len();
    if length == 0 || !length.is_multiple_of(8) || length / 8 > BPF_MAX_INSTRUCTIONS {
        return Err(format!(
            "the built-in filter is {length} bytes, not a BPF program"
        ));
    }
    let mut program = instructions(FILTER_TEMPLATE);
    let mut placeholders = 0;
    for instruction in &mut program {
        if instruction.code == BPF_JEQ_K && instruction.k == PID_PLACEHOLDER {
            instruction.k = pid;
            placeholders += 1;
        }
    }
    if placeholders != 1 {
        return Err(format!(
            "the built-in filter names the worker's process id {placeholders} times, not once"
        ));
    }
    Ok(program)
}

/// `bytes` (`struct sock_filter`s, little-endian) as instructions; a
/// trailing partial one is left out.
#[cfg(target_arch = "x86_64")]
fn instructions(bytes: &[u8]) -> Vec<libc::sock_filter> {
    bytes
        .chunks_exact(8)
        .map(|bytes| {
            let [c0, c1, jt, jf, k0, k1, k2, k3] = <[u8; 8]>::try_from(bytes).unwrap_or([0; 8]);
            libc::sock_filter {
                code: u16::from_le_bytes([c0, c1]),
                jt,
                jf,
                k: u32::from_le_bytes([k0, k1, k2, k3]),
            }
        })
        .collect()
}

/// Loads `program` as a seccomp filter on every thread of the process
/// (`SECCOMP_FILTER_FLAG_TSYNC`), after setting `no_new_privs`, which an
/// unprivileged filter needs.
#[cfg(target_arch = "x86_64")]
fn load_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::other(format!("{} instructions", program.len())))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // Variadic: each argument passed as the kernel reads it.
    let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: `prctl` with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, on, unused, unused, unused) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `len` instructions of `program`, which
    // outlives the call; the kernel copies them and keeps no pointer, and
    // writes nothing of ours.
    let done = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &raw const fprog,
        )
    };
    match done {
        0 => Ok(()),
        // TSYNC: the id of a thread that cannot take the filter.
        tid if tid > 0 => Err(io::Error::other(format!(
            "thread {tid} of the worker cannot take the filter"
        ))),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Installs the worker's system call allowlist ([`FILTER_TEMPLATE`]) on
/// every thread of the process, with `no_new_privs`, for good.
///
/// First installs the SIGSYS reporter ([`install_sigsys_reporter`]): a
/// forbidden call is not made; the worker writes
/// `isola worker: forbidden system call <number>` to stderr and exits with
/// [`FORBIDDEN_SYSCALL_EXIT`].
///
/// Call it once the worker's engine is ready, before [`FileRules::enforce`]
/// (the filter allows Landlock's calls, which only take rights away). A
/// second call does nothing and answers [`LayerState::Enforced`].
///
/// Stops the kernel's attack surface beyond what a worker uses: no new
/// process, no program, no socket, no namespace, no mount, no ptrace, no
/// BPF, no io_uring, no keyring, no signal to another process. Does not stop
/// what allowed calls do: see the module docs.
#[cfg(target_arch = "x86_64")]
pub(crate) fn install_seccomp() -> LayerState {
    if SECCOMP_INSTALLED.load(Ordering::SeqCst) {
        return LayerState::Enforced;
    }
    if let Err(err) = install_sigsys_reporter() {
        return LayerState::Unavailable(format!("cannot install the SIGSYS reporter: {err}"));
    }
    let program = match filter_for(std::process::id()) {
        Ok(program) => program,
        Err(why) => return LayerState::Unavailable(format!("cannot build the filter: {why}")),
    };
    if let Err(err) = load_filter(&program) {
        return LayerState::Unavailable(format!("the kernel refused the seccomp filter: {err}"));
    }
    SECCOMP_INSTALLED.store(true, Ordering::SeqCst);
    LayerState::Enforced
}

/// Installs the worker's system call allowlist: only x86_64 has one.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn install_seccomp() -> LayerState {
    LayerState::Unavailable("Isola's system call allowlist is written for x86_64 only".to_owned())
}

/// Installs the SIGSYS handler that turns a forbidden system call into a
/// report: it writes `isola worker: forbidden system call <number>\n` to
/// fd 2 and ends the process with [`FORBIDDEN_SYSCALL_EXIT`]. It allocates
/// nothing and takes no lock (only `write` and `_exit`), and runs on the
/// thread's signal stack if it has one. A SIGSYS that a filter did not
/// raise (sent with `kill`) ends the worker with status 128 + SIGSYS.
///
/// [`install_seccomp`] calls it; it is public for tests and for callers that
/// want the reporter in place earlier.
pub(crate) fn install_sigsys_reporter() -> io::Result<()> {
    let handler = report_forbidden_syscall as *const () as libc::sighandler_t;
    set_signal_action(libc::SIGSYS, handler, libc::SA_SIGINFO | libc::SA_ONSTACK).map(drop)
}

/// The SIGSYS handler; see [`install_sigsys_reporter`].
extern "C" fn report_forbidden_syscall(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo;
    // a seccomp SIGSYS fills its `_sigsys` member, which `si_syscall`
    // reads (offset 24 on x86_64; checked by a test).
    let (code, number) = unsafe {
        match info.as_ref() {
            Some(info) => (info.si_code, i64::from(info.si_syscall())),
            None => (SI_CODE_SECCOMP, -1),
        }
    };
    if code != SI_CODE_SECCOMP {
        // SAFETY: `_exit` ends the process at once; async-signal-safe.
        unsafe { libc::_exit(128 + libc::SIGSYS) }
    }
    let mut message = [0_u8; MESSAGE_CAPACITY];
    let len = forbidden_message(number, &mut message);
    // SAFETY: `write` reads `len` initialised bytes of our stack buffer;
    // `_exit` ends the process at once. Both are async-signal-safe and the
    // filter allows them.
    unsafe {
        libc::write(2, message.as_ptr().cast(), len);
        libc::_exit(FORBIDDEN_SYSCALL_EXIT);
    }
}

/// Room for [`FORBIDDEN_SYSCALL_PREFIX`], a sign, 20 digits and a newline.
const MESSAGE_CAPACITY: usize = 64;

/// Writes `isola worker: forbidden system call <nr>\n` into `buf` without
/// allocating (for the signal handler); returns its length.
fn forbidden_message(nr: i64, buf: &mut [u8; MESSAGE_CAPACITY]) -> usize {
    let mut len = 0;
    let mut push = |byte: u8| {
        if let Some(slot) = buf.get_mut(len) {
            *slot = byte;
            len += 1;
        }
    };
    for &byte in FORBIDDEN_SYSCALL_PREFIX.as_bytes() {
        push(byte);
    }
    if nr < 0 {
        push(b'-');
    }
    let mut digits = [0_u8; 20];
    let mut count = 0;
    let mut rest = nr.unsigned_abs();
    loop {
        if let Some(slot) = digits.get_mut(count) {
            // `rest % 10` is below 10: the cast cannot truncate.
            *slot = b'0' + (rest % 10) as u8;
            count += 1;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &digit in digits[..count].iter().rev() {
        push(digit);
    }
    push(b'\n');
    len
}

/// The system call number in a worker's stderr line written by the SIGSYS
/// reporter, if `line` is one.
pub(crate) fn parse_forbidden_syscall(line: &str) -> Option<i64> {
    line.trim_end()
        .strip_prefix(FORBIDDEN_SYSCALL_PREFIX)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------

/// Closes every file descriptor of the process except those in `keep`,
/// with `close_range(2)` (Linux 5.9; before it, the descriptors listed in
/// `/proc/self/fd` one by one).
///
/// Stops a descriptor inherited from the parent (one an embedding program
/// opened without `O_CLOEXEC`: a socket, a file outside the grants) from
/// reaching the guest. Does nothing about descriptors opened later.
///
/// # Safety
///
/// Descriptors are closed whoever owns them. No live object (a `File`, an
/// `OwnedFd`, a runtime's epoll or event descriptor, a mapping's backing
/// file) may own a descriptor outside `keep`, or it would later use or
/// close a number that is free or reused (in debug builds std aborts on
/// closing a closed descriptor). Call it first thing in the worker, before
/// anything opens one, keeping 0, 1 and 2.
pub(crate) unsafe fn close_other_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0_u32;
    for &fd in &keep {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        match fd.checked_add(1) {
            Some(next) => first = next,
            None => return Ok(()),
        }
    }
    close_range(first, u32::MAX)
}

/// Closes descriptors `first..=last`.
fn close_range(first: u32, last: u32) -> io::Result<()> {
    let flags: libc::c_uint = 0;
    // SAFETY: `close_range` takes integers only; which descriptors may be
    // closed is `close_other_fds`'s contract with its caller.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if closed == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // Before Linux 5.9: one by one, from the list of open ones.
    let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    // The listing's own descriptor is among them and already closed again:
    // closing it fails with EBADF, which is ignored like every error here.
    for fd in open {
        if let Ok(fd) = libc::c_int::try_from(fd) {
            // SAFETY: as above, an integer argument only.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;

    /// Exit status of a forked child whose kernel lacks the layer it tests.
    const SKIP: i32 = 77;

    /// Whether a child of [`in_child`] ran its checks: `false` if it said
    /// [`SKIP`] (this kernel lacks the layer, `why`), else asserts that it
    /// ended with `want`, showing its `stderr` if not.
    fn ended_with(status: i32, stderr: &str, want: i32, why: &str) -> bool {
        if status == SKIP {
            eprintln!("skipped: {why}");
            return false;
        }
        assert_eq!(status, want, "stderr: {stderr}");
        true
    }

    /// Runs `body` in a forked child (a sandbox cannot be undone, and the
    /// test process must stay free) and returns the child's exit status
    /// (128 + the signal if one ended it) and what it wrote to fd 2.
    ///
    /// The child inherits one thread; `body` may allocate (glibc's malloc is
    /// fork-safe) but must not print through std (another test thread may
    /// have held its lock at the fork). It never returns into the harness.
    fn in_child(body: impl FnOnce() -> i32) -> (i32, String) {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = [0; 2];
        // SAFETY: `pipe2` writes two descriptors into the array we pass.
        let piped = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(piped, 0, "pipe2: {}", io::Error::last_os_error());
        let [read_end, write_end] = fds;
        // SAFETY: the child runs only `body` and `_exit`s: it never returns
        // into the test harness or runs its destructors.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: descriptors this child owns; fd 2 becomes the pipe.
            unsafe {
                libc::dup2(write_end, 2);
                libc::close(read_end);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) }
        }
        // SAFETY: closes this process's copy of the write end.
        unsafe { libc::close(write_end) };
        let mut status = 0;
        // SAFETY: `waitpid` writes the status into the int we pass.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());
        // Another test may have forked meanwhile with a copy of the write
        // end: read what is there instead of waiting for end of file.
        // SAFETY: `fcntl` on our own descriptor, integers only.
        unsafe { libc::fcntl(read_end, libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: `read_end` is open and owned by nothing else.
        let mut pipe = unsafe { File::from_raw_fd(read_end) };
        let mut text = Vec::new();
        let _ = pipe.read_to_end(&mut text);
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        (code, String::from_utf8_lossy(&text).into_owned())
    }

    /// The last OS error's number.
    fn errno() -> Option<i32> {
        io::Error::last_os_error().raw_os_error()
    }

    #[test]
    fn forbidden_message_formats_the_number_without_allocating() {
        let text = |nr| {
            let mut buf = [0; MESSAGE_CAPACITY];
            let len = forbidden_message(nr, &mut buf);
            String::from_utf8(buf[..len].to_vec()).expect("ASCII")
        };
        assert_eq!(text(41), "isola worker: forbidden system call 41\n");
        assert_eq!(text(0), "isola worker: forbidden system call 0\n");
        assert_eq!(text(435), "isola worker: forbidden system call 435\n");
        assert_eq!(text(-1), "isola worker: forbidden system call -1\n");
        assert_eq!(
            text(i64::MIN),
            "isola worker: forbidden system call -9223372036854775808\n"
        );
        for nr in [0, 7, 41, 1_073_741_865, i64::MAX, i64::MIN] {
            assert_eq!(parse_forbidden_syscall(&text(nr)), Some(nr));
        }
        assert_eq!(
            parse_forbidden_syscall("isola worker: something else"),
            None
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn syscall_names_cover_the_forbidden_ones_and_the_allowlist() {
        assert_eq!(syscall_name(41), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        for name in [
            "socket",
            "connect",
            "bind",
            "execve",
            "execveat",
            "ptrace",
            "fork",
            "vfork",
            "clone3",
            "kill",
            "openat2",
            "mount",
            "unshare",
            "setns",
            "io_uring_setup",
            "bpf",
            "perf_event_open",
            "process_vm_readv",
            "process_vm_writev",
            "keyctl",
            "add_key",
            "memfd_create",
            "userfaultfd",
        ] {
            assert!(
                ALL_NAMED
                    .iter()
                    .any(|(nr, _)| syscall_name(*nr) == Some(name)),
                "{name} has no number"
            );
        }
        for (nr, sys) in ALWAYS_ALLOWED.iter().chain(ALLOWED_WITH_ARGUMENTS) {
            assert_eq!(syscall_name(*nr), sys.strip_prefix("SYS_"), "{sys}");
        }
        let mut numbers: Vec<_> = ALL_NAMED.iter().map(|(nr, _)| *nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALL_NAMED.len(), "a number appears twice");
        assert_eq!(syscall_name(100_000), None);
        assert_eq!(syscall_name(-1), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn siginfo_sigsys_fields_are_where_the_kernel_puts_them() {
        // <asm-generic/siginfo.h>: si_signo, si_errno, si_code, 4 bytes of
        // padding, then the union; `_sigsys` is { void *_call_addr; int
        // _syscall; unsigned int _arch; }: _syscall at 24, _arch at 28.
        assert_eq!(std::mem::size_of::<libc::siginfo_t>(), 128);
        // SAFETY: an all-zero siginfo_t is a valid value of the plain C
        // struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let base = (&raw mut info).cast::<u8>();
        // SAFETY: both writes are inside the 128-byte struct.
        unsafe {
            base.add(24).cast::<i32>().write_unaligned(41);
            base.add(28).cast::<u32>().write_unaligned(0xC000_003E);
        }
        // SAFETY: reads fields of the struct we just filled.
        let (syscall, arch) = unsafe { (info.si_syscall(), info.si_arch()) };
        assert_eq!((syscall, arch), (41, 0xC000_003E));
    }

    /// The rules [`FILTER_TEMPLATE`] is compiled from, as libseccomp
    /// compiles them for process `pid` (see the template's docs for why
    /// each is there).
    #[cfg(target_arch = "x86_64")]
    fn compile_filter_rules(pid: u32) -> Vec<u8> {
        use libseccomp::{
            ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
        };
        use std::io::Read as _;

        let arg = |value: libc::c_long| u64::try_from(value).expect("a non-negative constant");
        let sys = |nr: libc::c_long| ScmpSyscall::from(i32::try_from(nr).expect("a system call"));
        let equal =
            |index: u32, value: u64| ScmpArgCompare::new(index, ScmpCompareOp::Equal, value);

        let mut filter = ScmpFilterContext::new(ScmpAction::Trap).expect("filter");
        filter
            .set_act_badarch(ScmpAction::KillProcess)
            .expect("bad-arch action");
        filter.set_ctl_optimize(2).expect("binary tree");
        for &(nr, _) in ALWAYS_ALLOWED {
            filter.add_rule(ScmpAction::Allow, sys(nr)).expect("rule");
        }
        let mut allow_if = |nr: libc::c_long, compare: ScmpArgCompare| {
            filter
                .add_rule_conditional(ScmpAction::Allow, sys(nr), &[compare])
                .expect("rule");
        };
        let thread_flags = arg(libc::CLONE_VM.into())
            | arg(libc::CLONE_SIGHAND.into())
            | arg(libc::CLONE_THREAD.into());
        let namespace_flags = [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ]
        .into_iter()
        .fold(0, |all, flag| all | arg(flag.into()));
        allow_if(
            libc::SYS_clone,
            ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(thread_flags | namespace_flags),
                thread_flags,
            ),
        );
        for command in [
            libc::F_GETFD,
            libc::F_SETFD,
            libc::F_GETFL,
            libc::F_SETFL,
            libc::F_DUPFD_CLOEXEC,
            libc::F_ADD_SEALS,
            libc::F_GET_SEALS,
        ] {
            allow_if(libc::SYS_fcntl, equal(1, arg(command.into())));
        }
        for request in [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::TCGETS] {
            allow_if(libc::SYS_ioctl, equal(1, request));
        }
        for option in [
            libc::PR_SET_NAME,
            libc::PR_GET_NAME,
            libc::PR_SET_NO_NEW_PRIVS,
        ] {
            allow_if(libc::SYS_prctl, equal(0, arg(option.into())));
        }
        allow_if(libc::SYS_tgkill, equal(0, u64::from(pid)));
        // Any signal but SIGSYS (31): below it, 32-63 (the masked
        // comparison; libseccomp takes one comparison per argument and
        // rule), or SIGRTMAX (64).
        allow_if(
            libc::SYS_rt_sigaction,
            ScmpArgCompare::new(0, ScmpCompareOp::Less, arg(libc::SIGSYS.into())),
        );
        allow_if(
            libc::SYS_rt_sigaction,
            ScmpArgCompare::new(0, ScmpCompareOp::MaskedEqual(!0x1f), 0x20),
        );
        allow_if(libc::SYS_rt_sigaction, equal(0, 64));
        allow_if(libc::SYS_prlimit64, equal(0, 0));
        filter
            .add_rule(ScmpAction::Errno(libc::ENOSYS), sys(libc::SYS_clone3))
            .expect("rule");

        // A program of at most BPF_MAXINSNS instructions (32 KiB) fits in a
        // pipe's 64 KiB buffer, so the export cannot block on the reader.
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        filter.export_bpf(&writer).expect("export");
        drop(writer);
        let mut program = Vec::new();
        reader.read_to_end(&mut program).expect("read the program");
        program
    }

    /// What the kernel's classic BPF interpreter answers for a system call
    /// (`struct seccomp_data`: `nr`, `arch`, `instruction_pointer`,
    /// `args`), for the instructions a seccomp filter may hold.
    #[cfg(target_arch = "x86_64")]
    fn run_filter(program: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, value) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&value.to_le_bytes());
        }
        let (mut a, mut x, mut scratch) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let k = i.k;
            let (jt, jf) = (usize::from(i.jt), usize::from(i.jf));
            pc += 1;
            match i.code {
                0x20 => {
                    let at = k as usize;
                    a = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                0x00 => a = k,
                0x01 => x = k,
                0x60 => a = scratch[k as usize],
                0x61 => x = scratch[k as usize],
                0x02 => scratch[k as usize] = a,
                0x03 => scratch[k as usize] = x,
                0x07 => x = a,
                0x87 => a = x,
                0x54 => a &= k,
                0x05 => pc += k as usize,
                0x15 => pc += if a == k { jt } else { jf },
                0x25 => pc += if a > k { jt } else { jf },
                0x35 => pc += if a >= k { jt } else { jf },
                0x45 => pc += if a & k != 0 { jt } else { jf },
                0x1d => pc += if a == x { jt } else { jf },
                0x06 => return k,
                0x16 => return a,
                code => panic!("instruction {code:#x} at {} is not emulated", pc - 1),
            }
        }
    }

    // `AUDIT_ARCH_*` of <linux/audit.h>, `SECCOMP_RET_*` of <linux/seccomp.h>.
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    #[cfg(target_arch = "x86_64")]
    const RET_ALLOW: u32 = 0x7fff_0000;
    #[cfg(target_arch = "x86_64")]
    const RET_TRAP: u32 = 0x0003_0000;
    #[cfg(target_arch = "x86_64")]
    const RET_KILL_PROCESS: u32 = 0x8000_0000;

    /// The checked-in filter is what libseccomp makes of the rules above:
    /// both give the same answer to every system call number of both
    /// ABIs (and the x32 range), with every argument value the rules name
    /// and their neighbours in the first two arguments. With
    /// `ISOLA_WRITE_SECCOMP_FILTER=1` (`make seccomp-filter`), it writes
    /// the rules' program over the checked-in one first.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_checked_in_filter_is_what_libseccomp_makes_of_the_rules() {
        let compiled = compile_filter_rules(PID_PLACEHOLDER);
        if std::env::var_os("ISOLA_WRITE_SECCOMP_FILTER").is_some() {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ipc/worker_filter.x86_64.bpf");
            std::fs::write(&path, &compiled).expect("write the filter");
            eprintln!(
                "wrote {} ({} instructions)",
                path.display(),
                compiled.len() / 8
            );
            return;
        }
        let fresh = instructions(&compiled);
        let kept = instructions(FILTER_TEMPLATE);
        assert!(kept.len() < BPF_MAX_INSTRUCTIONS);
        let mut values: Vec<u64> = vec![0, 1, 2, 3, 4, 15, 16, 38, 64, 65, 1024, 1030, 1033, 1034];
        values.extend([
            0x5401,
            0x5421,
            0x5450,
            0x5451,
            0x5412,
            0x1_0000_001f,
            u64::MAX,
        ]);
        values.extend([u64::from(PID_PLACEHOLDER), u64::from(PID_PLACEHOLDER) + 1]);
        let thread = (libc::CLONE_VM | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;
        values.extend([
            thread,
            thread | libc::CLONE_NEWNET as u64,
            libc::SIGCHLD as u64,
        ]);
        values.extend([30, 31, 32]);
        let numbers = (0..=470u32).chain([0x4000_0000, 0x4000_0001, 0x4000_0200]);
        let mut differences = Vec::new();
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
            for nr in numbers.clone() {
                for &value in &values {
                    for args in [[value, 0, 0, 0, 0, 0], [0, value, 0, 0, 0, 0]] {
                        let (want, got) = (
                            run_filter(&fresh, nr, arch, args),
                            run_filter(&kept, nr, arch, args),
                        );
                        if want != got {
                            differences.push((arch, nr, args[0], args[1], want, got));
                        }
                    }
                }
            }
        }
        assert!(
            differences.is_empty(),
            "the checked-in filter differs from the rules' (arch, nr, arg0, arg1, wanted, got): \
             {:x?}; regenerate it with `make seccomp-filter`",
            &differences[..differences.len().min(10)]
        );
    }

    /// The filter a worker loads, read as the kernel runs it: what is
    /// allowed, refused or trapped, for each rule's edge.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_filter_allows_what_a_worker_needs_and_nothing_more() {
        let pid = 4242;
        let program = filter_for(pid).expect("the built-in filter");
        let run = |nr: libc::c_long, args: [u64; 6]| {
            run_filter(
                &program,
                u32::try_from(nr).expect("nr"),
                AUDIT_ARCH_X86_64,
                args,
            )
        };
        let one = |a0: u64, a1: u64| [a0, a1, 0, 0, 0, 0];
        for &(nr, name) in ALWAYS_ALLOWED {
            assert_eq!(run(nr, one(0, 0)), RET_ALLOW, "{name}");
        }
        for nr in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_fork,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_seccomp,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
            libc::SYS_chmod,
        ] {
            assert_eq!(run(nr, one(0, 0)), RET_TRAP, "{nr}");
        }
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let cases: &[(libc::c_long, [u64; 6], u32)] = &[
            (libc::SYS_clone, one(thread, 0), RET_ALLOW),
            (libc::SYS_clone, one(libc::SIGCHLD as u64, 0), RET_TRAP),
            (
                libc::SYS_clone,
                one(thread | libc::CLONE_NEWUSER as u64, 0),
                RET_TRAP,
            ),
            (
                libc::SYS_clone3,
                one(0, 0),
                0x0005_0000 | libc::ENOSYS as u32,
            ),
            (libc::SYS_fcntl, one(3, libc::F_GETFL as u64), RET_ALLOW),
            (libc::SYS_fcntl, one(3, libc::F_SETOWN as u64), RET_TRAP),
            (libc::SYS_fcntl, one(3, libc::F_SETLK as u64), RET_TRAP),
            (libc::SYS_ioctl, one(0, libc::FIONBIO), RET_ALLOW),
            (libc::SYS_ioctl, one(0, libc::TIOCSTI), RET_TRAP),
            (libc::SYS_ioctl, one(0, libc::FIONBIO | 1 << 32), RET_TRAP),
            (libc::SYS_prctl, one(libc::PR_SET_NAME as u64, 0), RET_ALLOW),
            (
                libc::SYS_prctl,
                one(libc::PR_SET_DUMPABLE as u64, 0),
                RET_TRAP,
            ),
            (
                libc::SYS_prctl,
                one(libc::PR_SET_SECCOMP as u64, 0),
                RET_TRAP,
            ),
            (libc::SYS_tgkill, one(u64::from(pid), 7), RET_ALLOW),
            (libc::SYS_tgkill, one(u64::from(pid) + 1, 7), RET_TRAP),
            (
                libc::SYS_tgkill,
                one(u64::from(PID_PLACEHOLDER), 7),
                RET_TRAP,
            ),
            (
                libc::SYS_rt_sigaction,
                one(libc::SIGSEGV as u64, 0),
                RET_ALLOW,
            ),
            (libc::SYS_rt_sigaction, one(34, 0), RET_ALLOW),
            (
                libc::SYS_rt_sigaction,
                one(libc::SIGSYS as u64, 0),
                RET_TRAP,
            ),
            (
                libc::SYS_rt_sigaction,
                one(1 << 32 | libc::SIGSYS as u64, 0),
                RET_TRAP,
            ),
            (libc::SYS_prlimit64, one(0, 0), RET_ALLOW),
            (libc::SYS_prlimit64, one(u64::from(pid), 0), RET_TRAP),
        ];
        for &(nr, args, want) in cases {
            assert_eq!(run(nr, args), want, "system call {nr} with {args:x?}");
        }
        // Another ABI: i386 (int 0x80) and x32 numbers kill at once.
        assert_eq!(
            run_filter(&program, 0, AUDIT_ARCH_I386, one(0, 0)),
            RET_KILL_PROCESS
        );
        assert_ne!(
            run_filter(&program, 0x4000_0000, AUDIT_ARCH_X86_64, one(0, 0)),
            RET_ALLOW
        );
        assert!(program.len() < 300, "{} instructions", program.len());
    }

    #[test]
    fn layer_states_read_well() {
        assert_eq!(LayerState::Enforced.to_string(), "enforced");
        assert_eq!(
            LayerState::Partial("a gap".into()).to_string(),
            "partial: a gap"
        );
        assert_eq!(
            LayerState::Unavailable("no kernel support".into()).to_string(),
            "unavailable: no kernel support"
        );
        let applied = Applied {
            landlock: LayerState::Enforced,
            seccomp: LayerState::Enforced,
            network_namespace: LayerState::Unavailable("disabled".into()),
        };
        assert!(!applied.is_complete());
    }

    /// The worker's filter, applied in a child: a forbidden call (socket,
    /// from a thread that existed before the filter) ends the process with
    /// the reporter's status and message; clone3 answers ENOSYS, and new
    /// threads still start (glibc falls back to clone).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_traps_a_forbidden_call_with_the_reporter_status() {
        let (status, stderr) = in_child(|| {
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let early = std::thread::spawn(move || {
                let _ = wait.recv();
                // SAFETY: `socket` takes integers only.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            });
            if !install_seccomp().is_enforced() {
                return SKIP;
            }
            // SAFETY: a null clone_args of size 0: never a new process.
            let clone3 = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    std::ptr::null_mut::<libc::c_void>(),
                    0_usize,
                )
            };
            if clone3 != -1 || errno() != Some(libc::ENOSYS) {
                return 3;
            }
            if std::thread::spawn(|| 7).join().ok() != Some(7) {
                return 4;
            }
            let _ = go.send(());
            let _ = early.join();
            // Not reached: the early thread's socket() ended the process.
            5
        });
        if !ended_with(
            status,
            &stderr,
            FORBIDDEN_SYSCALL_EXIT,
            "this kernel refused the seccomp filter",
        ) {
            return;
        }
        assert_eq!(
            stderr,
            format!("isola worker: forbidden system call {}\n", libc::SYS_socket)
        );
    }

    /// Under the filter, fork() makes no process: glibc's clone without
    /// CLONE_THREAD is trapped (or, were it to use clone3, refused).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn seccomp_refuses_a_new_process() {
        let (status, stderr) = in_child(|| {
            if !install_seccomp().is_enforced() {
                return SKIP;
            }
            // SAFETY: if a child were made, it would only `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the unexpected grandchild at once.
                unsafe { libc::_exit(9) }
            }
            if pid == -1 { 0 } else { 10 }
        });
        if status == SKIP {
            eprintln!("skipped: this kernel refused the seccomp filter");
            return;
        }
        if status == FORBIDDEN_SYSCALL_EXIT {
            assert_eq!(
                parse_forbidden_syscall(&stderr),
                Some(libc::SYS_clone),
                "stderr: {stderr}"
            );
        } else {
            assert_eq!(status, 0, "fork made a process; stderr: {stderr}");
        }
    }

    /// Landlock in a child: inside a read-only grant, reading works and
    /// writing is refused; outside, reading is refused, from this thread and
    /// from one that existed before the ruleset.
    #[test]
    fn landlock_refuses_files_outside_the_grants() {
        let granted = tempfile::tempdir().expect("tempdir");
        let writable = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let inside_file = granted.path().join("in.txt");
        let outside_file = outside.path().join("out.txt");
        std::fs::write(&inside_file, "in").expect("write");
        std::fs::write(&outside_file, "out").expect("write");
        let grants = Grants {
            read: vec![granted.path().to_owned()],
            write: vec![writable.path().to_owned()],
        };
        let new_in_writable = writable.path().join("new.txt");
        let new_in_read_only = granted.path().join("new.txt");
        let (status, stderr) = in_child(move || {
            let (ask, answered, _early) = opener();
            let state = restrict_files(&grants);
            let threads_covered = match state {
                LayerState::Enforced => true,
                LayerState::Partial(_) => false,
                LayerState::Unavailable(_) => return SKIP,
            };
            if File::open(&inside_file).is_err() {
                return 2;
            }
            match File::open(&outside_file) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                _ => return 3,
            }
            if std::fs::write(&new_in_writable, "ok").is_err() {
                return 4;
            }
            match std::fs::write(&new_in_read_only, "no") {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                _ => return 5,
            }
            if threads_covered {
                let _ = ask.send(outside_file.clone());
                if answered.recv().ok() != Some(Some(libc::EACCES)) {
                    return 6;
                }
            }
            0
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// A worker alone with its denied threads notes it while it waits; a
    /// thread its runtime starts after that (counted by the runtime's hook)
    /// makes the task's enforcement list the threads again and reach it.
    #[test]
    fn a_thread_started_after_the_quiet_note_is_still_reached() {
        let outside = tempfile::NamedTempFile::new().expect("tempfile");
        let path = outside.path().to_owned();
        let (status, stderr) = in_child(move || {
            let mut rules = match FileRules::new() {
                Ok(rules) => rules,
                Err(_) => return SKIP,
            };
            rules.note_quiet_threads();
            if rules.quiet.map(|(tid, _)| tid) != Some(Some(current_tid())) {
                return 2;
            }
            // As the worker's runtime hook counts a blocking-pool thread.
            THREADS_STARTED.fetch_add(1, Ordering::SeqCst);
            let (ask, answered, _late) = opener();
            if rules.enforce() != LayerState::Enforced {
                return 3;
            }
            let _ = ask.send(path.clone());
            match answered.recv() {
                Ok(Some(libc::EACCES)) => 0,
                _ => 4,
            }
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// A thread that opens each path it is sent and answers with the error
    /// number, if any: a thread Landlock must reach.
    fn opener() -> (
        std::sync::mpsc::Sender<PathBuf>,
        std::sync::mpsc::Receiver<Option<i32>>,
        std::thread::JoinHandle<()>,
    ) {
        let (ask, asked) = std::sync::mpsc::channel::<PathBuf>();
        let (answer, answered) = std::sync::mpsc::channel::<Option<i32>>();
        let thread = std::thread::spawn(move || {
            while let Ok(path) = asked.recv() {
                let _ = answer.send(File::open(path).err().and_then(|e| e.raw_os_error()));
            }
        });
        (ask, answered, thread)
    }

    /// Rules made, and threads noted, on a thread that denied itself every
    /// file and stays alive (as a cold worker's ticker does), and a sender
    /// that ends that thread when dropped.
    fn rules_from_a_ticker() -> (Option<FileRules>, std::sync::mpsc::Sender<()>) {
        let (made, rules) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut rules = FileRules::new().ok();
            let _denied = deny_files_on_this_thread();
            if let Some(rules) = rules.as_mut() {
                rules.note_quiet_threads();
            }
            let _ = made.send(rules);
            let _ = stopped.recv();
        });
        (rules.recv().ok().flatten(), stop)
    }

    /// A thread the runtime has counted but which does not run yet may be
    /// missing from the listing: a note taken then (on a thread other
    /// than the one starting it) does not hold, and the enforcement lists
    /// the threads itself.
    #[test]
    fn a_note_taken_while_a_counted_thread_is_not_yet_running_does_not_hold() {
        let (status, stderr) = in_child(|| {
            THREADS_STARTED.fetch_add(1, Ordering::SeqCst);
            let (rules, _ticker) = rules_from_a_ticker();
            let Some(rules) = rules else { return SKIP };
            if rules.quiet.is_some() {
                return 2;
            }
            // Once it runs, a new note holds again.
            THREADS_RUNNING.fetch_add(1, Ordering::SeqCst);
            let (rules, _ticker) = rules_from_a_ticker();
            match rules.and_then(|rules| rules.quiet) {
                Some(_) => 0,
                None => 3,
            }
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// A cold worker's ticker makes the rules and notes the threads after
    /// it denied itself every file: the one thread it saw, the main thread,
    /// enforces them without listing again and is bound by them. Had a
    /// third thread been there, undenied, the note would not hold, and the
    /// enforcement reaches that thread too.
    #[test]
    fn rules_noted_on_a_denied_thread_serve_the_one_thread_it_saw() {
        let outside = tempfile::NamedTempFile::new().expect("tempfile");
        let path = outside.path().to_owned();
        let (status, stderr) = in_child(move || {
            let main = current_tid();
            let (rules, _ticker) = rules_from_a_ticker();
            let Some(rules) = rules else { return SKIP };
            if rules.quiet.map(|(tid, _)| tid) != Some(Some(main)) {
                return 2;
            }
            if rules.enforce() != LayerState::Enforced {
                return 3;
            }
            if File::open(&path).err().and_then(|e| e.raw_os_error()) != Some(libc::EACCES) {
                return 4;
            }
            0
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");

        let outside = tempfile::NamedTempFile::new().expect("tempfile");
        let path = outside.path().to_owned();
        let (status, stderr) = in_child(move || {
            let (ask, answered, _third) = opener();
            let (rules, _ticker) = rules_from_a_ticker();
            let Some(rules) = rules else { return SKIP };
            if rules.quiet.is_some() {
                return 2;
            }
            if rules.enforce() != LayerState::Enforced {
                return 3;
            }
            let _ = ask.send(path.clone());
            match answered.recv() {
                Ok(Some(libc::EACCES)) => 0,
                _ => 4,
            }
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// Rules given in steps (as a pre-started worker does: shared ones while
    /// it waits, the task's later) add up: a path given read access and
    /// later write access can be written, one given twice has one rule, a
    /// path that cannot be opened is left out without spoiling the others,
    /// and nothing is enforced before `enforce`.
    #[test]
    fn file_rules_given_in_steps_add_up() {
        let shared = tempfile::tempdir().expect("tempdir");
        let upgraded = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let shared_file = shared.path().join("in.txt");
        let outside_file = outside.path().join("out.txt");
        std::fs::write(&shared_file, "in").expect("write");
        std::fs::write(&outside_file, "out").expect("write");
        let new_in_upgraded = upgraded.path().join("new.txt");
        let new_in_shared = shared.path().join("new.txt");
        let (shared_dir, upgraded_dir) = (shared.path().to_owned(), upgraded.path().to_owned());
        let (status, stderr) = in_child(move || {
            let mut rules = match FileRules::new() {
                Ok(rules) => rules,
                Err(_) => return SKIP,
            };
            rules.allow(&shared_dir, false);
            rules.allow(&upgraded_dir, false);
            // Nothing is in force yet.
            if File::open(&outside_file).is_err() {
                return 2;
            }
            rules.allow(&shared_dir, false);
            rules.allow(Path::new("/no/such/isola/path"), false);
            rules.allow(&upgraded_dir, true);
            if rules.given.len() != 3 {
                return 3;
            }
            if !matches!(
                rules.enforce(),
                LayerState::Enforced | LayerState::Partial(_)
            ) {
                return 4;
            }
            if File::open(&shared_file).is_err() {
                return 5;
            }
            if std::fs::write(&new_in_upgraded, "ok").is_err() {
                return 6;
            }
            match std::fs::write(&new_in_shared, "no") {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                _ => return 7,
            }
            match File::open(&outside_file) {
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => 0,
                _ => 8,
            }
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// A thread that denied itself every file opens nothing, is left out of
    /// the threads a ruleset must reach, and is put back among them when
    /// its guard goes; the other threads keep their rights.
    #[test]
    fn a_thread_can_deny_itself_every_file_and_is_then_skipped() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        let path = file.path().to_owned();
        let (status, stderr) = in_child(move || {
            if landlock_abi().is_err() {
                return SKIP;
            }
            let (ready, is_ready) = std::sync::mpsc::channel::<(libc::pid_t, Option<i32>)>();
            let (finish, finished) = std::sync::mpsc::channel::<()>();
            let denied_path = path.clone();
            let thread = std::thread::spawn(move || {
                let guard = deny_files_on_this_thread();
                let opened = File::open(&denied_path)
                    .err()
                    .and_then(|e| e.raw_os_error());
                let _ = ready.send((current_tid(), opened));
                let _ = finished.recv();
                drop(guard);
                denied_already(current_tid())
            });
            let Ok((tid, opened)) = is_ready.recv() else {
                return 2;
            };
            if opened != Some(libc::EACCES) {
                return 3;
            }
            if !denied_already(tid) {
                return 4;
            }
            // Listed afresh, and through a /proc/self/task opened before
            // (as a prepared ruleset does), alike.
            let mut opened = File::open("/proc/self/task")
                .ok()
                .and_then(|dir| rustix::fs::Dir::new(dir).ok());
            if opened.is_none() {
                return 8;
            }
            match (
                other_threads(current_tid(), &mut None),
                other_threads(current_tid(), &mut opened),
                other_threads(current_tid(), &mut opened),
            ) {
                (Ok(fresh), Ok(first), Ok(again))
                    if !fresh.contains(&tid) && fresh == first && first == again => {}
                _ => return 5,
            }
            // This thread was not restricted.
            if File::open(&path).is_err() {
                return 6;
            }
            let _ = finish.send(());
            match thread.join() {
                Ok(false) => 0,
                _ => 7,
            }
        });
        ended_with(status, &stderr, 0, "this kernel has no Landlock");
    }

    /// A new network namespace in a child: its /proc/self/ns/net differs.
    #[test]
    fn network_namespace_is_a_new_one() {
        let before = std::fs::read_link("/proc/self/ns/net").expect("readlink");
        let (status, stderr) = in_child(move || {
            if !enter_network_namespace().is_enforced() {
                return SKIP;
            }
            match std::fs::read_link("/proc/self/ns/net") {
                Ok(after) if after != before => 0,
                _ => 2,
            }
        });
        ended_with(status, &stderr, 0, "no network namespace here");
    }

    /// An unprivileged worker's path: one process makes a user and a
    /// network namespace and holds them open (as a parent holds its first
    /// worker's); another, outside both, joins them through its
    /// `/proc/PID/fd/N` and ends up in that network namespace with no
    /// capabilities left.
    #[test]
    fn an_unprivileged_worker_joins_the_namespaces_another_made() {
        let (status, stderr) = in_child(|| {
            // SAFETY: integer arguments only; a child of the test, which
            // becomes `nobody` if it was root.
            unsafe {
                if libc::geteuid() == 0
                    && (libc::setresgid(65534, 65534, 65534) != 0
                        || libc::setresuid(65534, 65534, 65534) != 0)
                {
                    return 2;
                }
                // The change of user made it undumpable; its children must
                // reach each other's /proc/PID/fd.
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            }
            let mut fds = [0; 2];
            // SAFETY: `pipe` writes two descriptors into the array.
            if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
                return 3;
            }
            let [read_end, write_end] = fds;
            // SAFETY: the maker only makes system calls and `_exit`s.
            let maker = unsafe { libc::fork() };
            if maker == 0 {
                let state = enter_network_namespace();
                let (user, net) = (
                    File::open("/proc/self/ns/user").map(OwnedFd::from),
                    File::open("/proc/self/ns/net").map(OwnedFd::from),
                );
                let word = match (state, user, net) {
                    (LayerState::Enforced, Ok(user), Ok(net)) => {
                        let word = [user.as_raw_fd() as u8, net.as_raw_fd() as u8];
                        std::mem::forget((user, net));
                        word
                    }
                    _ => [0, 0],
                };
                // SAFETY: writes two bytes from a live array, then waits to
                // be killed with its namespaces held.
                unsafe {
                    libc::write(write_end, word.as_ptr().cast(), 2);
                    libc::pause();
                    libc::_exit(0)
                }
            }
            let mut word = [0u8; 2];
            // SAFETY: reads two bytes into a live array.
            let got = unsafe { libc::read(read_end, word.as_mut_ptr().cast(), 2) };
            let kill = || {
                // SAFETY: ends and reaps our own child.
                unsafe {
                    libc::kill(maker, libc::SIGKILL);
                    libc::waitpid(maker, std::ptr::null_mut(), 0);
                }
            };
            if got != 2 || word == [0, 0] {
                kill();
                return SKIP;
            }
            let maker_net = std::fs::read_link(format!("/proc/{maker}/ns/net")).ok();
            let pid = u32::try_from(maker).unwrap_or(0);
            let state = join_network_namespace(pid, Some(i32::from(word[0])), i32::from(word[1]));
            let here = std::fs::read_link("/proc/self/ns/net").ok();
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            kill();
            if state != LayerState::Enforced {
                eprintln!("{state}");
                return 4;
            }
            if here.is_none() || here != maker_net {
                return 5;
            }
            let no_caps = status
                .lines()
                .filter(|l| l.starts_with("CapEff:") || l.starts_with("CapPrm:"))
                .all(|l| l.split_whitespace().nth(1) == Some("0000000000000000"));
            if !no_caps {
                eprintln!("{status}");
                return 6;
            }
            0
        });
        if status == SKIP {
            eprintln!("skipped: no unprivileged user namespaces here: {stderr}");
            return;
        }
        assert_eq!(status, 0, "stderr: {stderr}");
    }

    /// close_other_fds in a child: kept descriptors stay, others close.
    #[test]
    fn close_other_fds_keeps_only_what_it_is_told() {
        let (status, stderr) = in_child(|| {
            let open = || {
                // SAFETY: a NUL-terminated path and integer flags.
                unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) }
            };
            let (a, b, c) = (open(), open(), open());
            if a < 0 || b < 0 || c < 0 {
                return 2;
            }
            // SAFETY: this child owns no other descriptor through a Rust
            // object (the test harness's are the parent's business).
            if unsafe { close_other_fds(&[0, 1, 2, b]) }.is_err() {
                return 3;
            }
            // SAFETY: `fcntl(F_GETFD)` reads flags only.
            let is_open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
            match (is_open(a), is_open(b), is_open(c), is_open(2)) {
                (false, true, false, true) => 0,
                _ => 4,
            }
        });
        assert_eq!(status, 0, "stderr: {stderr}");
    }
}
