//! The hostile-guest matrix: every way a guest can misbehave that the
//! sandbox must contain, the limits each runs under, and the exact outcome
//! it must end with. Shared by the integration tests (which assert) and the
//! `make reliability` report (which prints a table).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isola::{
    ByteSize, Isolation, Limit, Limits, Outcome, Output, Runner, Stream, TaskSpec, TrapKind,
};

use crate::{GuestKind, Target, expected_exit, target_dir, targets};

/// The program a case runs.
#[derive(Debug, Clone, Copy)]
pub enum Guest {
    /// A guest built by `make guests`, in both kinds.
    Program(&'static str),
    /// An inline WAT core module (module targets only: a component cannot
    /// be written this way).
    Wat(&'static str),
}

/// One hostile behaviour and how it must end.
pub struct Case {
    /// Short name for tables and messages.
    pub name: &'static str,
    /// The program.
    pub guest: Guest,
    /// Its arguments.
    pub args: &'static [&'static str],
    /// The limits it runs under (a 60 s timeout is added when there is
    /// none: every case must end well before it).
    pub limits: fn() -> Limits,
    /// The expected outcome, for people.
    pub expected: &'static str,
    /// The expected outcome, for the machine.
    pub expect: fn(&Outcome, GuestKind) -> bool,
    /// The test file that already asserts this case, if one does; the
    /// report runs every case regardless.
    pub asserted_in: Option<&'static str>,
}

fn timeout_300ms() -> Limits {
    Limits {
        timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    }
}

fn fuel_5m() -> Limits {
    Limits {
        fuel: Some(5_000_000),
        ..Limits::default()
    }
}

fn memory_64mib() -> Limits {
    Limits {
        max_memory: ByteSize::mib(64),
        ..Limits::default()
    }
}

fn output_1mib() -> Limits {
    Limits {
        max_output: Some(ByteSize::mib(1)),
        ..Limits::default()
    }
}

fn messages_1000() -> Limits {
    Limits {
        max_messages: Some(1000),
        ..Limits::default()
    }
}

fn message_1mib() -> Limits {
    Limits {
        max_message_size: ByteSize::mib(1),
        ..Limits::default()
    }
}

fn is_timeout(o: &Outcome, ms: u64) -> bool {
    *o == Outcome::LimitExceeded {
        limit: Limit::Timeout {
            after: Duration::from_millis(ms),
        },
    }
}

fn is_trap(o: &Outcome, kind: TrapKind) -> bool {
    matches!(o, Outcome::Trapped(t) if t.kind == kind && !t.backtrace.is_empty())
}

/// A core module that grows its table by 100,000 elements until
/// `table.grow` fails, then exits with the number of growths that
/// succeeded. Tables live in host memory outside the linear-memory budget,
/// so the host must bound them.
pub const TABLE_BOMB: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (table $t 0 funcref)
  (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (block $done
      (loop $grow
        (br_if $done
          (i32.eq (table.grow $t (ref.null func) (i32.const 100000)) (i32.const -1)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $grow)))
    (call $exit (local.get $n))))"#;

/// A core module whose memory asks for 4 GiB up front: the memory limit
/// must stop it at instantiation, before any guest code runs.
pub const HUGE_INITIAL_MEMORY: &str = r#"(module
  (memory 65536)
  (func (export "_start")))"#;

/// A core module that grows memory one page at a time, ignoring failures,
/// inside a loop that never yields by a host call.
pub const PAGE_BY_PAGE: &str = r#"(module
  (memory 1)
  (func (export "_start")
    (loop $grow
      (drop (memory.grow (i32.const 1)))
      (br $grow))))"#;

/// A core module that calls `clock_time_get` with clock id 99, which WASI
/// does not define: a bad host call, the guest's fault (issue 18, item 1).
/// It was reported as "Isola itself failed".
pub const BAD_CLOCK: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $clock (i32.const 99) (i64.const 0) (i32.const 8)))))"#;

/// A core module with `count` tables of 1,000,000 funcref elements: far
/// more table memory than any task may hold (issue 18, item 2). The
/// one-shot CLI filled them (790 MiB of host RSS under `--max-memory
/// 64MiB`) where a pooled runner refused the file at load.
pub fn many_huge_tables(count: usize) -> String {
    let tables = vec!["(table 1000000 funcref)"; count].join(" ");
    format!(
        r#"(module {tables} (memory (export "memory") 1)
  (func (export "_start"))
  (func (export "isola_run") (result i32) i32.const 0))"#
    )
}

