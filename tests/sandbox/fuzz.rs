//! Property tests on random input, a few seconds each in CI: the config
//! parser, the translation of a spec into a running task, and the IPC
//! frame decoders on both sides of the worker pipe (through public entry
//! points only: a fake worker script for the parent's decoder, the real
//! worker binary for the worker's). Generators take an
//! [`arbitrary::Unstructured`], so they could back `cargo fuzz` targets.
//!
//! Longer runs (seconds per target; a failing case prints
//! `ISOLA_FUZZ_SEED=...` to reproduce it):
//!
//! ```sh
//! ISOLA_FUZZ_SECS=300 cargo test -p isola-cli --test sandbox fuzz -- --nocapture --test-threads=1
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbitrary::{Result as AResult, Unstructured};
use isola::config::TaskSet;
use isola::{
    ByteSize, CacheDir, DirGrant, Frame, Isolation, Limit, Limits, Outcome, Output, Runner,
    RunnerConfig, Stdin, Stream, TaskMetrics, TaskSpec, TrapInfo, TrapKind,
};
use isola_tests::fuzz::Fuzz;
use isola_tests::{GuestKind, guest, isola_bin, runner, shared_cache};

// ---------------------------------------------------------------------
// The config parser
// ---------------------------------------------------------------------

/// Keys the parser knows (from the parser itself, so they stay in step),
/// then near misses and keys of other tables.
static KEYS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let others = [
        "nmae", "host", "guest", "writable", "text", "file", "task", "defaults", "",
    ];
    let known = isola::config::TASK_KEYS
        .iter()
        .chain(isola::config::LIMIT_KEYS.iter());
    known.copied().chain(others).collect()
});

/// A string that is often meaningful to the parser.
fn word(u: &mut Unstructured, names: &[&str], paths: &[String]) -> AResult<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => u.arbitrary::<String>()?,
        1 => (*u.choose(names)?).to_owned(),
        2 => u.choose(paths)?.clone(),
        3 => (*u.choose(&[
            "thread",
            "process",
            "never",
            "on-crash",
            "closed",
            "1.5s",
            "500ms",
            "0s",
            "64MiB",
            "0B",
            "1 GiB",
            "18446744073709551615B",
            "99999999999999999999s",
            "-1s",
            "ü",
            "a\u{0}b",
            "\\",
            "\"",
        ])?)
        .to_owned(),
        _ => (*u.choose(&KEYS)?).to_owned(),
    })
}

/// A TOML string literal for `s` (escaped, so the document stays TOML).
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value(u: &mut Unstructured, depth: u32, names: &[&str], paths: &[String]) -> AResult<String> {
    let max = if depth > 2 { 4 } else { 7 };
    Ok(match u.int_in_range(0..=max)? {
        0 | 1 => quoted(&word(u, names, paths)?),
        2 => u.arbitrary::<i64>()?.to_string(),
        3 => u
            .choose(&[
                "true",
                "false",
                "1.5",
                "-0.0",
                "inf",
                "nan",
                "1979-05-27T07:32:00Z",
            ])?
            .to_string(),
        4 => u.int_in_range(0u32..=100_000)?.to_string(),
        5 | 6 => {
            let n = u.int_in_range(0..=4)?;
            let items = (0..n)
                .map(|_| value(u, depth + 1, names, paths))
                .collect::<AResult<Vec<_>>>()?;
            format!("[{}]", items.join(", "))
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let items = (0..n)
                .map(|_| {
                    Ok(format!(
                        "{} = {}",
                        key(u)?,
                        value(u, depth + 1, names, paths)?
                    ))
                })
                .collect::<AResult<Vec<_>>>()?;
            format!("{{ {} }}", items.join(", "))
        }
    })
}

fn key(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=7)? {
        0 => quoted(&u.arbitrary::<String>()?),
        _ => {
            let k = *u.choose(&KEYS)?;
            if k.is_empty() {
                "\"\"".into()
            } else {
                k.into()
            }
        }
    })
}

