//! The rulebook of a valid [`TaskSpec`], written once.
//!
//! Every entry point that takes a spec asks [`problems`]: the runner before
//! it starts a task, `TaskSet::new` for sets built in code,
//! and the `tasks.toml` parser, which reports each problem at the position
//! of the key it names. A spec one of them accepts, the others accept too.
//!
//! Only what can be told from the spec alone is in [`problems`]. The
//! runner's per-task memory ceiling (`RunnerConfig::max_memory_per_task`)
//! is a rule here too, [`ceiling_problem`], given the ceiling: the runner
//! applies it with its own, and `tasks.toml` (so `isola check`) with the
//! default one that `isola up` runs with. What needs more stays with
//! whoever has it: whether a shared memory group exists and runs the
//! task's module (compared by content hash, at run time in
//! `group::same_module` and in the config the same way), and the host's
//! file system ([`host_problems`]). The restart policy is not part of a
//! spec; its rules are [`restart_problems`].

use bytesize::ByteSize;

use crate::error::Error;
use crate::spec::{Isolation, Stdin, TaskSpec};

/// The IPC frame limit: the largest frame a parent and its worker process
/// exchange. Every message of a process task travels in one frame, after a
/// one-byte kind, so a process task's `limits.max_message_size` must be
/// below this.
///
/// Must stay equal to the IPC protocol's `MAX_FRAME` (which is defined
/// from this constant), or the rule would accept messages the pipe refuses.
pub(crate) const MAX_PROCESS_MESSAGE: u64 = 64 << 20;

/// Room kept in a process task's run frame for what travels beside the spec
/// (the cache directory, the program id, the OS limits) and for inherited
/// variables, which are resolved into `env` only after the rules ran. 4 MiB
/// covers any ordinary environment (Linux caps a process's arguments and
/// environment together at a quarter of its stack limit, 2 MiB by default).
const RUN_FRAME_HEADROOM: u64 = 4 << 20;

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The field at fault as a path, the same names as
    /// [`Error::InvalidSpec`] uses: `env.NAME`, `args[2]`, `dirs[0].guest`,
    /// `limits.message_queue`, `reuse_worker`.
    pub(crate) field: String,
    /// A bad value, or two fields that cannot be used together.
    pub(crate) kind: ProblemKind,
    /// What is wrong, and where possible how to fix it.
    pub(crate) message: String,
}

/// The kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProblemKind {
    /// The value cannot work, whatever else the spec says (a NUL in an
    /// argument, a zero queue).
    InvalidValue,
    /// The value cannot work together with another field, usually the
    /// isolation (`reuse_worker` on a thread task).
    Conflict,
}

impl Problem {
    /// A problem with a value that cannot work on its own.
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            kind: ProblemKind::InvalidValue,
            message: message.into(),
        }
    }

    /// A problem with a value that cannot work with another field.
    fn conflict(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            kind: ProblemKind::Conflict,
            message: message.into(),
        }
    }

    /// A NUL character in a string the guest receives.
    fn nul(field: impl Into<String>) -> Problem {
        Problem::invalid(field, "contains a NUL character")
    }

    /// The library's error for this problem: [`Error::InvalidSpec`] naming
    /// the field.
    pub(crate) fn into_error(self) -> Error {
        Error::InvalidSpec {
            field: self.field,
            message: self.message,
        }
    }
}

