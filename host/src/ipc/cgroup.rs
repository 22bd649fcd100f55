//! cgroup limits around sandboxed workers: the OS sandbox's layer that
//! counts what rlimits cannot.
//!
//! A worker's `RLIMIT_DATA` counts its private writable mappings only. The
//! kernel memory it makes the kernel spend (page tables, pipe and socket
//! buffers, page cache of files it writes) and shared mappings
//! (`MAP_SHARED`, `memfd`) escape it, and no rlimit bounds how many threads
//! a process starts or how many cores it keeps busy. A cgroup counts all
//! of those. Each sandboxed worker gets a cgroup of its own, made by its
//! parent before the worker starts and joined before it runs anything of
//! a task:
//!
//! | controller | limit | set | a worker that reaches it |
//! |---|---|---|---|
//! | memory | the task's process memory limit ([`crate::Limits::process_memory`], default `max_memory` + 512 MiB), swap included (`memory.max` and `memory.swap.max` = 0 on v2; `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` on v1) | for each task, before it is sent | is killed by the kernel's OOM killer for its cgroup; the task ends `LimitExceeded(ProcessMemory)` |
//! | pids | [`WORKER_PIDS`] threads and processes (`pids.max`) | at start | cannot start another thread; a worker that crashes for it ends `LimitExceeded(Pids)` |
//! | cpu, only with `RunnerConfig::worker_cpu_quota` | that many cores' time per [`CPU_PERIOD`] (`cpu.max` on v2, `cpu.cfs_quota_us`/`cpu.cfs_period_us` on v1) | at start | is throttled, not stopped (its wall time runs on to its timeout) |
//!
//! The `cpu` group is opt-in: a worker in a `cpu` group of its own is
//! scheduled as a group entity beside its parent, and the kernel then
//! lets it run on where it would have let the parent preempt it. Measured
//! on the development machine (kernel 6.18, cgroup v1, 2 cores): a
//! process task's host call round trip took 28 µs instead of 18, a
//! worker's first frame reached its parent up to 0.4 ms late, and a cold
//! start took about 0.1 ms more. A lower `cpu.shares` hid it (19 µs at 2)
//! but would starve workers beside any busy process, thread tasks
//! included.
//!
//! # Where the groups go
//!
//! Found once per runner from `/proc/self/cgroup` and `/proc/self/mountinfo`
//! (the kernel's own account of which hierarchy holds which controller), for
//! each controller wanted (memory and pids; cpu with a quota):
//!
//! - On a cgroup v2 hierarchy (`cgroup2`, the unified one), a worker's group
//!   must be the child of a group whose `cgroup.subtree_control` enables
//!   the controllers, and a group with processes in it cannot enable any
//!   (the "no internal processes" rule), and Isola's own group holds
//!   Isola. So the groups go under Isola's own group only when that is the
//!   hierarchy's root (exempt from the rule); else beside it, under its
//!   parent, which enables what Isola's own group has by definition. That
//!   needs write access to the parent: root, or Isola started in a child
//!   group of a cgroup delegated to its user (for example, a service with
//!   `Delegate=yes` whose own process moved to a child group first).
//! - On a cgroup v1 hierarchy (systems that still mount the controllers one
//!   by one, as this development machine does), under Isola's own group in
//!   that hierarchy: v1 has no such rule.
//!
//! A worker's groups are named `isola-<parent pid>-<n>` (`n` counts the
//! parent's workers' groups; one name in every hierarchy unless a
//! leftover holds it), removed once its worker is reaped; groups of a
//! parent that died are removed by the next runner that looks there.
//! Where none of the controllers can be used (not root, no delegation, or
//! no cgroup file system), workers run under their rlimits alone, which the
//! sandbox reports as an unavailable layer (a warning; a refusal under
//! `sandbox = "required"`).
//!
//! # Who moves the worker in
//!
//! Moving a process with a write to `cgroup.procs` takes a kernel-wide
//! lock whose writer waits for an RCU grace period, unless another such
//! write came just before: 7-16 ms on the development machine (kernel
//! 6.18) once the machine had been idle for 30 ms or more, against
//! 0.06 ms back to back. A cold start (about 3 ms) paid that whenever
//! tasks did not start back to back. A thread moving itself through a v1
//! group's `tasks` file takes no such lock (0.03-0.04 ms), and a process
//! with one thread moves whole that way. So the parent makes the groups,
//! with their limits, before it starts the worker (names in
//! `ISOLA_WORKER_CGROUP`), and the worker joins its v1 groups itself,
//! first thing, while it is one thread ([`join`]); its hello says how many
//! it joined, which the parent checks (a worker that never saw the list,
//! because something between the two cleared its environment, joined
//! none). A v2 group can only be joined through `cgroup.procs` (a thread
//! cannot move alone between v2 domain groups), so there the parent moves
//! the worker, and a cold start pays the wait.
//!
//! # Cost
//!
//! Making a group costs the kernel about 15-130 µs per controller
//! hierarchy and each limit a write of about 10 µs (measured on the
//! development machine, kernel 6.18, cgroup v1). A runner keeps one group
//! made ahead, so a worker's start takes a ready one, and the next is made
//! while that worker executes its own start-up; only the memory limit is
//! written when a task is handed over, and only if it is not the
//! default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::outcome::CgroupEvents;