/// A `tasks.toml`-like document: mostly known keys with values of every
/// type, so the checks behind the syntax get exercised, not just the TOML
/// parser.
fn document(u: &mut Unstructured, paths: &[String]) -> AResult<String> {
    let names = ["a", "b", "c", "build", "test", "-bad", "x.y_z"];
    let mut doc = String::new();
    if u.ratio(1, 3)? {
        doc += "[defaults]\n";
        for _ in 0..u.int_in_range(0..=4)? {
            doc += &format!("{} = {}\n", key(u)?, value(u, 0, &names, paths)?);
        }
    }
    for _ in 0..u.int_in_range(0..=5)? {
        doc += "\n[[task]]\n";
        if u.ratio(4, 5)? {
            doc += &format!("name = {}\n", quoted(u.choose(&names)?));
        }
        if u.ratio(4, 5)? {
            doc += &format!("wasm = {}\n", quoted(u.choose(paths)?));
        }
        for _ in 0..u.int_in_range(0..=5)? {
            doc += &format!("{} = {}\n", key(u)?, value(u, 0, &names, paths)?);
        }
    }
    // Now and then, damage it.
    if u.ratio(1, 4)? {
        let mut bytes = doc.into_bytes();
        for _ in 0..u.int_in_range(1..=4)? {
            if bytes.is_empty() {
                break;
            }
            let at = u.int_in_range(0..=bytes.len() - 1)?;
            match u.int_in_range(0..=2)? {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, u.arbitrary()?),
                _ => bytes[at] = u.arbitrary()?,
            }
        }
        doc = String::from_utf8_lossy(&bytes).into_owned();
    }
    Ok(doc)
}

fn check_parse(source: &str, file: &Path) {
    match TaskSet::parse(source, file) {
        Ok(set) => {
            let mut names: Vec<&str> = set.tasks().iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "unique names:\n{source}");
            for task in set.tasks() {
                for dep in &task.depends_on {
                    assert!(
                        set.get(dep).is_some(),
                        "known dependency `{dep}`:\n{source}"
                    );
                }
                assert!(task.spec.wasm.is_file(), "the wasm exists:\n{source}");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "never an empty error list");
            let lines = source.split('\n').count();
            for error in errors.iter() {
                let text = error.to_string();
                assert!(
                    text.starts_with(&file.display().to_string()),
                    "errors name the file: {text}"
                );
                if let Some(at) = error.location {
                    assert!(
                        at.line >= 1 && at.line <= lines && at.column >= 1,
                        "{at:?} is inside the {lines}-line source: {text}\n{source}"
                    );
                }
            }
        }
    }
}

#[test]
fn fuzz_config_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tasks.toml");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    let paths = [
        guest("hello", GuestKind::Module).display().to_string(),
        guest("echo_cli", GuestKind::Component)
            .display()
            .to_string(),
        "data".to_string(),
        "missing.wasm".to_string(),
        dir.path().display().to_string(),
        "/etc/passwd".to_string(),
        String::new(),
    ];
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks.toml"),
    )
    .expect("examples/tasks.toml");
    let mut fuzz = Fuzz::new("config parser", 1.0, 200);
    while let Some(bytes) = fuzz.next_case(4096) {
        let mut u = Unstructured::new(&bytes);
        let source = match bytes.first().map(|b| b % 4) {
            // Raw bytes: the TOML layer.
            Some(0) => String::from_utf8_lossy(&bytes).into_owned(),
            // The shipped example, damaged.
            Some(1) => {
                let mut text = shipped.clone().into_bytes();
                for _ in 0..u.int_in_range(1..=8).unwrap_or(1) {
                    let at = u.int_in_range(0..=text.len() - 1).unwrap_or(0);
                    text[at] = u.arbitrary().unwrap_or(b'=');
                }
                String::from_utf8_lossy(&text).into_owned()
            }
            _ => document(&mut u, &paths).unwrap_or_default(),
        };
        check_parse(&source, &file);
    }
}