/// The whole matrix.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "infinite loop",
            guest: Guest::Program("hostile"),
            args: &["loop"],
            limits: timeout_300ms,
            expected: "timeout 300ms",
            expect: |o, _| is_timeout(o, 300),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "infinite loop, fuel",
            guest: Guest::Program("hostile"),
            args: &["loop"],
            limits: fuel_5m,
            expected: "fuel 5000000",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Fuel { budget: 5_000_000 },
                }
            },
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "loop in host calls (1-byte writes)",
            guest: Guest::Program("hostile"),
            args: &["tiny-writes"],
            limits: timeout_300ms,
            expected: "timeout 300ms",
            expect: |o, _| is_timeout(o, 300),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "sleeps past its timeout",
            guest: Guest::Program("hostile"),
            args: &["sleep", "60000"],
            limits: timeout_300ms,
            expected: "timeout 300ms",
            expect: |o, _| is_timeout(o, 300),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "allocation bomb",
            guest: Guest::Program("hostile"),
            args: &["alloc-bomb"],
            limits: memory_64mib,
            expected: "memory 64 MiB",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Memory {
                        max: ByteSize::mib(64),
                    },
                }
            },
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "memory.grow bomb",
            guest: Guest::Program("hostile"),
            args: &["grow-bomb"],
            limits: memory_64mib,
            expected: "memory 64 MiB",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Memory {
                        max: ByteSize::mib(64),
                    },
                }
            },
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "memory.grow page by page (WAT)",
            guest: Guest::Wat(PAGE_BY_PAGE),
            args: &[],
            limits: memory_64mib,
            expected: "memory 64 MiB",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Memory {
                        max: ByteSize::mib(64),
                    },
                }
            },
            asserted_in: None,
        },
        Case {
            name: "4 GiB initial memory (WAT)",
            guest: Guest::Wat(HUGE_INITIAL_MEMORY),
            args: &[],
            limits: memory_64mib,
            expected: "memory 64 MiB",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Memory {
                        max: ByteSize::mib(64),
                    },
                }
            },
            asserted_in: None,
        },
        Case {
            name: "table.grow bomb (WAT)",
            guest: Guest::Wat(TABLE_BOMB),
            args: &[],
            limits: Limits::default,
            // The pool caps a thread task's table at 20,000 elements, a
            // worker's engine at 1,000,000 (state.rs): 0 or 10 growths of
            // 100,000. Either way `table.grow` fails cleanly.
            expected: "exit 0..=10 (table capped)",
            expect: |o, _| matches!(o, Outcome::Exited { code } if (0..=10).contains(code)),
            asserted_in: None,
        },
        Case {
            name: "deep recursion",
            guest: Guest::Program("hostile"),
            args: &["recurse"],
            limits: Limits::default,
            expected: "trap: stack overflow",
            expect: |o, _| is_trap(o, TrapKind::StackOverflow),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "stdout flood",
            guest: Guest::Program("hostile"),
            args: &["flood"],
            limits: output_1mib,
            expected: "output 1 MiB on stdout",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Output {
                        stream: Stream::Stdout,
                        max: ByteSize::mib(1),
                    },
                }
            },
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "stderr flood",
            guest: Guest::Program("hostile"),
            args: &["flood-stderr"],
            limits: output_1mib,
            expected: "output 1 MiB on stderr",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Output {
                        stream: Stream::Stderr,
                        max: ByteSize::mib(1),
                    },
                }
            },
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "message flood, counted",
            guest: Guest::Program("hostile"),
            args: &["post-flood", "32"],
            limits: messages_1000,
            expected: "message count 1000",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::Messages { max: 1000 },
                }
            },
            asserted_in: Some("messages.rs"),
        },
        Case {
            // Nobody reads (`run` drops the receiver): posts are discarded,
            // so the flood neither blocks forever nor grows a buffer; only
            // the clock stops it.
            name: "message flood, nobody reading",
            guest: Guest::Program("hostile"),
            args: &["post-flood", "1024"],
            limits: timeout_300ms,
            expected: "timeout 300ms",
            expect: |o, _| is_timeout(o, 300),
            asserted_in: None,
        },
        Case {
            name: "huge single message",
            guest: Guest::Program("hostile"),
            args: &["huge-post", "8"],
            limits: message_1mib,
            expected: "message size 1 MiB",
            expect: |o, _| {
                *o == Outcome::LimitExceeded {
                    limit: Limit::MessageSize {
                        max: ByteSize::mib(1),
                    },
                }
            },
            asserted_in: Some("messages.rs"),
        },
        Case {
            name: "unreachable",
            guest: Guest::Program("hostile"),
            args: &["unreachable"],
            limits: Limits::default,
            expected: "trap: unreachable",
            expect: |o, _| is_trap(o, TrapKind::Unreachable),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "abort",
            guest: Guest::Program("hostile"),
            args: &["abort"],
            limits: Limits::default,
            expected: "trap: unreachable",
            expect: |o, _| is_trap(o, TrapKind::Unreachable),
            asserted_in: Some("hostile.rs"),
        },
        Case {
            name: "bad WASI call: clock id 99 (WAT)",
            guest: Guest::Wat(BAD_CLOCK),
            args: &[],
            limits: Limits::default,
            expected: "trap: host call, naming it",
            expect: |o, _| {
                matches!(o, Outcome::Trapped(t) if t.kind == TrapKind::HostCall
                    && t.message.contains("clock"))
            },
            asserted_in: Some("guest_faults.rs"),
        },
        Case {
            name: "exit 3",
            guest: Guest::Program("hostile"),
            args: &["exit", "3"],
            limits: Limits::default,
            expected: "exit 3 (component: 1)",
            expect: |o, kind| {
                *o == Outcome::Exited {
                    code: expected_exit(kind, 3),
                }
            },
            asserted_in: Some("library.rs"),
        },
    ]
}