/// Every problem of `spec` that can be told from the spec alone (no file
/// system, no runner), in field order; the one about the spec's size as a
/// whole (a process task's spec must fit the frame that carries it to its
/// worker) comes last. Empty for a valid spec.
pub(crate) fn problems(spec: &TaskSpec) -> Vec<Problem> {
    let mut found = Vec::new();
    let process = spec.isolation == Isolation::Process;

    // WASI preview1 hands arguments and variables to the guest as C
    // strings: a NUL would silently cut one short (the guest would see less
    // than, or other than, what was granted). Refuse it instead.
    if spec.argv0.as_deref().is_some_and(has_nul) {
        found.push(Problem::nul("argv0"));
    }
    for (i, arg) in spec.args.iter().enumerate() {
        if has_nul(arg) {
            found.push(Problem::nul(format!("args[{i}]")));
        }
    }
    for (name, value) in &spec.env {
        // A name with `=` would read back as another variable (`A=B` with
        // value `c` is `A` with value `B=c`), an empty one as none.
        if name.is_empty() || name.contains('=') {
            found.push(Problem::invalid(
                env_field(name),
                "a variable name must be non-empty and contain no `=`",
            ));
        } else if has_nul(name) || has_nul(value) {
            found.push(Problem::nul(env_field(name)));
        }
    }
    for (i, name) in spec.inherit_env.iter().enumerate() {
        let field = format!("inherit_env[{i}]");
        if name.is_empty() || name.contains('=') || has_nul(name) {
            found.push(Problem::invalid(
                field,
                format!(
                    "`{}` is not a variable name (it must be non-empty and contain no `=` or NUL)",
                    printable(name)
                ),
            ));
        } else if spec.env.contains_key(name) {
            // Thread tasks would give the guest both (the explicit value
            // first), process tasks only the host's: the outcome would
            // depend on the isolation.
            found.push(Problem::conflict(
                field,
                format!(
                    "`{}` also has a value in `env`: give a variable a value or pass the host's through, not both",
                    printable(name)
                ),
            ));
        }
    }
    for (i, dir) in spec.dirs.iter().enumerate() {
        match dir.guest.as_deref() {
            Some("") => found.push(Problem::invalid(
                format!("dirs[{i}].guest"),
                "the guest path is empty",
            )),
            // Preopen names reach a preview1 guest as C strings too.
            Some(guest) if has_nul(guest) => found.push(Problem::nul(format!("dirs[{i}].guest"))),
            _ => {}
        }
    }
    let limits = &spec.limits;
    // A zero budget or deadline stops the guest before its first
    // instruction: always a mistake (no limit is `None`, not zero).
    if limits.fuel == Some(0) {
        found.push(Problem::invalid("limits.fuel", "must be at least 1"));
    }
    if limits.timeout.is_some_and(|t| t.is_zero()) {
        found.push(Problem::invalid(
            "limits.timeout",
            "must be longer than zero",
        ));
    }
    // A bounded channel cannot hold zero messages (Tokio's panics); the
    // runtime would quietly make it one, which is not what was asked.
    if limits.message_queue == 0 {
        found.push(Problem::invalid(
            "limits.message_queue",
            "must be at least 1",
        ));
    }
    if process && limits.max_message_size.as_u64() >= MAX_PROCESS_MESSAGE {
        found.push(Problem::conflict(
            "limits.max_message_size",
            format!(
                "process tasks carry messages in IPC frames of at most {}: use a smaller \
                 size or `isolation = \"thread\"`",
                ByteSize(MAX_PROCESS_MESSAGE)
            ),
        ));
    }

    if let Some(group) = &spec.shared_group
        && process
    {
        found.push(Problem::conflict(
            "isolation",
            format!(
                "shared memory group `{}` needs `isolation = \"thread\"`: a memory shared with \
                 the host cannot be shared with another process",
                printable(group)
            ),
        ));
    }
    if spec.reuse_worker && !process {
        found.push(Problem::conflict(
            "reuse_worker",
            "only process tasks have a worker to reuse; set `isolation = \"process\"` or leave \
             `reuse_worker` out",
        ));
    }
    if let Some(sandbox) = spec.sandbox
        && !process
    {
        found.push(Problem::conflict(
            "sandbox",
            format!(
                "`sandbox = \"{sandbox}\"` is about a worker process; a thread task runs in the \
                 host process, which no OS sandbox surrounds: set `isolation = \"process\"` or \
                 leave `sandbox` out"
            ),
        ));
    }
    for (i, name) in spec.host_functions.iter().enumerate() {
        if name.is_empty() || has_nul(name) {
            found.push(Problem::invalid(
                format!("host_functions[{i}]"),
                "a host function's name must be non-empty and contain no NUL",
            ));
        } else if name.starts_with(crate::kv::PREFIX) {
            found.push(Problem::invalid(
                format!("host_functions[{i}]"),
                format!(
                    "`{}`: names that start with `kv.` are Isola's key-value store, granted with \
                     `kv` (a database file) instead",
                    printable(name)
                ),
            ));
        }
    }
    if process {
        found.extend(data_problem(spec));
        found.extend(run_frame_problem(spec));
    }
    found
}

/// The problem of a spec that grants a host function `functions` does not
/// have: the first such name, at its index.
pub(crate) fn host_function_problem(
    spec: &TaskSpec,
    functions: &crate::host_fn::HostFunctions,
) -> Option<Problem> {
    spec.host_functions
        .iter()
        .enumerate()
        .find(|(_, name)| !functions.contains(name))
        .map(|(i, name)| {
            Problem::invalid(
                format!("host_functions[{i}]"),
                format!(
                    "no host function `{}` is registered on this runner (RunnerConfig::host_functions)",
                    printable(name)
                ),
            )
        })
}