// ---------------------------------------------------------------------
// Spec -> wasmtime: random grants and limits through Runner::spawn
// ---------------------------------------------------------------------

/// Files and directories a random spec may point at.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
    not_wasm: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("input.txt");
        std::fs::write(&file, "input").expect("write");
        let not_wasm = dir.path().join("not.wasm");
        std::fs::write(&not_wasm, "#!/bin/sh\n").expect("write");
        Fixture {
            dir: dir.path().to_owned(),
            _dir: dir,
            file,
            not_wasm,
        }
    }
}

fn size(u: &mut Unstructured) -> AResult<ByteSize> {
    Ok(ByteSize(match u.int_in_range(0..=9)? {
        0 => 0,
        1 => 1,
        2 => 65_535,
        3 => 65_536,
        4 => 1 << 20,
        5 => 1 << 30,
        6 => 4 << 30,
        7 => (4 << 30) + 1,
        8 => u64::MAX,
        _ => u.arbitrary()?,
    }))
}

fn duration(u: &mut Unstructured) -> AResult<Duration> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(1),
        2 => Duration::from_millis(u.int_in_range(0..=200)?),
        3 => Duration::from_secs(u.int_in_range(1..=3600)?),
        4 => Duration::MAX,
        5 => Duration::from_secs(u64::MAX),
        _ => Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
    })
}

fn limits(u: &mut Unstructured) -> AResult<Limits> {
    let mut limits = Limits::default();
    if u.arbitrary()? {
        limits.max_memory = size(u)?;
    }
    if u.arbitrary()? {
        limits.fuel = Some(match u.int_in_range(0..=3)? {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            _ => u.arbitrary()?,
        });
    }
    if u.arbitrary()? {
        limits.timeout = Some(duration(u)?);
    }
    if u.arbitrary()? {
        limits.max_output = Some(size(u)?);
    }
    if u.arbitrary()? {
        limits.capture = size(u)?;
    }
    if u.arbitrary()? {
        limits.process_memory = Some(size(u)?);
    }
    if u.arbitrary()? {
        limits.message_queue = *u.choose(&[0, 1, 64, 1 << 20, usize::MAX >> 3, usize::MAX])?;
    }
    if u.arbitrary()? {
        limits.max_message_size = size(u)?;
    }
    if u.arbitrary()? {
        limits.max_messages = Some(u.arbitrary()?);
    }
    Ok(limits)
}

fn text(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => String::new(),
        1 => "a\0b".into(),
        2 => "K=V".into(),
        3 => "é🦀".into(),
        _ => u.arbitrary()?,
    })
}