impl Case {
    /// Whether the case runs on `target` (WAT cases are core modules).
    pub fn runs_on(&self, target: Target) -> bool {
        match self.guest {
            Guest::Program(_) => true,
            Guest::Wat(_) => target.kind == GuestKind::Module,
        }
    }

    /// The spec of this case on `target`.
    pub fn spec(&self, target: Target) -> TaskSpec {
        let mut spec = match self.guest {
            Guest::Program(name) => target.spec(name),
            Guest::Wat(text) => {
                let mut spec = TaskSpec::new(wat_module(text));
                spec.isolation = target.isolation;
                spec
            }
        };
        spec.args = self.args.iter().map(|s| s.to_string()).collect();
        spec.limits = (self.limits)();
        spec.stdout = Output::Discard;
        spec.stderr = Output::Discard;
        if spec.limits.timeout.is_none() {
            spec.limits.timeout = Some(BACKSTOP);
        }
        spec
    }

    /// Longest a case may take from spawn to report: its own timeout and
    /// a generous margin for a loaded 2-core machine. A case that needs the
    /// 60 s backstop has failed.
    pub fn deadline(&self) -> Duration {
        (self.limits)().timeout.unwrap_or_default() + Duration::from_secs(20)
    }
}

/// The timeout given to cases without one, so a broken limit fails the
/// test instead of hanging it.
pub const BACKSTOP: Duration = Duration::from_secs(60);

/// Writes the Wasm of `wat` once under the target directory (named by its
/// hash, written to a temp file and renamed, so concurrent tests agree)
/// and returns its path.
pub fn wat_module(wat: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    wat.hash(&mut hasher);
    let dir = target_dir().join("isola-test-wat");
    let path = dir.join(format!("{:016x}.wasm", hasher.finish()));
    if !path.exists() {
        std::fs::create_dir_all(&dir).expect("create the WAT dir");
        let bytes = wat::parse_str(wat).expect("valid WAT");
        let tmp = tempfile::NamedTempFile::new_in(&dir).expect("temp file");
        std::fs::write(tmp.path(), bytes).expect("write wasm");
        tmp.persist(&path).expect("rename wasm");
    }
    path
}

/// How one run of a case went: a row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case.
    pub case: String,
    /// `isolation/kind`, e.g. `process/component`.
    pub target: String,
    /// What should happen.
    pub expected: String,
    /// What happened.
    pub got: String,
    /// From spawn to the report, when a task was timed.
    pub time_to_stop: Option<Duration>,
    /// Whether `got` is what was expected (within the time bound).
    pub ok: bool,
}

/// `isolation/kind` of a target.
pub fn target_name(target: Target) -> String {
    let kind = match target.kind {
        GuestKind::Module => "module",
        GuestKind::Component => "component",
    };
    let isolation = match target.isolation {
        Isolation::Thread => "thread",
        Isolation::Process => "process",
    };
    format!("{isolation}/{kind}")
}

/// Runs `case` on `target` and reports how it ended and how long it took.
pub async fn run_case(runner: &Runner, case: &Case, target: Target) -> Row {
    let started = Instant::now();
    let (got, ok, time) = match runner.spawn(case.spec(target)).await {
        Ok(handle) => {
            let report = handle.wait().await;
            let time = started.elapsed();
            let ok = (case.expect)(&report.outcome, target.kind) && time <= case.deadline();
            (report.outcome.to_string(), ok, Some(time))
        }
        Err(err) => (format!("did not start: {err}"), false, None),
    };
    Row {
        case: case.name.into(),
        target: target_name(target),
        expected: case.expected.into(),
        got,
        time_to_stop: time,
        ok,
    }
}