/// The problems of the grants that refer to the host, in field order: each
/// `dirs[i].host` must be a directory, and a [`Stdin::File`] must open (and
/// not be a directory). Reads the file system, so callers ask [`problems`]
/// first. Opening a FIFO as stdin waits for its writer, as the task itself
/// would.
pub(crate) fn host_problems(spec: &TaskSpec) -> Vec<Problem> {
    let mut found = Vec::new();
    for (i, dir) in spec.dirs.iter().enumerate() {
        if !dir.host.is_dir() {
            found.push(Problem::invalid(
                format!("dirs[{i}].host"),
                format!("`{}` is not a directory", dir.host.display()),
            ));
        }
    }
    if let Stdin::File(path) = &spec.stdin {
        match std::fs::File::open(path).and_then(|file| file.metadata()) {
            Err(err) => found.push(Problem::invalid(
                "stdin",
                format!("cannot open `{}`: {err}", path.display()),
            )),
            // Opening a directory succeeds on Linux; only reading fails,
            // which the guest would see as a broken stdin.
            Ok(meta) if meta.is_dir() => found.push(Problem::invalid(
                "stdin",
                format!("`{}` is a directory, not a file", path.display()),
            )),
            Ok(_) => {}
        }
    }
    found
}

/// Checks `spec` against the whole rulebook: the first of its
/// [`problems`], else the first of its [`host_problems`] (the file system
/// is only looked at for a spec that is otherwise valid).
///
/// # Errors
///
/// [`Error::InvalidSpec`] naming the field of the first problem found.
pub(crate) fn check(spec: &TaskSpec) -> Result<(), Error> {
    let first = problems(spec)
        .into_iter()
        .next()
        .or_else(|| host_problems(spec).into_iter().next());
    match first {
        Some(problem) => Err(problem.into_error()),
        None => Ok(()),
    }
}

/// The problem of a spec that asks for more linear memory than a runner
/// gives one task (`RunnerConfig::max_memory_per_task`, here
/// `max_memory_per_task` bytes), if it does. The runner checks it with its
/// own ceiling before a task starts; the `tasks.toml` reader with the
/// default runner's, which is what `isola up` runs with, so `isola check`
/// refuses what `isola up` would.
pub(crate) fn ceiling_problem(spec: &TaskSpec, max_memory_per_task: u64) -> Option<Problem> {
    (spec.limits.max_memory.as_u64() > max_memory_per_task).then(|| {
        Problem::invalid(
            "limits.max_memory",
            format!(
                "{} is more than the runner allows per task ({}, its `max_memory_per_task`)",
                spec.limits.max_memory,
                ByteSize(max_memory_per_task)
            ),
        )
    })
}

/// The problems of a task's restart policy, which lives in the task set
/// rather than the spec. `on_crash`: the task is restarted after a crash
/// (`restart = "on-crash"`); `max_restarts_set`: the task itself sets
/// `max_restarts` (a `RestartPolicy` built in code always
/// carries one, so it passes `false`).
pub(crate) fn restart_problems(
    isolation: Isolation,
    on_crash: bool,
    max_restarts_set: bool,
) -> Vec<Problem> {
    const THREAD: &str = "restarts apply only to process tasks (a thread task cannot crash); \
                          set `isolation = \"process\"`";
    let mut found = Vec::new();
    match isolation {
        Isolation::Thread => {
            if on_crash {
                found.push(Problem::conflict("restart", THREAD));
            }
            if max_restarts_set {
                found.push(Problem::conflict("max_restarts", THREAD));
            }
        }
        Isolation::Process => {
            if max_restarts_set && !on_crash {
                found.push(Problem::conflict(
                    "max_restarts",
                    "`max_restarts` needs `restart = \"on-crash\"`",
                ));
            }
        }
    }
    found
}

/// The field name of the variable `name` of [`TaskSpec::env`]: `env.NAME`,
/// with control characters escaped (`env.A\u{0}B`) so that a name cannot
/// garble the line an error is printed on.
pub(crate) fn env_field(name: &str) -> String {
    format!("env.{}", printable(name))
}