fn random_spec(u: &mut Unstructured, fx: &Fixture) -> AResult<TaskSpec> {
    // Half the specs only grant what exists, so that most of them start
    // and their limits reach the engine; the other half also point at
    // missing files, non-directories and bad names.
    let sane = u.arbitrary::<bool>()?;
    let pick = |u: &mut Unstructured, bad: u32, good: u32| -> AResult<u32> {
        if sane {
            u.int_in_range(bad..=bad + good - 1)
        } else {
            u.int_in_range(0..=bad + good - 1)
        }
    };
    let kind = if u.arbitrary()? {
        GuestKind::Module
    } else {
        GuestKind::Component
    };
    let wasm = match pick(u, 3, 10)? {
        0 => fx.dir.join("missing.wasm"),
        1 => fx.not_wasm.clone(),
        2 => fx.dir.clone(),
        _ => guest("hello", kind),
    };
    let mut spec = TaskSpec::new(wasm);
    if u.ratio(1, 4)? {
        spec.argv0 = Some(text(u)?);
    }
    for _ in 0..u.int_in_range(0..=4)? {
        spec.args.push(text(u)?);
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let key = if sane {
            u.choose(&["A", "HOME", "é"])?.to_string()
        } else {
            text(u)?
        };
        spec.env.insert(key, text(u)?);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        spec.inherit_env.push(
            u.choose(&["PATH", "HOME", "NOT_SET_ANYWHERE", "", "A=B"])?
                .to_string(),
        );
    }
    for _ in 0..u.int_in_range(0..=3)? {
        let host = match pick(u, 3, 2)? {
            0 => fx.dir.join("missing"),
            1 => fx.file.clone(),
            2 => PathBuf::new(),
            _ => fx.dir.clone(),
        };
        let guest = match u.int_in_range(0..=5)? {
            0 => None,
            1 => Some(String::new()),
            2 => Some(
                u.choose(&["/", ".", "..", "/a/../b", "data", "/data"])?
                    .to_string(),
            ),
            _ => Some(text(u)?),
        };
        spec.dirs.push(DirGrant {
            host,
            guest,
            writable: u.arbitrary()?,
        });
    }
    spec.stdin = match pick(u, 2, 3)? {
        0 => Stdin::File(fx.dir.join("missing")),
        1 => Stdin::File(fx.dir.clone()),
        2 => Stdin::Closed,
        3 => Stdin::Bytes(u.arbitrary()?),
        _ => Stdin::File(fx.file.clone()),
    };
    let output = |u: &mut Unstructured| -> AResult<Output> {
        Ok(*u.choose(&[Output::Capture, Output::Pipe, Output::Discard])?)
    };
    spec.stdout = output(u)?;
    spec.stderr = output(u)?;
    if u.arbitrary()? {
        spec.input = Some(u.arbitrary()?);
    }
    spec.limits = limits(u)?;
    // Process tasks cost a process each: fewer of them.
    spec.isolation = if u.ratio(1, 6)? {
        Isolation::Process
    } else {
        Isolation::Thread
    };
    Ok(spec)
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzz_spec_translation() {
    let runner = runner();
    let fx = Fixture::new();
    let mut fuzz = Fuzz::new("spec translation", 1.5, 100);
    let (mut started, mut refused) = (0u32, 0u32);
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    while let Some(bytes) = fuzz.next_case(512) {
        let mut u = Unstructured::new(&bytes);
        let Ok(spec) = random_spec(&mut u, &fx) else {
            continue;
        };
        let described = format!("{spec:?}");
        let process_memory = spec.limits.process_memory;
        // A spawn that panics fails the test (and prints the seed).
        match runner.spawn(spec).await {
            Ok(handle) => {
                started += 1;
                let report = tokio::time::timeout(Duration::from_secs(30), handle.wait())
                    .await
                    .unwrap_or_else(|_| panic!("a hello task must end: {described}"));
                let what = report.outcome.to_string();
                let what = what.split([':', '(']).next().unwrap_or_default();
                *seen.entry(what.to_owned()).or_default() += 1;
                // A worker dies only under an OS memory limit too small
                // for it to start or to run its guest.
                if let Outcome::Crashed { .. } = report.outcome {
                    assert!(
                        process_memory.is_some_and(|m| m < ByteSize::mib(64)),
                        "{}\n{described}",
                        report.outcome
                    );
                }
                // `Failed` means Isola broke, whatever the spec said.
                assert!(
                    !matches!(report.outcome, Outcome::Failed { .. }),
                    "{}\n{described}",
                    report.outcome
                );
            }
            Err(err) => {
                refused += 1;
                let what = err.to_string();
                let what = what.split(':').next().unwrap_or_default();
                *seen.entry(format!("refused: {what}")).or_default() += 1;
                assert!(
                    err.is_user_error(),
                    "a bad spec is the caller's error: {err}\n{described}"
                );
            }
        }
    }
    eprintln!("spec translation: {started} started, {refused} refused");
    for (what, n) in &seen {
        eprintln!("  {n:6}  {what}");
    }
    assert!(started > 0 && refused > 0, "both paths were exercised");
}

// ---------------------------------------------------------------------
// The parent's frame decoder, fed by a fake worker
// ---------------------------------------------------------------------

/// One length-prefixed frame: 4-byte big-endian length, then the body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn kind_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(body);
    frame(&b)
}