/// Threads and processes a sandboxed worker may have (`pids.max`). A worker
/// has its main thread, the epoch ticker's, and Tokio's blocking threads
/// for WASI file I/O,
/// which come and go: 64 leaves room for a burst of those, while a guest
/// that took over the worker (which cannot `fork`: seccomp) cannot start
/// threads past it.
pub(crate) const WORKER_PIDS: u64 = 64;

/// The CFS period of a worker's CPU quota, in microseconds (the kernel's
/// default period).
pub(crate) const CPU_PERIOD: u64 = 100_000;

/// The quota of `cores` of CPU (`RunnerConfig::worker_cpu_quota`) in
/// microseconds per [`CPU_PERIOD`], at least the kernel's smallest
/// (1 ms).
pub(crate) fn quota_of(cores: f64) -> u64 {
    // Bounded by the caller to (0, 1024] cores: at most 1.024e8 µs.
    let micros = (cores * CPU_PERIOD as f64).round();
    if micros >= 1000.0 {
        micros as u64
    } else {
        1000
    }
}

/// The controllers Isola limits workers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    /// The kernel's name for it.
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A directory in which worker groups go, and the controllers they get
/// there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    version: Version,
    dir: PathBuf,
    controllers: Vec<Controller>,
}

/// Where this process's workers' cgroups go.
#[derive(Debug)]
pub(crate) struct Cgroups {
    places: Vec<Place>,
    /// Controllers that were wanted but cannot be used here, and why.
    missing: Vec<(Controller, String)>,
}

/// A cgroup file system mount, from a line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    version: Version,
    /// The path within the hierarchy that is mounted (`/` unless it is a
    /// bind mount or seen from a cgroup namespace).
    root: String,
    point: PathBuf,
    /// v1: the controllers the hierarchy holds.
    controllers: Vec<String>,
}