/// Whether `text` has a NUL character.
fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// `text` with its control characters escaped, for messages.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The problem of a process task whose spec would not fit the run frame
/// that carries it (as JSON) to its worker, naming its largest part. Its
/// `input` and stdin bytes are not in the frame: they follow it as raw
/// data frames (the protocol's `FollowingData`), of any size
/// [`data_problem`] allows.
fn run_frame_problem(spec: &TaskSpec) -> Option<Problem> {
    let limit = MAX_PROCESS_MESSAGE - RUN_FRAME_HEADROOM;
    let light = without_byte_arrays(spec);
    // Nearly every spec is far below the limit: a cheap upper bound spares
    // measuring it.
    if json_bound(&light) <= limit {
        return None;
    }
    // The exact length, encoded as the run frame encodes it (paths that
    // are not UTF-8 as byte arrays). `None` (not encodable) cannot happen
    // with paths as bytes; if it did, the run frame would fail to encode
    // too and the task end `Failed` saying so.
    let size = json_len(&crate::wire::SpecOnWire(&light))?;
    if size <= limit {
        return None;
    }
    let parts = [
        ("args", json_len(&spec.args).unwrap_or(0)),
        ("env", json_len(&spec.env).unwrap_or(0)),
    ];
    let field = parts
        .iter()
        .max_by_key(|(_, len)| *len)
        .map_or("args", |(field, _)| *field);
    Some(Problem::conflict(
        field,
        format!(
            "a process task's spec travels to its worker in one IPC frame, where it may take \
             {} as JSON, and this one takes {}: pass large data in a file under `dirs`, as \
             `input` or as messages, or use `isolation = \"thread\"`",
            ByteSize(limit),
            ByteSize(size)
        ),
    ))
}

/// The problem of a process task whose `input` and stdin bytes do not fit
/// its worker's OS memory limit, which holds them before the task starts:
/// refused up front, naming the limit, rather than ending as a worker out
/// of memory.
fn data_problem(spec: &TaskSpec) -> Option<Problem> {
    let input = spec.input.as_ref().map_or(0, |bytes| bytes.len() as u64);
    let stdin = match &spec.stdin {
        Stdin::Bytes(bytes) => bytes.len() as u64,
        _ => 0,
    };
    let limit = spec.limits.process_memory_or_default();
    let data = input.saturating_add(stdin);
    if data < limit {
        return None;
    }
    Some(Problem::conflict(
        if input >= stdin { "input" } else { "stdin" },
        format!(
            "a process task's worker holds its `input` and stdin bytes ({}) in memory, which \
             its OS memory limit of {} (`limits.process_memory`, by default `max_memory` + \
             512 MiB) cannot: raise the limit, or pass the data in a file under `dirs`",
            ByteSize(data),
            ByteSize(limit)
        ),
    ))
}

/// `spec` with `input` and `stdin`'s bytes replaced by empty arrays, the
/// rest unchanged (every field listed, so that a new one is not forgotten
/// by the frame rule).
fn without_byte_arrays(spec: &TaskSpec) -> TaskSpec {
    TaskSpec {
        wasm: spec.wasm.clone(),
        argv0: spec.argv0.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        inherit_env: spec.inherit_env.clone(),
        dirs: spec.dirs.clone(),
        stdin: match &spec.stdin {
            Stdin::Bytes(_) => Stdin::Bytes(Vec::new()),
            other => other.clone(),
        },
        stdout: spec.stdout,
        stderr: spec.stderr,
        input: spec.input.as_ref().map(|_| Vec::new()),
        limits: spec.limits.clone(),
        isolation: spec.isolation,
        shared_group: spec.shared_group.clone(),
        reuse_worker: spec.reuse_worker,
        sandbox: spec.sandbox,
        host_functions: spec.host_functions.clone(),
        kv: spec.kv.clone(),
    }
}

/// The length of `bytes` as a JSON array of numbers (`[0,255]`), which is
/// how serde encodes a `Vec<u8>`.
#[cfg(test)]
fn bytes_json_len(bytes: &[u8]) -> u64 {
    let digits: u64 = bytes
        .iter()
        .map(|&b| match b {
            0..=9 => 1,
            10..=99 => 2,
            _ => 3,
        })
        .sum();
    let commas = (bytes.len() as u64).saturating_sub(1);
    2 + digits + commas
}