/// The worker's answer to the handshake, as the real worker writes it
/// (its version is `ipc::protocol::PROTOCOL_VERSION`: keep them in step).
fn hello_frame() -> Vec<u8> {
    kind_frame(1, br#"{"magic":"isola-ipc","version":8,"pid":4242}"#)
}

/// A size that survives the JSON of the IPC frames: whole MiB below 1,000
/// (see `process_tasks_keep_their_exact_byte_limits` in matrix.rs for
/// sizes that do not).
fn frame_size(u: &mut Unstructured) -> AResult<ByteSize> {
    Ok(ByteSize::mib(u.int_in_range(0..=999)?))
}

fn random_outcome(u: &mut Unstructured) -> AResult<Outcome> {
    Ok(match u.int_in_range(0..=8)? {
        0 => Outcome::Exited {
            code: u.arbitrary()?,
        },
        1 => Outcome::Returned {
            output: u.arbitrary()?,
        },
        2 => Outcome::Rejected {
            error: u.arbitrary()?,
        },
        3 => Outcome::Trapped(TrapInfo {
            kind: *u.choose(&[
                TrapKind::StackOverflow,
                TrapKind::Unreachable,
                TrapKind::Other,
            ])?,
            message: u.arbitrary()?,
            backtrace: vec![Frame {
                module: u.arbitrary()?,
                function: u.arbitrary()?,
                func_index: u.arbitrary()?,
                offset: u.arbitrary()?,
            }],
        }),
        4 => Outcome::LimitExceeded {
            limit: match u.int_in_range(0..=3)? {
                0 => Limit::Timeout {
                    after: Duration::from_millis(u.arbitrary()?),
                },
                1 => Limit::Memory {
                    max: frame_size(u)?,
                },
                2 => Limit::Fuel {
                    budget: u.arbitrary()?,
                },
                _ => Limit::Output {
                    stream: Stream::Stderr,
                    max: frame_size(u)?,
                },
            },
        },
        5 => Outcome::Cancelled,
        6 => Outcome::Crashed {
            signal: u.arbitrary()?,
            status: u.arbitrary()?,
            reason: None,
        },
        _ => Outcome::Failed {
            message: u.arbitrary()?,
        },
    })
}

/// A worker's side of the pipe after the handshake. Returns the bytes, the
/// outcome a well-formed script ends with (when it is well-formed), and
/// the stdout its frames carry.
fn worker_script(u: &mut Unstructured) -> AResult<(Vec<u8>, Option<Outcome>, Vec<u8>)> {
    let mut bytes = hello_frame();
    let mut stdout = Vec::new();
    let well_formed = u.ratio(1, 2)?;
    if u.arbitrary()? {
        bytes.extend(kind_frame(16, b""));
    }
    for _ in 0..u.int_in_range(0..=6)? {
        let chunk: Vec<u8> = u.arbitrary()?;
        if u.arbitrary()? {
            bytes.extend(kind_frame(17, &chunk));
            stdout.extend_from_slice(&chunk);
        } else {
            bytes.extend(kind_frame(18, &chunk));
        }
        if !well_formed {
            match u.int_in_range(0..=7)? {
                0 => bytes.extend(frame(b"")),
                // Any kind but stdout's (17), whose bytes would be real
                // output the expected stdout does not list.
                1 => {
                    let kind = u.arbitrary::<u8>()?;
                    let kind = if kind == 17 { 255 } else { kind };
                    bytes.extend(kind_frame(kind, &u.arbitrary::<Vec<u8>>()?));
                }
                2 => bytes.extend(kind_frame(1, b"{}")),
                3 => bytes.extend(kind_frame(19, &u.arbitrary::<Vec<u8>>()?)),
                4 => bytes.extend(((64u32 << 20) + 1).to_be_bytes()),
                // Garbage that cannot read as a stdout frame: its length
                // prefix starts with 0xff, past the frame limit.
                5 => {
                    bytes.push(0xff);
                    bytes.extend(u.arbitrary::<Vec<u8>>()?);
                }
                _ => {}
            }
        }
    }
    let outcome = random_outcome(u)?;
    let metrics = TaskMetrics {
        run_time: Duration::from_micros(u.arbitrary()?),
        peak_memory: u.arbitrary()?,
        fuel_used: u.arbitrary()?,
        ..TaskMetrics::default()
    };
    let finished = serde_json::json!({ "outcome": outcome, "metrics": metrics });
    let mut body = serde_json::to_vec(&finished).expect("json");
    if !well_formed && u.arbitrary()? {
        // Damage the finished frame: truncated, or a byte changed.
        let at = u.int_in_range(0..=body.len() - 1)?;
        if u.arbitrary()? {
            body.truncate(at);
        } else {
            body[at] = u.arbitrary()?;
        }
    }
    if well_formed || u.ratio(3, 4)? {
        bytes.extend(kind_frame(19, &body));
    }
    if !well_formed && u.arbitrary()? {
        // A frame cut off by the end of the stream.
        let cut = kind_frame(17, b"cut short");
        bytes.extend(&cut[..cut.len() - 3]);
    }
    Ok((bytes, well_formed.then_some(outcome), stdout))
}

/// An executable that plays a worker: waits for the parent's hello, then
/// writes the bytes of `case` and exits.
fn fake_worker(dir: &Path, case: &Path) -> PathBuf {
    let find = |names: &[&str]| -> String {
        names
            .iter()
            .find(|p| Path::new(p).exists())
            .map(|p| p.to_string())
            .expect("head and cat are installed")
    };
    let head = find(&["/usr/bin/head", "/bin/head"]);
    let cat = find(&["/bin/cat", "/usr/bin/cat"]);
    let script = dir.join("fake-worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# The parent writes its hello first: read it, then answer.\n\
             {head} -c 4 >/dev/null\nexec {cat} '{}'\n",
            case.display()
        ),
    )
    .expect("write the script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzz_frames_from_a_hostile_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let case = dir.path().join("case.bin");
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 4,
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(fake_worker(dir.path(), &case)),
        // Each task starts a fresh fake worker, which reads the current
        // case file when it starts.
        prestarted_workers: 0,
        ..RunnerConfig::default()
    })
    .expect("runner");
    let program = runner
        .load(guest("hello", GuestKind::Module))
        .await
        .expect("load");
    let mut fuzz = Fuzz::new("frames from a worker", 1.0, 30);
    while let Some(bytes) = fuzz.next_case(2048) {
        let mut u = Unstructured::new(&bytes);
        let Ok((script, expected, stdout)) = worker_script(&mut u) else {
            continue;
        };
        std::fs::write(&case, &script).expect("write the case");
        let mut spec = TaskSpec::new("ignored.wasm");
        spec.isolation = Isolation::Process;
        let handle = runner
            .spawn_program(&program, spec)
            .await
            .expect("the handshake passes");
        let report = tokio::time::timeout(Duration::from_secs(20), handle.wait())
            .await
            .expect("the parent never hangs on a worker's bytes");
        if let Outcome::Failed { message } = &report.outcome {
            assert!(
                !message.contains("ended abnormally"),
                "the supervisor panicked: {message}"
            );
        }
        // Output is passed on as it came, never invented.
        assert!(
            stdout.starts_with(&report.stdout.bytes),
            "captured stdout is a prefix of what the worker sent: {:?} vs {:?} ({:?})",
            report.stdout.bytes,
            stdout,
            report.outcome
        );
        if let Some(expected) = expected {
            assert_eq!(report.outcome, expected, "a well-formed worker is believed");
            assert_eq!(report.stdout.bytes, stdout, "all its output arrives");
        }
    }
}