/// The cgroup file system mounts in a `/proc/<pid>/mountinfo`.
fn mounts(mountinfo: &str) -> Vec<Mount> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER`
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        let (Some(root), Some(point), Some(kind)) = (head.get(3), head.get(4), tail.first()) else {
            continue;
        };
        let version = match *kind {
            "cgroup2" => Version::V2,
            "cgroup" => Version::V1,
            _ => continue,
        };
        let controllers = match version {
            Version::V1 => tail
                .get(2)
                .map(|opts| opts.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            Version::V2 => Vec::new(),
        };
        found.push(Mount {
            version,
            root: unescape(root),
            point: PathBuf::from(unescape(point)),
            controllers,
        });
    }
    found
}

/// A path as mountinfo writes it: space, tab, newline and backslash as
/// octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A process's groups, from `/proc/<pid>/cgroup`: for each hierarchy its
/// controllers (`None` for v2's line `0::PATH`) and the process's path.
fn memberships(cgroup: &str) -> Vec<(Option<Vec<String>>, String)> {
    cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let controllers = if controllers.is_empty() {
                None
            } else {
                Some(controllers.split(',').map(str::to_owned).collect())
            };
            Some((controllers, path.to_owned()))
        })
        .collect()
}

/// `path` (a group's path in its hierarchy) under `mount`, if the mount
/// shows it.
fn in_mount(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rest = if mount.root == "/" {
        path
    } else {
        // `/sys.slice` shows `/sys.slice/a`, not `/sys.slice2`.
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    let rest = rest.trim_start_matches('/');
    Some(if rest.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rest)
    })
}

/// The controllers a v2 group lists in one of its `cgroup.*` files.
fn listed(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Groups left leftover by a worker's drop while it was still alive, for
/// the next sweep.
static LEFTOVERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes the leftovers that can go now (their workers reaped since).
pub(crate) fn sweep() {
    let mut left = LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner());
    left.retain(
        |dir| matches!(std::fs::remove_dir(dir), Err(err) if err.kind() != io::ErrorKind::NotFound),
    );
}

impl Cgroups {
    /// Finds where this process's workers' groups go, as described in the
    /// module's documentation. An error says why no controller can be used.
    /// Memory and pids always; cpu only with `cpu` (a quota is
    /// configured: see the module docs on why it is opt-in).
    pub(crate) fn find(cpu: bool) -> Result<Cgroups, String> {
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
        };
        let wanted: &[Controller] = if cpu {
            &Controller::ALL
        } else {
            &[Controller::Memory, Controller::Pids]
        };
        Cgroups::find_in(
            &read("/proc/self/cgroup")?,
            &read("/proc/self/mountinfo")?,
            wanted,
        )
    }

    /// [`Cgroups::find`] from the texts of `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`; probes (and may enable controllers in) the
    /// directories they name.
    fn find_in(cgroup: &str, mountinfo: &str, wanted: &[Controller]) -> Result<Cgroups, String> {
        let mounts = mounts(mountinfo);
        let groups = memberships(cgroup);
        let mut places: Vec<Place> = Vec::new();
        let mut missing = Vec::new();
        let mut wanted_v2 = Vec::new();
        for &controller in wanted {
            let name = controller.name();
            // v1: a hierarchy of its own (perhaps shared with others).
            let v1 = groups.iter().find_map(|(controllers, path)| {
                let controllers = controllers.as_ref()?;
                controllers.iter().any(|c| c == name).then_some(())?;
                let mount = mounts.iter().find(|m| {
                    m.version == Version::V1 && m.controllers.iter().any(|c| c == name)
                })?;
                in_mount(mount, path)
            });
            match v1 {
                Some(dir) => match places
                    .iter_mut()
                    .find(|p| p.version == Version::V1 && p.dir == dir)
                {
                    Some(place) => place.controllers.push(controller),
                    None => places.push(Place {
                        version: Version::V1,
                        dir,
                        controllers: vec![controller],
                    }),
                },
                None => wanted_v2.push(controller),
            }
        }
        if !wanted_v2.is_empty() {
            match v2_place(&groups, &mounts, &wanted_v2) {
                Ok((place, lacking)) => {
                    for controller in lacking {
                        missing.push((
                            controller,
                            format!(
                                "the cgroup v2 group `{}` does not offer it",
                                place.dir.display()
                            ),
                        ));
                    }
                    if !place.controllers.is_empty() {
                        places.push(place);
                    }
                }
                Err(why) => {
                    for controller in wanted_v2 {
                        missing.push((controller, why.clone()));
                    }
                }
            }
        }
        // A place Isola cannot make groups in is no place.
        let pid = std::process::id();
        places.retain(|place| match probe(&place.dir, pid) {
            Ok(()) => true,
            Err(why) => {
                for controller in &place.controllers {
                    missing.push((*controller, why.clone()));
                }
                false
            }
        });
        if places.is_empty() {
            let why = missing.first().map_or_else(
                || "no cgroup file system".to_owned(),
                |(_, why)| why.clone(),
            );
            return Err(why);
        }
        for place in &places {
            remove_stale(&place.dir);
        }
        Ok(Cgroups { places, missing })
    }

    /// Controllers it was asked for but cannot use here, and why (empty
    /// when all are in use).
    pub(crate) fn missing(&self) -> &[(Controller, String)] {
        &self.missing
    }

    /// Makes a worker's group in each place, with its pids and CPU limits
    /// and the memory limit `memory` (bytes, swap included; see
    /// [`WorkerGroup::limit_memory`]), before the worker exists. The worker
    /// joins its v1 groups itself as it starts ([`WorkerGroup::worker_joins`],
    /// [`join`]); its parent moves it into the v2 ones
    /// ([`WorkerGroup::adopt`]). See the module docs on why.
    ///
    /// # Errors
    ///
    /// The first directory or file the kernel refused; what was made is
    /// removed again.
    pub(crate) fn make(&self, cpu_quota: Option<u64>, memory: u64) -> io::Result<WorkerGroup> {
        sweep();
        let mut group = WorkerGroup {
            dirs: Vec::new(),
            memory_limit: None,
            baseline: (0, 0),
            complete: true,
        };
        let n = GROUPS_MADE.fetch_add(1, Ordering::Relaxed);
        for place in &self.places {
            let dir = new_group_dir(&place.dir, n, &GROUPS_MADE)?;
            // A directory whose path cannot travel in the worker's
            // environment (a line break in it) is joined by the parent.
            let by_worker = place.version == Version::V1
                && dir.to_str().is_some_and(|path| !path.contains('\n'));
            group.dirs.push(GroupDir {
                version: place.version,
                dir: dir.clone(),
                controllers: place.controllers.clone(),
                by_worker,
            });
            for controller in &place.controllers {
                match (controller, place.version) {
                    (Controller::Pids, _) => write(&dir, "pids.max", &WORKER_PIDS.to_string())?,
                    (Controller::Cpu, version) => {
                        // v1 refuses a quota above an enclosing group's
                        // (a container given half a core, say); v2 takes
                        // the smaller. Either way the enclosing quota
                        // holds, so only this limit is given up.
                        let Some(quota) = cpu_quota else {
                            continue;
                        };
                        let set = match version {
                            Version::V2 => write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD}")),
                            Version::V1 => {
                                write(&dir, "cpu.cfs_period_us", &CPU_PERIOD.to_string()).and_then(
                                    |()| write(&dir, "cpu.cfs_quota_us", &quota.to_string()),
                                )
                            }
                        };
                        if let Err(err) = set {
                            tracing::debug!("a worker's CPU quota is its enclosing group's: {err}");
                        }
                    }
                    (Controller::Memory, _) => {}
                }
            }
        }
        // Without it the group still limits threads (and CPU); the task's
        // own limit is tried again when it is handed over.
        if let Err(err) = group.limit_memory(memory) {
            tracing::debug!("a worker's cgroup memory limit is left for its task: {err}");
        }
        Ok(group)
    }
}

/// This process's count of worker groups, for their names.
static GROUPS_MADE: AtomicU64 = AtomicU64::new(0);

/// Makes a worker group's directory in `place`: `isola-<pid>-<n>`, or, if
/// a leftover holds that name, the next free one of `made` (the process's
/// count). A leftover is a group of an earlier process that had this pid
/// (a container's Isola is often pid 1 again after a restart), which
/// `remove_stale` takes for alive. It is left alone: in another pid
/// namespace sharing the hierarchy, the same pid may be a live runner
/// whose spare group waits empty.
///
/// # Errors
///
/// The directory the kernel refused, or a name still taken after many.
fn new_group_dir(place: &Path, n: u64, made: &AtomicU64) -> io::Result<PathBuf> {
    let mut n = n;
    let mut last = None;
    for _ in 0..64 {
        let dir = place.join(format!("isola-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                last = Some(context(&dir, err));
                n = made.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => return Err(context(&dir, err)),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free cgroup name")))
}

/// Moves the calling process into each group directory of `dirs` (one per
/// line, as [`WorkerGroup::worker_joins`] gives them), for a worker at its
/// start, and says how many it joined. It writes `0` (the caller) to each
/// group's v1 `tasks` file, which moves the calling thread only: the
/// kernel then takes no global lock. The process-wide `cgroup.procs` takes
/// one whose writer waits for an RCU grace period unless another write
/// came just before: 7-16 ms here after an idle spell of 30 ms or more,
/// against 0.03-0.04 ms for `tasks` (kernel 6.18, cgroup v1, the
/// development machine). Moving the thread is moving the process while it
/// has no other thread: so call it before any starts. If one has, it
/// writes `cgroup.procs` (the whole process) instead.
///
/// # Errors
///
/// The group file that could not be written, and why; the process is
/// then moved back out of the groups it had joined (into their parents,
/// where it came from), so that it is in all of them or none.
pub(crate) fn join(dirs: &str) -> Result<usize, String> {
    join_via(dirs, if alone() { "tasks" } else { "cgroup.procs" })
}

/// Whether the calling process has one thread: `/proc/self/task` links
/// `.`, `..` and one entry per thread.
fn alone() -> bool {
    std::fs::metadata("/proc/self/task").is_ok_and(|task| {
        use std::os::unix::fs::MetadataExt as _;
        task.nlink() == 3
    })
}

/// [`join`] through the group file `file` (`tasks` or `cgroup.procs`).
fn join_via(dirs: &str, file: &str) -> Result<usize, String> {
    let mut joined: Vec<&Path> = Vec::new();
    for dir in dirs.lines().filter(|dir| !dir.is_empty()).map(Path::new) {
        if let Err(err) = write(dir, file, "0") {
            for dir in joined {
                if let Some(parent) = dir.parent() {
                    let _ = write(parent, file, "0");
                }
            }
            return Err(err.to_string());
        }
        joined.push(dir);
    }
    Ok(joined.len())
}

impl fmt::Display for Cgroups {
    /// Which controllers limit workers, and where: e.g. `memory, pids (cgroup
    /// v1 under /sys/fs/cgroup/memory/…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for place in &self.places {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            let names: Vec<&str> = place.controllers.iter().map(|c| c.name()).collect();
            write!(
                f,
                "{} (cgroup {} under {})",
                names.join(", "),
                match place.version {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                },
                place.dir.display()
            )?;
        }
        for (controller, why) in &self.missing {
            write!(f, "; no {}: {why}", controller.name())?;
        }
        Ok(())
    }
}