/// An upper bound of the length of `spec` as JSON, without encoding it: a
/// byte array takes at most 4 bytes per byte (`255,`), a string at most 6
/// per byte (`\u001f`) and 3 around it (quotes, comma; a path that is not
/// UTF-8 travels as a byte array, which takes less), a directory grant
/// at most 64 for its keys, and the scalar fields together well under
/// 4 KiB (field names, numbers of at most 20 digits, a humantime timeout).
fn json_bound(spec: &TaskSpec) -> u64 {
    let text = |len: usize| (len as u64).saturating_mul(6).saturating_add(3);
    let bytes = |len: usize| (len as u64).saturating_mul(4).saturating_add(2);
    let mut total: u64 = 4096;
    let mut add = |n: u64| total = total.saturating_add(n);
    add(text(spec.wasm.as_os_str().len()));
    add(text(spec.argv0.as_ref().map_or(0, String::len)));
    for arg in &spec.args {
        add(text(arg.len()));
    }
    for (name, value) in &spec.env {
        add(text(name.len()));
        add(text(value.len()));
    }
    for name in &spec.inherit_env {
        add(text(name.len()));
    }
    for dir in &spec.dirs {
        add(64);
        add(text(dir.host.as_os_str().len()));
        add(text(dir.guest.as_ref().map_or(0, String::len)));
    }
    match &spec.stdin {
        Stdin::Bytes(data) => add(bytes(data.len())),
        Stdin::File(path) => add(text(path.as_os_str().len())),
        Stdin::Closed | Stdin::Inherit => {}
    }
    add(bytes(spec.input.as_ref().map_or(0, Vec::len)));
    add(text(spec.shared_group.as_ref().map_or(0, String::len)));
    total
}