// ---------------------------------------------------------------------
// The worker's frame decoder, fed by a fake parent
// ---------------------------------------------------------------------

fn run_request(u: &mut Unstructured, wasm: &Path) -> AResult<Vec<u8>> {
    let mut spec = TaskSpec::new(wasm);
    spec.args = vec![u.arbitrary()?];
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(
        std::fs::read(wasm).expect("read the guest"),
    ));
    let mut request = serde_json::json!({
        "spec": spec,
        "cache_dir": shared_cache(),
        "program": { "hash": hash, "kind": "module" },
        "os_limits": {
            "data_bytes": 2u64 << 30,
            "address_space_bytes": 80u64 << 30,
            "cpu_seconds": 10,
            "open_files": 256,
        },
        "entry": "auto",
    });
    // Change one field to a random value of a random type.
    if u.arbitrary()? {
        let fields = ["spec", "cache_dir", "program", "os_limits", "entry"];
        let field = *u.choose(&fields)?;
        request[field] = match u.int_in_range(0..=3)? {
            0 => serde_json::Value::Null,
            // A random string, but never a path out of the worker's
            // working directory (a temp dir): the worker trusts its parent
            // and would create a cache directory wherever it is told.
            1 => serde_json::json!(format!(
                "fuzz-{}",
                u.arbitrary::<String>()?.replace(['/', '.'], "_")
            )),
            2 => serde_json::json!(u.arbitrary::<i64>()?),
            _ => serde_json::json!({}),
        };
    }
    Ok(serde_json::to_vec(&request).expect("json"))
}