/// The v2 group under which workers' groups can get `wanted`, and which
/// of `wanted` it cannot give.
fn v2_place(
    groups: &[(Option<Vec<String>>, String)],
    mounts: &[Mount],
    wanted: &[Controller],
) -> Result<(Place, Vec<Controller>), String> {
    let path = groups
        .iter()
        .find_map(|(controllers, path)| controllers.is_none().then_some(path))
        .ok_or("this process is in no cgroup v2 group")?;
    let mount = mounts
        .iter()
        .find(|m| m.version == Version::V2)
        .ok_or("no cgroup v2 file system is mounted")?;
    let own = in_mount(mount, path).ok_or_else(|| {
        format!(
            "this process's cgroup v2 group `{path}` is outside the mount at `{}`",
            mount.point.display()
        )
    })?;
    let offered = listed(&own, "cgroup.controllers");
    let (usable, lacking): (Vec<Controller>, Vec<Controller>) = wanted
        .iter()
        .partition(|c| offered.iter().any(|o| o == c.name()));
    if usable.is_empty() {
        return Err(format!(
            "the cgroup v2 group `{}` offers none of {}",
            own.display(),
            wanted
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let enabled = listed(&own, "cgroup.subtree_control");
    let missing: Vec<&Controller> = usable
        .iter()
        .filter(|c| !enabled.iter().any(|e| e == c.name()))
        .collect();
    let enable = missing
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect::<Vec<_>>()
        .join(" ");
    let dir = if missing.is_empty() || write(&own, "cgroup.subtree_control", &enable).is_ok() {
        own
    } else {
        // Isola's own group holds processes (Isola, at least), so it
        // cannot give controllers to groups below it: beside it, then,
        // where its parent gives what it has.
        match own.parent() {
            Some(parent) if own != mount.point => parent.to_owned(),
            _ => {
                return Err(format!(
                    "the cgroup v2 group `{}` holds processes, so it cannot enable {} for \
                     groups below it, and it has no parent to put them beside it",
                    own.display(),
                    enable
                ));
            }
        }
    };
    Ok((
        Place {
            version: Version::V2,
            dir,
            controllers: usable,
        },
        lacking,
    ))
}

/// Whether a group can be made (and removed) in `dir`.
fn probe(dir: &Path, pid: u32) -> Result<(), String> {
    let probe = dir.join(format!("isola-{pid}-probe"));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(format!(
            "cannot make a cgroup in `{}`: {err} (Isola makes workers' cgroups as root, or in a \
             cgroup delegated to its user)",
            dir.display()
        )),
    }
}

/// Removes groups of parents that are gone (their workers died with them,
/// so the groups are empty).
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(parent) = name
            .to_str()
            .and_then(|n| n.strip_prefix("isola-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{parent}")).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn context(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// Writes `value` to the control file `file` of the group at `dir`.
fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| context(&path, e))
}

/// A number in a flat-keyed control file (`memory.events`, `pids.events`,
/// `memory.oom_control`): the value on the line `key N`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One worker's cgroup: a directory per hierarchy. Removed when dropped
/// (after its worker is reaped; a group whose worker still lives is left
/// for a later sweep).
#[derive(Debug)]
pub(crate) struct WorkerGroup {
    dirs: Vec<GroupDir>,
    /// The memory limit written last, so a task with the same one (most
    /// tasks: the default) costs no write on its way to the worker.
    memory_limit: Option<u64>,
    /// The kernel's counts when the worker was kept for another task
    /// ([`WorkerGroup::settle`]): they only ever grow, so a task's own are
    /// what came after.
    baseline: (u64, u64),
    /// Whether the worker is in every one of its groups: false after it or
    /// its parent failed to move it into one ([`WorkerGroup::set_incomplete`]).
    complete: bool,
}

/// A worker group's directory in one hierarchy.
#[derive(Debug)]
struct GroupDir {
    version: Version,
    dir: PathBuf,
    controllers: Vec<Controller>,
    /// Joined by the worker itself ([`join`]), not moved there by its
    /// parent ([`WorkerGroup::adopt`]).
    by_worker: bool,
}

impl WorkerGroup {
    fn dir_of(&self, controller: Controller) -> Option<(Version, &Path)> {
        self.dirs
            .iter()
            .find(|group| group.controllers.contains(&controller))
            .map(|group| (group.version, group.dir.as_path()))
    }

    /// The directories the worker joins itself as it starts, one per line,
    /// for it to give to [`join`] (it travels in the worker's environment);
    /// `None` if there are none.
    pub(crate) fn worker_joins(&self) -> Option<String> {
        let dirs: Vec<&str> = self
            .dirs
            .iter()
            .filter(|group| group.by_worker)
            .filter_map(|group| group.dir.to_str())
            .collect();
        (!dirs.is_empty()).then(|| dirs.join("\n"))
    }

    /// How many groups the worker joins itself (the lines of
    /// [`WorkerGroup::worker_joins`]).
    pub(crate) fn worker_join_count(&self) -> usize {
        self.dirs.iter().filter(|group| group.by_worker).count()
    }

    /// Marks the worker as not in every one of its groups (a move failed):
    /// it then serves no task that requires the sandbox. The group stays
    /// until the worker is reaped, since the worker may be in part of it.
    pub(crate) fn set_incomplete(&mut self) {
        self.complete = false;
    }

    /// Whether the worker is in every one of its groups.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether [`WorkerGroup::adopt`] has any group to move the worker
    /// into.
    pub(crate) fn parent_moves(&self) -> bool {
        self.dirs.iter().any(|group| !group.by_worker)
    }

    /// Moves the worker `pid` into the groups it does not join itself
    /// (those on cgroup v2, where a thread cannot move alone between
    /// groups: the process-wide write, with its grace period, is the only
    /// way there).
    ///
    /// # Errors
    ///
    /// The group file the kernel refused.
    pub(crate) fn adopt(&self, pid: u32) -> io::Result<()> {
        for group in self.dirs.iter().filter(|group| !group.by_worker) {
            write(&group.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Sets the memory limit (swap included) for the worker's next task, in
    /// bytes. Without the memory controller, does nothing.
    ///
    /// # Errors
    ///
    /// The file the kernel refused.
    pub(crate) fn limit_memory(&mut self, bytes: u64) -> io::Result<()> {
        if self.memory_limit == Some(bytes) {
            return Ok(());
        }
        let Some((version, dir)) = self.dir_of(Controller::Memory) else {
            return Ok(());
        };
        let value = bytes.to_string();
        match version {
            Version::V2 => {
                write(dir, "memory.max", &value)?;
                // Absent when the kernel does not account swap: then
                // there is none to limit.
                if dir.join("memory.swap.max").exists() {
                    write(dir, "memory.swap.max", "0")?;
                }
            }
            Version::V1 => {
                // memory+swap may never be below memory alone: lowering
                // goes memory first, raising memory+swap first (the
                // kernel refuses the other order with EINVAL).
                let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
                match write(dir, "memory.limit_in_bytes", &value) {
                    Ok(()) if memsw => write(dir, "memory.memsw.limit_in_bytes", &value)?,
                    Ok(()) => {}
                    Err(err) if memsw && err.raw_os_error() == Some(libc::EINVAL) => {
                        write(dir, "memory.memsw.limit_in_bytes", &value)?;
                        write(dir, "memory.limit_in_bytes", &value)?;
                    }
                    // Below what the worker holds already (EBUSY), or
                    // anything else: the real cause.
                    Err(err) => return Err(err),
                }
            }
        }
        self.memory_limit = Some(bytes);
        Ok(())
    }

    /// Takes what the kernel counted so far as the zero of the next task's
    /// [`WorkerGroup::events`]: called when a worker is kept for another
    /// task (a worker that survived its threads' limit keeps the count).
    pub(crate) fn settle(&mut self) {
        self.baseline = (0, 0);
        let now = self.events();
        self.baseline = (now.oom_kills, now.pids_max_hits);
    }

    /// What the kernel counted against the group's limits since the worker
    /// started, or since it was last kept ([`WorkerGroup::settle`]).
    pub(crate) fn events(&self) -> CgroupEvents {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let memory = self.dir_of(Controller::Memory).and_then(|(version, dir)| {
            let (events, max) = match version {
                Version::V2 => (read(dir, "memory.events")?, read(dir, "memory.max")?),
                Version::V1 => (
                    read(dir, "memory.oom_control")?,
                    read(dir, "memory.limit_in_bytes")?,
                ),
            };
            Some((keyed(&events, "oom_kill")?, max.trim().parse().ok()?))
        });
        let pids = self
            .dir_of(Controller::Pids)
            .and_then(|(_, dir)| keyed(&read(dir, "pids.events")?, "max"));
        CgroupEvents {
            oom_kills: memory.map_or(0, |(kills, _)| kills.saturating_sub(self.baseline.0)),
            memory_max: memory.map(|(_, max)| max),
            pids_max_hits: pids.unwrap_or(0).saturating_sub(self.baseline.1),
            pids_max: WORKER_PIDS,
        }
    }
}

impl Drop for WorkerGroup {
    fn drop(&mut self) {
        for GroupDir { dir, .. } in &self.dirs {
            if let Err(err) = std::fs::remove_dir(dir)
                && err.kind() != io::ErrorKind::NotFound
            {
                LEFTOVERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(dir.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn reads_which_hierarchy_holds_which_controller() {
        let found = mounts(HYBRID_MOUNTINFO);
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(found[0].point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(found[0].controllers, ["rw", "cpu"]);
        assert_eq!(found[4].version, Version::V2);
        let groups =
            memberships("9:name=systemd:/\n8:pids:/\n4:memory:/process_api/7b63\n1:cpu:/\n0::/\n");
        assert_eq!(
            groups[2],
            (
                Some(vec!["memory".to_owned()]),
                "/process_api/7b63".to_owned()
            )
        );
        assert_eq!(groups[4], (None, "/".to_owned()));
        assert_eq!(
            in_mount(&found[1], "/process_api/7b63"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/7b63"))
        );
        // A bind mount of part of a hierarchy shows only what is under it.
        let bound = Mount {
            version: Version::V2,
            root: "/sys.slice".into(),
            point: "/sys/fs/cgroup".into(),
            controllers: Vec::new(),
        };
        assert_eq!(
            in_mount(&bound, "/sys.slice/a.service"),
            Some(PathBuf::from("/sys/fs/cgroup/a.service"))
        );
        assert_eq!(in_mount(&bound, "/user.slice"), None);
        assert_eq!(in_mount(&bound, "/sys.slice2/b.service"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn reads_the_kernels_event_counts() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(v2, "oom_kill"), Some(1));
        assert_eq!(keyed(v2, "max"), Some(12));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(v1, "oom_kill"), Some(3));
        assert_eq!(keyed(v1, "oom"), None);
    }

    /// A v2 hierarchy laid out in a temporary directory, as the kernel
    /// shows one: the controllers each group offers and enables.
    fn fake_v2(own_enables: &str) -> (tempfile::TempDir, String) {
        let root = tempfile::tempdir().expect("tempdir");
        let own = root.path().join("user.slice/isola.scope");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(
            root.path().join("user.slice/cgroup.subtree_control"),
            "cpu memory pids",
        )
        .expect("write");
        std::fs::write(own.join("cgroup.controllers"), "cpu io memory pids").expect("write");
        std::fs::write(own.join("cgroup.subtree_control"), own_enables).expect("write");
        let mountinfo = format!(
            "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
            root.path().display()
        );
        (root, mountinfo)
    }

    /// The one worker group (`isola-…` directory) in `dir`.
    fn only_group(dir: &Path) -> PathBuf {
        let prefix = format!("isola-{}-", std::process::id());
        let groups: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path())
            .collect();
        assert_eq!(groups.len(), 1, "{groups:?}");
        groups.into_iter().next().expect("one")
    }

    /// On v1 the parent makes each worker's groups, with their limits, and
    /// never moves the worker: the worker joins them itself, one thread at
    /// a time, through `tasks` (the process-wide `cgroup.procs` would wait
    /// for an RCU grace period). Each worker gets groups of its own.
    #[test]
    fn on_v1_the_worker_joins_its_groups_itself() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut mountinfo = String::new();
        for (i, controller) in ["memory", "pids"].iter().enumerate() {
            let point = root.path().join(controller).join("isola.scope");
            std::fs::create_dir_all(&point).expect("mkdir");
            mountinfo.push_str(&format!(
                "3{i} 31 0:3{i} / {} rw,relatime - cgroup cgroup rw,{controller}\n",
                root.path().join(controller).display()
            ));
        }
        let cgroups = Cgroups::find_in(
            "8:pids:/isola.scope\n4:memory:/isola.scope\n0::/\n",
            &mountinfo,
            &[Controller::Memory, Controller::Pids],
        )
        .expect("a place");
        // The kernel's control files are plain files here: emptied before
        // a group is dropped, so that its directories can go.
        let clear = |joins: &str| {
            for dir in joins.lines() {
                for entry in std::fs::read_dir(dir).expect("list").flatten() {
                    std::fs::remove_file(entry.path()).expect("rm");
                }
            }
        };
        let other = cgroups.make(None, 64 << 20).expect("a group");
        let group = cgroups.make(None, 64 << 20).expect("another group");
        let other_joins = other.worker_joins().expect("groups for the worker");
        assert_ne!(
            Some(&other_joins),
            group.worker_joins().as_ref(),
            "groups of its own"
        );
        clear(&other_joins);
        drop(other);
        let memory = only_group(&root.path().join("memory/isola.scope"));
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).expect("read");
        assert_eq!(
            read(&memory, "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        let pids = only_group(&root.path().join("pids/isola.scope"));
        assert_eq!(read(&pids, "pids.max"), WORKER_PIDS.to_string());
        let joins = group.worker_joins().expect("groups for the worker");
        assert_eq!(
            joins.lines().map(PathBuf::from).collect::<Vec<_>>(),
            [memory.clone(), pids.clone()]
        );
        group.adopt(4242).expect("nothing to adopt");
        assert!(
            !memory.join("cgroup.procs").exists(),
            "the parent moved no one"
        );
        // The worker's side: `0` (itself) into each group's `tasks` (the
        // fake groups are plain directories: the writes move nothing).
        assert_eq!(join_via(&joins, "tasks"), Ok(2));
        assert_eq!(read(&memory, "tasks"), "0");
        assert_eq!(read(&pids, "tasks"), "0");
        // This test process has other threads, so `join` moves it whole.
        assert!(!alone());
        assert_eq!(join(&joins), Ok(2));
        assert_eq!(read(&pids, "cgroup.procs"), "0");
        // A group that is not there is named in the error, and the process
        // leaves the ones it had joined for their parents, where it came
        // from: in all or none.
        let gone = pids.join("gone");
        let err = join_via(
            &format!("{}\n{}", memory.display(), gone.display()),
            "tasks",
        )
        .expect_err("no such group");
        assert!(err.contains(&gone.display().to_string()), "{err}");
        let scope = root.path().join("memory/isola.scope");
        assert_eq!(read(&scope, "tasks"), "0", "moved back out");
        std::fs::remove_file(scope.join("tasks")).expect("rm");
        // A name held by a leftover of an earlier process with this pid is
        // skipped, and the leftover left alone (in another pid namespace
        // that pid may be a live runner's).
        // (A place of its own: the test's groups above are named from
        // the process's count, which other tests move.)
        let place = root.path().join("memory/leftovers.scope");
        std::fs::create_dir(&place).expect("mkdir");
        let count = AtomicU64::new(5);
        let name = |n: u64| place.join(format!("isola-{}-{n}", std::process::id()));
        std::fs::create_dir(name(0)).expect("a leftover");
        assert_eq!(
            new_group_dir(&place, 0, &count).expect("a free name"),
            name(5)
        );
        assert!(name(0).exists(), "the leftover stays");
        assert_eq!(
            new_group_dir(&place, 1, &count).expect("a free name"),
            name(1)
        );
        for n in [0, 1, 5] {
            std::fs::remove_dir(name(n)).expect("rm");
        }
        std::fs::remove_dir(&place).expect("rm");
        clear(&joins);
        drop(group);
        assert!(!memory.exists() && !pids.exists(), "removed when dropped");
    }

    #[test]
    fn on_v2_groups_go_under_a_group_that_enables_the_controllers() {
        let (root, mountinfo) = fake_v2("cpu memory pids");
        let cgroups =
            Cgroups::find_in("0::/user.slice/isola.scope\n", &mountinfo, &Controller::ALL)
                .expect("a place");
        assert_eq!(
            cgroups.places,
            [Place {
                version: Version::V2,
                dir: root.path().join("user.slice/isola.scope"),
                controllers: vec![Controller::Memory, Controller::Pids, Controller::Cpu],
            }]
        );
        assert!(cgroups.missing().is_empty());
    }

    #[test]
    fn on_v2_a_group_that_can_enable_nothing_puts_them_beside_it() {
        // A plain directory stands for the group; writing its
        // `cgroup.subtree_control` succeeds there, so make it a directory
        // to stand for the kernel's refusal (a group with processes).
        let (root, mountinfo) = fake_v2("");
        let own = root.path().join("user.slice/isola.scope");
        std::fs::remove_file(own.join("cgroup.subtree_control")).expect("rm");
        std::fs::create_dir(own.join("cgroup.subtree_control")).expect("mkdir");
        let cgroups =
            Cgroups::find_in("0::/user.slice/isola.scope\n", &mountinfo, &Controller::ALL)
                .expect("a place");
        assert_eq!(cgroups.places[0].dir, root.path().join("user.slice"));

        // The groups it makes there get the limits, and the parent moves
        // the worker in: a thread cannot move alone between v2 groups.
        let mut group = cgroups
            .make(Some(quota_of(0.5)), 64 << 20)
            .expect("a group");
        let dir = only_group(&root.path().join("user.slice"));
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("read");
        assert_eq!(read("pids.max"), WORKER_PIDS.to_string());
        assert_eq!(read("cpu.max"), format!("50000 {CPU_PERIOD}"));
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(group.worker_joins(), None);
        group.adopt(4242).expect("adopt");
        assert_eq!(read("cgroup.procs"), "4242");
        group.limit_memory(96 << 20).expect("memory");
        assert_eq!(read("memory.max"), (96u64 << 20).to_string());
        // The same limit again is not written again.
        std::fs::write(dir.join("memory.max"), "unchanged").expect("write");
        group.limit_memory(96 << 20).expect("memory");
        assert_eq!(read("memory.max"), "unchanged");
        std::fs::write(dir.join("memory.max"), (96u64 << 20).to_string()).expect("write");
        std::fs::write(dir.join("memory.events"), "max 3\noom 1\noom_kill 1\n").expect("write");
        std::fs::write(dir.join("pids.events"), "max 0\n").expect("write");
        let events = group.events();
        assert_eq!(events.oom_kills, 1);
        assert_eq!(events.memory_max, Some(96 << 20));
        assert_eq!(events.pids_max_hits, 0);
        // Kept for another task: what came before is not that task's.
        std::fs::write(dir.join("pids.events"), "max 2\n").expect("write");
        group.settle();
        std::fs::write(dir.join("pids.events"), "max 3\n").expect("write");
        let events = group.events();
        assert_eq!((events.oom_kills, events.pids_max_hits), (0, 1));
    }

    /// Without a CPU quota, the cpu controller is neither looked for nor
    /// enabled, and a worker's group has no `cpu` limit.
    #[test]
    fn without_a_cpu_quota_groups_have_no_cpu_controller() {
        let (root, mountinfo) = fake_v2("");
        let own = root.path().join("user.slice/isola.scope");
        let cgroups = Cgroups::find_in(
            "0::/user.slice/isola.scope\n",
            &mountinfo,
            &[Controller::Memory, Controller::Pids],
        )
        .expect("a place");
        assert_eq!(
            cgroups.places[0].controllers,
            [Controller::Memory, Controller::Pids]
        );
        assert!(cgroups.missing().is_empty());
        assert_eq!(
            std::fs::read_to_string(own.join("cgroup.subtree_control")).expect("read"),
            "+memory +pids"
        );
        let _group = cgroups.make(None, 64 << 20).expect("a group");
        let dir = only_group(&own);
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max")).expect("read"),
            WORKER_PIDS.to_string()
        );
        assert!(!dir.join("cpu.max").exists());
        assert_eq!(
            (quota_of(1.0), quota_of(0.004), quota_of(2.5)),
            (100_000, 1000, 250_000)
        );
    }

    #[test]
    fn without_a_v2_group_offering_the_controllers_there_is_no_place() {
        let (_root, mountinfo) = fake_v2("");
        let err = Cgroups::find_in("0::/elsewhere\n", &mountinfo, &Controller::ALL)
            .expect_err("no place");
        assert!(err.contains("offers none of memory, pids, cpu"), "{err}");
        let err = Cgroups::find_in("0::/\n", "", &Controller::ALL).expect_err("no mount");
        assert!(err.contains("no cgroup v2 file system"), "{err}");
    }
}