/// The length of `value` as JSON, counted without building it; `None` if
/// it cannot be encoded.
fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> Option<u64> {
    /// A writer that only counts.
    struct Count(u64);

    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).ok()?;
    Some(count.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::DirGrant;

    /// A spec with nothing wrong with it.
    fn spec() -> TaskSpec {
        TaskSpec::new("guest.wasm")
    }

    /// The only problem of `spec`, checked to be of `kind` at `field`.
    fn only(spec: &TaskSpec, field: &str, kind: ProblemKind) -> Problem {
        let found = problems(spec);
        assert_eq!(found.len(), 1, "{found:#?}");
        let problem = found.into_iter().next().expect("one problem");
        assert_eq!(
            (problem.field.as_str(), problem.kind),
            (field, kind),
            "{problem:?}"
        );
        problem
    }

    /// The default spec, and a spec that uses every field sensibly, are valid.
    #[test]
    fn valid_specs_have_no_problem() {
        assert_eq!(problems(&spec()), Vec::<Problem>::new());
        let mut full = spec();
        full.argv0 = Some("prog".into());
        full.args = vec!["a".into(), String::new(), "é🦀".into()];
        full.env.insert("MODE".into(), "a=b".into());
        full.inherit_env = vec!["HOME".into()];
        full.dirs = vec![DirGrant {
            host: "/tmp".into(),
            guest: Some("/data".into()),
            writable: true,
        }];
        full.input = Some(vec![0; 1024]);
        full.limits.fuel = Some(1);
        full.limits.timeout = Some(Duration::from_nanos(1));
        full.limits.message_queue = 1;
        full.limits.max_message_size = ByteSize(MAX_PROCESS_MESSAGE - 1);
        full.isolation = Isolation::Process;
        full.reuse_worker = true;
        assert_eq!(problems(&full), Vec::<Problem>::new());
        let mut grouped = spec();
        grouped.shared_group = Some("g".into());
        grouped.limits.max_message_size = ByteSize::gib(1);
        assert_eq!(
            problems(&grouped),
            Vec::<Problem>::new(),
            "a thread task's messages are not framed"
        );
    }

    /// NULs in what reaches the guest as C strings.
    #[test]
    fn nul_characters_are_refused_where_the_guest_gets_c_strings() {
        let mut s = spec();
        s.argv0 = Some("a\0".into());
        let p = only(&s, "argv0", ProblemKind::InvalidValue);
        assert_eq!(p.message, "contains a NUL character");

        let mut s = spec();
        s.args = vec!["ok".into(), "ok".into(), "x\0y".into()];
        only(&s, "args[2]", ProblemKind::InvalidValue);

        let mut s = spec();
        s.env.insert("K".into(), "v\0".into());
        only(&s, "env.K", ProblemKind::InvalidValue);

        let mut s = spec();
        s.env.insert("A\0B".into(), "v".into());
        only(&s, "env.A\\u{0}B", ProblemKind::InvalidValue);

        let mut s = spec();
        s.dirs = vec![DirGrant {
            host: "/tmp".into(),
            guest: Some("/d\0".into()),
            writable: false,
        }];
        only(&s, "dirs[0].guest", ProblemKind::InvalidValue);
    }

    /// Variable names: given ones, inherited ones, and both at once.
    #[test]
    fn variable_names_must_be_names() {
        for name in ["", "A=B"] {
            let mut s = spec();
            s.env.insert(name.into(), "v".into());
            let p = only(&s, &format!("env.{name}"), ProblemKind::InvalidValue);
            assert_eq!(
                p.message,
                "a variable name must be non-empty and contain no `=`"
            );
        }
        for name in ["", "A=B", "A\0"] {
            let mut s = spec();
            s.inherit_env = vec!["HOME".into(), name.into()];
            only(&s, "inherit_env[1]", ProblemKind::InvalidValue);
        }
        let mut s = spec();
        s.env.insert("HOME".into(), "/x".into());
        s.inherit_env = vec!["PATH".into(), "HOME".into()];
        let p = only(&s, "inherit_env[1]", ProblemKind::Conflict);
        assert!(
            p.message.starts_with("`HOME` also has a value in `env`"),
            "{p:?}"
        );
    }

    /// An empty guest path names no directory.
    #[test]
    fn an_empty_guest_path_is_refused() {
        let mut s = spec();
        s.dirs = vec![
            DirGrant {
                host: "/tmp".into(),
                guest: None,
                writable: false,
            },
            DirGrant {
                host: "/tmp".into(),
                guest: Some(String::new()),
                writable: false,
            },
        ];
        let p = only(&s, "dirs[1].guest", ProblemKind::InvalidValue);
        assert_eq!(p.message, "the guest path is empty");
    }

    /// Limits that stop a task before it starts, or that the runtime cannot honour.
    #[test]
    fn limits_that_cannot_work_are_refused() {
        let mut s = spec();
        s.limits.fuel = Some(0);
        assert_eq!(
            only(&s, "limits.fuel", ProblemKind::InvalidValue).message,
            "must be at least 1"
        );

        let mut s = spec();
        s.limits.timeout = Some(Duration::ZERO);
        assert_eq!(
            only(&s, "limits.timeout", ProblemKind::InvalidValue).message,
            "must be longer than zero"
        );

        let mut s = spec();
        s.limits.message_queue = 0;
        assert_eq!(
            only(&s, "limits.message_queue", ProblemKind::InvalidValue).message,
            "must be at least 1"
        );

        let mut s = spec();
        s.isolation = Isolation::Process;
        s.limits.max_message_size = ByteSize(MAX_PROCESS_MESSAGE);
        only(&s, "limits.max_message_size", ProblemKind::Conflict);
        s.isolation = Isolation::Thread;
        assert_eq!(
            problems(&s),
            Vec::<Problem>::new(),
            "thread tasks take any message size"
        );
    }

    /// Fields that need the other isolation.
    #[test]
    fn isolation_conflicts_name_the_field_to_change() {
        let mut s = spec();
        s.reuse_worker = true;
        only(&s, "reuse_worker", ProblemKind::Conflict);

        let mut s = spec();
        s.shared_group = Some("g".into());
        s.isolation = Isolation::Process;
        let p = only(&s, "isolation", ProblemKind::Conflict);
        assert!(p.message.contains("shared memory group `g`"), "{p:?}");

        // Every policy, even `off`: on a thread task it says nothing true.
        for policy in [
            crate::Sandbox::On,
            crate::Sandbox::Off,
            crate::Sandbox::Required,
        ] {
            let mut s = spec();
            s.sandbox = Some(policy);
            let p = only(&s, "sandbox", ProblemKind::Conflict);
            assert!(
                p.message.contains(&format!("`sandbox = \"{policy}\"`")),
                "{p:?}"
            );
            s.isolation = Isolation::Process;
            assert_eq!(
                problems(&s),
                Vec::<Problem>::new(),
                "a process task takes {policy}"
            );
        }
    }

    /// Paths that are not UTF-8 are fine at both isolations: a process
    /// task's travel to its worker as bytes (issue 18, item 4). This rule
    /// once refused them for process tasks.
    #[test]
    #[cfg(unix)]
    fn paths_need_not_be_utf8_at_either_isolation() {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        let mut s = spec();
        s.wasm = bad.clone();
        s.dirs = vec![DirGrant {
            host: bad.clone(),
            guest: Some("/d".into()),
            writable: false,
        }];
        s.stdin = Stdin::File(bad);
        for isolation in [Isolation::Thread, Isolation::Process] {
            s.isolation = isolation;
            assert_eq!(problems(&s), Vec::<Problem>::new(), "{isolation}");
        }
        // The frame rule measures such a spec as it is sent, and still
        // catches one too large for the frame.
        s.args = vec!["\u{1}".repeat(11 << 20)];
        only(&s, "args", ProblemKind::Conflict);
    }

    /// A process task's spec must fit the frame that carries it; its input
    /// and stdin bytes follow the frame, within its worker's memory limit.
    #[test]
    fn a_process_task_spec_must_fit_its_run_frame() {
        let mut s = spec();
        // 11 MiB of `\u0001`: 66 MiB as JSON.
        s.args = vec!["\u{1}".repeat(11 << 20)];
        assert_eq!(
            problems(&s),
            Vec::<Problem>::new(),
            "thread tasks are not framed"
        );
        s.isolation = Isolation::Process;
        let p = only(&s, "args", ProblemKind::Conflict);
        assert!(p.message.contains("IPC frame"), "{p:?}");

        // Bulk bytes are not in the frame: 80 MiB of input and stdin fit.
        s.args = Vec::new();
        s.input = Some(vec![255; 40 << 20]);
        s.stdin = Stdin::Bytes(vec![0; 40 << 20]);
        assert_eq!(
            problems(&s),
            Vec::<Problem>::new(),
            "data follows the frame"
        );

        // But they must fit the worker's memory limit, named.
        s.limits.process_memory = Some(ByteSize::mib(64));
        let p = only(&s, "input", ProblemKind::Conflict);
        assert!(p.message.contains("limits.process_memory"), "{p:?}");
        s.input = Some(vec![1; 30 << 20]);
        only(&s, "stdin", ProblemKind::Conflict);
        s.isolation = Isolation::Thread;
        assert_eq!(
            problems(&s),
            Vec::<Problem>::new(),
            "thread tasks need no worker"
        );
    }

    /// The bound that spares encoding small specs is an upper bound.
    #[test]
    fn the_json_bound_is_an_upper_bound() {
        let mut s = spec();
        s.argv0 = Some("\u{1}\"\\".into());
        s.args = vec!["\n".repeat(100), String::new()];
        s.env.insert("\u{7f}".into(), "\u{1f}".repeat(50));
        s.inherit_env = vec!["X".into()];
        s.dirs = vec![DirGrant {
            host: "/".into(),
            guest: Some("\t".into()),
            writable: true,
        }];
        s.stdin = Stdin::Bytes(vec![255; 300]);
        s.input = Some(vec![200; 300]);
        s.limits.timeout = Some(Duration::MAX);
        s.limits.fuel = Some(u64::MAX);
        s.limits.max_output = Some(ByteSize(u64::MAX));
        s.limits.process_memory = Some(ByteSize(u64::MAX));
        s.limits.max_messages = Some(u64::MAX);
        s.limits.message_queue = usize::MAX;
        s.shared_group = Some("\u{0}".repeat(10));
        let len = json_len(&s).expect("encodable");
        assert!(json_bound(&s) >= len, "{} < {len}", json_bound(&s));
        // The frame rule's arithmetic for byte arrays matches serde's.
        let light = json_len(&without_byte_arrays(&s)).expect("encodable");
        assert_eq!(
            light + (bytes_json_len(&[255; 300]) - 2) + (bytes_json_len(&[200; 300]) - 2),
            len
        );
        assert_eq!(bytes_json_len(&[]), 2);
        assert_eq!(
            bytes_json_len(&[0, 9, 10, 99, 100, 255]),
            2 + 1 + 1 + 2 + 2 + 3 + 3 + 5
        );
    }

    /// Every fault of a spec is reported, in field order.
    #[test]
    fn every_problem_is_listed_at_once_in_field_order() {
        let mut s = spec();
        s.args = vec!["\0".into()];
        s.env.insert("=".into(), "v".into());
        s.inherit_env = vec![String::new()];
        s.dirs = vec![DirGrant {
            host: "/tmp".into(),
            guest: Some(String::new()),
            writable: false,
        }];
        s.limits.fuel = Some(0);
        s.limits.message_queue = 0;
        s.reuse_worker = true;
        let found: Vec<(String, ProblemKind)> = problems(&s)
            .into_iter()
            .map(|p| (p.field, p.kind))
            .collect();
        let expected = [
            ("args[0]", ProblemKind::InvalidValue),
            ("env.=", ProblemKind::InvalidValue),
            ("inherit_env[0]", ProblemKind::InvalidValue),
            ("dirs[0].guest", ProblemKind::InvalidValue),
            ("limits.fuel", ProblemKind::InvalidValue),
            ("limits.message_queue", ProblemKind::InvalidValue),
            ("reuse_worker", ProblemKind::Conflict),
        ];
        let expected: Vec<(String, ProblemKind)> = expected
            .iter()
            .map(|(f, k)| ((*f).to_owned(), *k))
            .collect();
        assert_eq!(found, expected);
    }

    /// Grants that refer to the host are checked against it.
    #[test]
    fn host_grants_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("in.txt");
        std::fs::write(&file, "x").expect("write");
        let mut s = spec();
        s.dirs = vec![
            DirGrant {
                host: dir.path().to_owned(),
                guest: None,
                writable: false,
            },
            DirGrant {
                host: dir.path().join("missing"),
                guest: None,
                writable: false,
            },
            DirGrant {
                host: file.clone(),
                guest: None,
                writable: false,
            },
        ];
        s.stdin = Stdin::File(file);
        let fields: Vec<String> = host_problems(&s).into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["dirs[1].host", "dirs[2].host"]);

        s.dirs.clear();
        s.stdin = Stdin::File(dir.path().to_owned());
        let found = host_problems(&s);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "stdin");
        assert!(found[0].message.contains("is a directory"), "{found:?}");

        s.stdin = Stdin::File(dir.path().join("missing"));
        let err = check(&s).expect_err("missing stdin file");
        assert!(
            matches!(&err, Error::InvalidSpec { field, .. } if field == "stdin"),
            "{err:?}"
        );
        assert!(check(&spec()).is_ok());
    }

    /// `check` reports a pure problem before looking at the host.
    #[test]
    fn check_reports_the_first_problem_as_an_invalid_spec() {
        let mut s = spec();
        s.stdin = Stdin::File("/no/such/file".into());
        s.limits.message_queue = 0;
        match check(&s) {
            Err(Error::InvalidSpec { field, message }) => {
                assert_eq!(
                    (field.as_str(), message.as_str()),
                    ("limits.message_queue", "must be at least 1")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Restart policies: thread tasks cannot crash, `max_restarts` needs `on-crash`.
    #[test]
    fn restart_rules() {
        let fields = |found: Vec<Problem>| -> Vec<(String, ProblemKind)> {
            found.into_iter().map(|p| (p.field, p.kind)).collect()
        };
        assert_eq!(
            fields(restart_problems(Isolation::Thread, true, true)),
            [
                ("restart".to_owned(), ProblemKind::Conflict),
                ("max_restarts".to_owned(), ProblemKind::Conflict),
            ]
        );
        assert_eq!(
            fields(restart_problems(Isolation::Process, false, true)),
            [("max_restarts".to_owned(), ProblemKind::Conflict)]
        );
        assert_eq!(
            restart_problems(Isolation::Process, true, true),
            Vec::<Problem>::new()
        );
        assert_eq!(
            restart_problems(Isolation::Thread, false, false),
            Vec::<Problem>::new()
        );
    }

    /// The runner's per-task memory ceiling, at both isolations.
    #[test]
    fn max_memory_over_the_ceiling_is_refused() {
        let ceiling = 4 << 30;
        for isolation in [Isolation::Thread, Isolation::Process] {
            let mut s = spec();
            s.isolation = isolation;
            s.limits.max_memory = ByteSize(ceiling);
            assert_eq!(
                ceiling_problem(&s, ceiling),
                None,
                "the ceiling itself is fine"
            );
            s.limits.max_memory = ByteSize::pib(1);
            let p = ceiling_problem(&s, ceiling).expect("over the ceiling");
            assert_eq!(
                (p.field.as_str(), p.kind),
                ("limits.max_memory", ProblemKind::InvalidValue)
            );
            assert_eq!(
                p.message,
                "1.0 PiB is more than the runner allows per task (4.0 GiB, its `max_memory_per_task`)"
            );
        }
    }

    /// A problem becomes the library's `InvalidSpec` error unchanged.
    #[test]
    fn a_problem_becomes_an_invalid_spec_error() {
        let err = Problem::invalid("limits.fuel", "must be at least 1").into_error();
        assert_eq!(err.to_string(), "invalid `limits.fuel`: must be at least 1");
    }
}