#[test]
fn fuzz_frames_from_a_hostile_parent() {
    let wasm = guest("hello", GuestKind::Module);
    // Relative paths in a random run frame land here, not in the repo.
    let cwd = tempfile::tempdir().expect("tempdir");
    let parent_hello = kind_frame(1, br#"{"magic":"isola-ipc","version":8,"pid":1}"#);
    let mut fuzz = Fuzz::new("frames from a parent", 1.0, 10);
    while let Some(bytes) = fuzz.next_case(1024) {
        let mut u = Unstructured::new(&bytes);
        let mut input = Vec::new();
        let mode = u.int_in_range(0..=3).unwrap_or(0);
        if mode > 0 {
            input.extend(&parent_hello);
        }
        match mode {
            0 | 1 => input.extend(u.arbitrary::<Vec<u8>>().unwrap_or_default()),
            2 => {
                let body = run_request(&mut u, &wasm).unwrap_or_default();
                input.extend(kind_frame(2, &body));
                input.extend(u.arbitrary::<Vec<u8>>().unwrap_or_default());
            }
            _ => {
                // A run frame, then random control frames.
                let body = run_request(&mut u, &wasm).unwrap_or_default();
                input.extend(kind_frame(2, &body));
                for _ in 0..u.int_in_range(0..=5).unwrap_or(0) {
                    let kind = *u.choose(&[3u8, 4, 5, 6, 7, 1, 2, 99]).unwrap_or(&5);
                    input.extend(kind_frame(
                        kind,
                        &u.arbitrary::<Vec<u8>>().unwrap_or_default(),
                    ));
                }
            }
        }
        let mut child = Command::new(isola_bin())
            .arg(isola::worker::WORKER_ARG)
            .current_dir(cwd.path())
            .env_clear()
            .env("ISOLA_WORKER_PARENT", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker");
        let mut stdin = child.stdin.take().expect("stdin");
        // The worker may stop reading at any point; a broken pipe is fine.
        let _ = stdin.write_all(&input);
        drop(stdin);
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the worker hung on its input ({} bytes)", input.len());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = reader.join();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal().is_none() && status.code() != Some(101),
            "the worker must end by itself, without panicking: {status:?}\n{err}"
        );
    }
}