/// Runs `exit N` for every N in 0..=255 on `target`, 16 tasks at a time,
/// and checks each code arrives: exactly for a module, as 0 or 1 for a
/// preview2 component (WASI 0.2 can only report success or failure).
pub async fn exit_codes(runner: &Runner, target: Target) -> Row {
    let started = Instant::now();
    let program = runner
        .load(crate::guest("hostile", target.kind))
        .await
        .expect("load hostile");
    let mut running = tokio::task::JoinSet::new();
    let mut wrong = Vec::new();
    let mut check = |code: i32, outcome: Outcome| {
        if outcome
            != (Outcome::Exited {
                code: expected_exit(target.kind, code),
            })
        {
            wrong.push(format!("exit {code}: {outcome}"));
        }
    };
    for code in 0..=255 {
        if running.len() >= 16
            && let Some(done) = running.join_next().await
        {
            let (code, outcome) = done.expect("join");
            check(code, outcome);
        }
        let runner = runner.clone();
        let program = program.clone();
        running.spawn(async move {
            let mut spec = TaskSpec::new("ignored.wasm");
            spec.isolation = target.isolation;
            spec.args = vec!["exit".into(), code.to_string()];
            spec.limits.timeout = Some(BACKSTOP);
            let outcome = match runner.spawn_program(&program, spec).await {
                Ok(handle) => handle.wait().await.outcome,
                Err(err) => Outcome::Failed {
                    message: format!("did not start: {err}"),
                },
            };
            (code, outcome)
        });
    }
    while let Some(done) = running.join_next().await {
        let (code, outcome) = done.expect("join");
        check(code, outcome);
    }
    Row {
        case: "exit N for N in 0..=255".into(),
        target: target_name(target),
        expected: match target.kind {
            GuestKind::Module => "exited with code N".into(),
            GuestKind::Component => "exited with code 0 for 0, else 1".into(),
        },
        got: match wrong.first() {
            None => "256 of 256 as expected".into(),
            Some(first) => format!("{} wrong; first: {first}", wrong.len()),
        },
        time_to_stop: Some(started.elapsed()),
        ok: wrong.is_empty(),
    }
}

/// Core modules that ask for more memories or tables than an instance
/// slot holds: refused when loaded, with a typed error, on both levels.
pub async fn many_memories_and_tables(runner: &Runner) -> Vec<Row> {
    const MEMORIES: &str = "(module (memory 1) (memory 1) (memory 1) (memory 1) \
        (memory 1) (memory 1) (memory 1) (memory 1) (func (export \"_start\")))";
    const TABLES: &str = "(module (table 1 funcref) (table 1 funcref) (table 1 funcref) \
        (table 1 funcref) (func (export \"_start\")))";
    const HUGE_TABLE: &str = "(module (table 5000000 funcref) (func (export \"_start\")))";
    let hundred_tables = many_huge_tables(100);
    let mut rows = Vec::new();
    for (name, wat) in [
        ("8 memories (WAT)", MEMORIES),
        ("4 tables (WAT)", TABLES),
        ("a 5,000,000-element table (WAT)", HUGE_TABLE),
        (
            "100 tables of 1,000,000 elements (WAT)",
            hundred_tables.as_str(),
        ),
    ] {
        for isolation in crate::ISOLATIONS {
            let mut spec = TaskSpec::new(wat_module(wat));
            spec.isolation = isolation;
            let started = Instant::now();
            let (got, ok) = match runner.spawn(spec).await {
                Err(isola::Error::Invalid { message, .. }) => (format!("refused: {message}"), true),
                Err(err) => (format!("refused otherwise: {err}"), false),
                Ok(handle) => (format!("started: {}", handle.wait().await.outcome), false),
            };
            let got: String = got.chars().take(110).collect();
            rows.push(Row {
                case: name.into(),
                target: target_name(Target {
                    kind: GuestKind::Module,
                    isolation,
                }),
                expected: "refused at load (Error::Invalid)".into(),
                got,
                time_to_stop: Some(started.elapsed()),
                ok,
            });
        }
    }
    rows
}

/// Runs every case on every target it applies to, one task at a time
/// (so times to stop are not inflated by the other cases).
pub async fn run_all(runner: &Runner, filter: impl Fn(&Case) -> bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for case in cases().iter().filter(|c| filter(c)) {
        for target in targets() {
            if case.runs_on(target) {
                rows.push(run_case(runner, case, target).await);
            }
        }
    }
    rows
}

/// Prints `rows` as an aligned table, failures marked.
pub fn print_table(rows: &[Row]) {
    let header = [
        "case",
        "isolation/kind",
        "expected",
        "got",
        "time to stop",
        "",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.case.clone(),
                r.target.clone(),
                r.expected.clone(),
                r.got.clone(),
                r.time_to_stop.map_or_else(
                    || "-".into(),
                    |t| format!("{:.1} ms", t.as_secs_f64() * 1e3),
                ),
                if r.ok { "ok".into() } else { "FAIL".into() },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header.map(String::from));
    println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
    for row in &cells {
        line(row);
    }
}
