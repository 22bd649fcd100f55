//! Isola where a program meets a shell (issue 13): a reader that goes away,
//! a prompt without a newline, exit statuses above 255, termination
//! signals, large inputs, wasmtime-style invocation and the console of
//! `isola up`. Each test drives the real binary, at both isolation levels
//! and for both guest kinds where that applies, under a watchdog, so a
//! regression fails instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isola::{ByteSize, Isolation, Outcome, Stdin, TaskSpec};
use isola_tests::procs::{children_of, is_alive, send_signal, wait_until};
use isola_tests::{GuestKind, KINDS, guest, isola, isola_bin, shared_cache, stderr, stdout};

/// Both isolation levels, as the CLI spells them.
const ISOLATIONS: [&str; 2] = ["thread", "process"];

/// WASI preview1's `errno::pipe`: what a write to a closed pipe fails with.
const WASI_EPIPE: i32 = 64;

/// Exit status of a guest Isola ended for writing on to a closed stream
/// (128 + SIGPIPE).
const BROKEN_PIPE: i32 = 141;

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// How long any one `isola` may take before the watchdog calls it hung.
const HUNG: Duration = Duration::from_secs(30);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `isola ARGS` with stdin, stdout and stderr piped and the shared cache.
fn spawn(args: &[&str]) -> Child {
    Command::new(isola_bin())
        .args(args)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("ISOLA_LOG", "warn")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola")
}

/// Waits for `child` at most `limit`; kills it and panics naming `what`
/// if it does not end by then.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: isola did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a stream to its end on a thread of its own (a full pipe must not
/// block the child).
fn drain_bytes(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut stream = stream;
        let _ = stream.read_to_end(&mut bytes);
        bytes
    })
}

/// As [`drain_bytes`], as text.
fn drain(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let bytes = drain_bytes(stream).join().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let err: ChildStderr = child.stderr.take().expect("stderr");
    drain(err)
}

/// Writes `chunk` to the child's stdin again and again, until the pipe
/// breaks (the child exited or closed it), like `yes | isola ...`.
fn feed_forever(child: &mut Child, chunk: &'static [u8]) -> std::thread::JoinHandle<()> {
    let mut input = child.stdin.take().expect("stdin");
    std::thread::spawn(move || while input.write_all(chunk).is_ok() {})
}

/// WAT string literal content for `bytes`.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A preview1 module: writes FIRST to stdout, busy-waits WAIT_NS on the
/// monotonic clock, writes SECOND, exits 0. Each write is one `fd_write`.
const P1_TWO_WRITES: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "FIRST")
  (data (i32.const 32768) "SECOND")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 16)))
    (i64.load (i32.const 16)))
  (func (export "_start") (local $end i64)
    (call $write (i32.const 1024) (i32.const FIRST_LEN))
    (local.set $end (i64.add (call $now) (i64.const WAIT_NS)))
    (loop $wait (br_if $wait (i64.lt_u (call $now) (local.get $end))))
    (call $write (i32.const 32768) (i32.const SECOND_LEN))))
"#;

/// A preview1 `yes`: writes `y\n` to stdout until a write fails, then exits
/// with the errno it failed with.
const P1_YES: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "y\n")
  (func (export "_start") (local $errno i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 2))
    (loop $again
      (local.set $errno (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $again (i32.eqz (local.get $errno))))
    (call $proc_exit (local.get $errno))))
"#;

/// The outside of a preview2 command component whose core module (CORE)
/// imports `host` functions over `wasi:cli` stdout/stderr, `wasi:io`
/// streams and the monotonic clock, and one memory from `env`.
const P2_COMPONENT: &str = r#"
(component
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $e0))
    (export "error" (type $e (eq $e0)))
    (export "output-stream" (type $os (sub resource)))
    (type $se0 (variant (case "last-operation-failed" (own $e)) (case "closed")))
    (export "stream-error" (type $se (eq $se0)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8))
        (result (result (error $se)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os))
    (export "get-stdout" (func (result (own $os))))))
  (import "wasi:cli/stderr@0.2.0" (instance $stderr
    (alias outer 1 $output-stream (type $os))
    (export "get-stderr" (func (result (own $os))))))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (export "now" (func (result u64)))))
  (core module $m
    (import "host" "get-stdout" (func $get_stdout (result i32)))
    (import "host" "get-stderr" (func $get_stderr (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (import "host" "now" (func $now (result i64)))
    (import "env" "memory" (memory 1))
    CORE)
  (core module $mem (memory (export "memory") 1))
  (core instance $mem-inst (instantiate $mem))
  (alias core export $mem-inst "memory" (core memory $memory))
  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $get-stderr (canon lower (func $stderr "get-stderr")))
  (core func $write
    (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core func $now (canon lower (func $clock "now")))
  (core instance $host
    (export "get-stdout" (func $get-stdout))
    (export "get-stderr" (func $get-stderr))
    (export "write" (func $write))
    (export "now" (func $now)))
  (core instance $inst (instantiate $m (with "host" (instance $host)) (with "env" (instance $mem-inst))))
  (func $run (result (result)) (canon lift (core func $inst "run")))
  (instance $run-inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-inst)))
"#;

/// Core of a component that writes FIRST, busy-waits, writes SECOND.
/// `blocking-write-and-flush` takes at most 4096 bytes, so each is written
/// in 4096-byte pieces; the result goes to address 16.
const P2_TWO_WRITES_CORE: &str = r#"
    (data (i32.const 1024) "FIRST")
    (data (i32.const 32768) "SECOND")
    (func $write_all (param $out i32) (param $ptr i32) (param $len i32) (local $n i32)
      (block $done
        (loop $more
          (br_if $done (i32.eqz (local.get $len)))
          (local.set $n (select (i32.const 4096) (local.get $len)
            (i32.gt_u (local.get $len) (i32.const 4096))))
          (call $write (local.get $out) (local.get $ptr) (local.get $n) (i32.const 16))
          (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
          (local.set $len (i32.sub (local.get $len) (local.get $n)))
          (br $more))))
    (func (export "run") (result i32) (local $out i32) (local $end i64)
      (local.set $out (call $get_stdout))
      (call $write_all (local.get $out) (i32.const 1024) (i32.const FIRST_LEN))
      (local.set $end (i64.add (call $now) (i64.const WAIT_NS)))
      (loop $wait (br_if $wait (i64.lt_u (call $now) (local.get $end))))
      (call $write_all (local.get $out) (i32.const 32768) (i32.const SECOND_LEN))
      (i32.const 0))
"#;

/// Core of a component `yes`: writes `y\n` until a write fails, then says
/// on stderr which `stream-error` case it got and returns an error.
const P2_YES_CORE: &str = r#"
    (data (i32.const 64) "y\n")
    (data (i32.const 128) "last-operation-failed\n")
    (data (i32.const 192) "closed\n")
    (func (export "run") (result i32) (local $out i32) (local $err i32)
      (local.set $out (call $get_stdout))
      (loop $again
        (call $write (local.get $out) (i32.const 64) (i32.const 2) (i32.const 16))
        (br_if $again (i32.eqz (i32.load8_u (i32.const 16)))))
      (local.set $err (call $get_stderr))
      (if (i32.eqz (i32.load8_u (i32.const 20)))
        (then (call $write (local.get $err) (i32.const 128) (i32.const 22) (i32.const 32)))
        (else (call $write (local.get $err) (i32.const 192) (i32.const 7) (i32.const 32))))
      (i32.const 1))
"#;

/// A guest of `kind` in `dir` that writes `first`, waits `wait`, then
/// writes `second`, each flushed as it is written.
fn two_writes(dir: &Path, kind: GuestKind, first: &[u8], wait: Duration, second: &[u8]) -> PathBuf {
    assert!(first.len() < 30_000 && second.len() < 30_000);
    let fill = |template: &str| {
        template
            .replace("FIRST_LEN", &first.len().to_string())
            .replace("SECOND_LEN", &second.len().to_string())
            .replace("FIRST", &wat_bytes(first))
            .replace("SECOND", &wat_bytes(second))
            .replace("WAIT_NS", &wait.as_nanos().to_string())
    };
    let (wat, name) = match kind {
        GuestKind::Module => (fill(P1_TWO_WRITES), "two-writes-p1.wasm"),
        GuestKind::Component => (
            P2_COMPONENT.replace("CORE", &fill(P2_TWO_WRITES_CORE)),
            "two-writes-p2.wasm",
        ),
    };
    isola_tests::wat_file(dir, name, &wat)
}

/// A `yes` guest of `kind` in `dir` (see [`P1_YES`], [`P2_YES_CORE`]).
fn yes(dir: &Path, kind: GuestKind) -> PathBuf {
    match kind {
        GuestKind::Module => isola_tests::wat_file(dir, "yes-p1.wasm", P1_YES),
        GuestKind::Component => isola_tests::wat_file(
            dir,
            "yes-p2.wasm",
            &P2_COMPONENT.replace("CORE", P2_YES_CORE),
        ),
    }
}

/// Reads two lines of the child's stdout, then closes it: `| head -2`.
fn head_2(child: &mut Child) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let taken: Vec<String> = lines.by_ref().take(2).map_while(Result::ok).collect();
    drop(lines);
    taken
}

// ---------------------------------------------------------------------
// 1. A reader that goes away stops the writer.
// ---------------------------------------------------------------------

#[test]
fn a_closed_stdout_fails_a_preview1_guests_next_write_with_epipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = yes(dir.path(), GuestKind::Module);
    for isolation in ISOLATIONS {
        let mut child = spawn(&["run", "--isolation", isolation, path_str(&wasm)]);
        let err = drain_stderr(&mut child);
        assert_eq!(head_2(&mut child), ["y", "y"], "{isolation}");
        let status = wait_within(&mut child, HUNG, &format!("yes | head -2 ({isolation})"));
        let err = err.join().expect("stderr");
        // The guest exits with the errno its failed write returned.
        assert_eq!(status.code(), Some(WASI_EPIPE), "{isolation}: {err}");
    }
}

#[test]
fn a_closed_stdout_fails_a_components_next_write_as_a_failed_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = yes(dir.path(), GuestKind::Component);
    for isolation in ISOLATIONS {
        let mut child = spawn(&["run", "--isolation", isolation, path_str(&wasm)]);
        let err = drain_stderr(&mut child);
        assert_eq!(head_2(&mut child), ["y", "y"], "{isolation}");
        let status = wait_within(&mut child, HUNG, &format!("yes | head -2 ({isolation})"));
        let err = err.join().expect("stderr");
        assert_eq!(status.code(), Some(1), "{isolation}: {err}");
        assert_eq!(err, "last-operation-failed\n", "{isolation}");
    }
}

/// `yes | isola run echo_cli.wasm stdin | head -2`: a Rust guest copying
/// stdin to stdout stops at the broken pipe and says so, like a native
/// `cat`, with either guest kind at either isolation.
#[test]
fn a_guest_copying_endless_stdin_stops_when_its_reader_leaves() {
    for kind in KINDS {
        let echo = guest("echo_cli", kind);
        for isolation in ISOLATIONS {
            let what = format!("{kind:?} at {isolation}");
            let mut child = spawn(&["run", "--isolation", isolation, path_str(&echo), "stdin"]);
            let feeder = feed_forever(&mut child, b"y\ny\ny\ny\ny\ny\ny\ny\n");
            let err = drain_stderr(&mut child);
            assert_eq!(head_2(&mut child), ["y", "y"], "{what}");
            let status = wait_within(&mut child, HUNG, &what);
            let err = err.join().expect("stderr");
            feeder.join().expect("feeder");
            assert_eq!(status.code(), Some(1), "{what}: {err}");
            // Preview2 streams report a failed write as
            // `last-operation-failed`, which wasi-libc (and so Rust's std)
            // can only turn into EIO; preview1 has EPIPE itself.
            let expected = match kind {
                GuestKind::Module => "Broken pipe",
                GuestKind::Component => "I/O error",
            };
            assert!(err.contains(expected), "{what}: {err}");
        }
    }
}

/// A guest that ignores the failed writes is ended as SIGPIPE ends a native
/// writer: exit status 141, promptly, on either stream.
#[test]
fn a_guest_that_writes_on_to_a_closed_stream_is_ended_with_141() {
    for kind in KINDS {
        let hostile = guest("hostile", kind);
        for isolation in ISOLATIONS {
            let what = format!("flood | head -2: {kind:?} at {isolation}");
            let mut child = spawn(&["run", "--isolation", isolation, path_str(&hostile), "flood"]);
            let err = drain_stderr(&mut child);
            assert_eq!(head_2(&mut child).len(), 2, "{what}");
            let started = Instant::now();
            let status = wait_within(&mut child, HUNG, &what);
            let err = err.join().expect("stderr");
            assert_eq!(status.code(), Some(BROKEN_PIPE), "{what}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: promptly"
            );
            assert!(
                !err.contains("panicked") && !err.contains("internal error"),
                "{what}: {err}"
            );

            let what = format!("flood-stderr 2>&1 | head -2: {kind:?} at {isolation}");
            let mut child = Command::new(isola_bin())
                .args([
                    "run",
                    "--isolation",
                    isolation,
                    path_str(&hostile),
                    "flood-stderr",
                ])
                .env("ISOLA_CACHE_DIR", shared_cache())
                .env("ISOLA_LOG", "off")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn isola");
            let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
            assert_eq!(lines.by_ref().take(2).count(), 2, "{what}");
            drop(lines);
            let status = wait_within(&mut child, HUNG, &what);
            assert_eq!(status.code(), Some(BROKEN_PIPE), "{what}");
        }
    }
}

fn write_set(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write tasks.toml");
    path
}

/// `isola up ... | head`: the set is cancelled when Isola's own stdout
/// closes, quietly (no error flood, no panic), the JSON is still written
/// and Isola exits 141.
#[test]
fn isola_up_stops_the_set_when_its_reader_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = guest("hostile", GuestKind::Module);
    let hostile2 = guest("hostile", GuestKind::Component);
    let set = write_set(
        dir.path(),
        &format!(
            r#"
[[task]]
name = "flood"
wasm = '{h}'
args = ["flood"]

[[task]]
name = "flood-process"
wasm = '{h2}'
args = ["flood"]
isolation = "process"
"#,
            h = path_str(&hostile),
            h2 = path_str(&hostile2),
        ),
    );
    let json = dir.path().join("results.json");
    let mut child = spawn(&["up", path_str(&set), "--json", path_str(&json)]);
    let err = drain_stderr(&mut child);
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let seen = lines.by_ref().take(5).map_while(Result::ok).count();
    assert_eq!(seen, 5);
    drop(lines);
    let status = wait_within(&mut child, HUNG, "isola up | head -5");
    let err = err.join().expect("stderr");
    assert_eq!(status.code(), Some(BROKEN_PIPE), "{err}");
    assert!(err.lines().count() < 5, "no error flood: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON is written")).expect("JSON");
    let statuses: Vec<&str> = report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["cancelled", "cancelled"], "{report}");
}

// ---------------------------------------------------------------------
// 2. Output is written through as the guest writes it.
// ---------------------------------------------------------------------

/// Reads the child's stdout on a thread, noting when each chunk came.
fn timed_reader(child: &mut Child) -> mpsc::Receiver<(Instant, Vec<u8>)> {
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// When the output first held `want` bytes, and when it first held more.
fn arrival(chunks: &[(Instant, Vec<u8>)], want: usize) -> (Option<Instant>, Option<Instant>) {
    let mut total = 0;
    let mut full = None;
    let mut more = None;
    for (at, chunk) in chunks {
        total += chunk.len();
        if full.is_none() && total >= want {
            full = Some(*at);
        }
        if more.is_none() && total > want {
            more = Some(*at);
        }
    }
    (full, more)
}

#[test]
fn output_without_a_newline_is_shown_when_it_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wait = Duration::from_millis(2000);
    let big = vec![b'x'; 5000];
    let cases: [(&[u8], &str); 2] = [(b"ready> ", "a prompt"), (&big, "a 5,000-byte write")];
    for kind in KINDS {
        for (first, what) in cases {
            let wasm = two_writes(dir.path(), kind, first, wait, b"done\n");
            for isolation in ISOLATIONS {
                let what = format!("{what}, {kind:?} at {isolation}");
                let mut child = spawn(&["run", "--isolation", isolation, path_str(&wasm)]);
                let err = drain_stderr(&mut child);
                let rx = timed_reader(&mut child);
                let status = wait_within(&mut child, HUNG, &what);
                let err = err.join().expect("stderr");
                assert_eq!(status.code(), Some(0), "{what}: {err}");
                let chunks: Vec<(Instant, Vec<u8>)> = rx.iter().collect();
                let all: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.clone()).collect();
                assert_eq!(all, [first, b"done\n"].concat(), "{what}");
                let (shown, done) = arrival(&chunks, first.len());
                let (shown, done) = (shown.expect("shown"), done.expect("done"));
                // The first write was on screen while the guest waited.
                assert!(
                    done.duration_since(shown) >= Duration::from_millis(700),
                    "{what}: all of it showed only {:?} before the rest",
                    done.duration_since(shown)
                );
            }
        }
    }
}

/// `isola up` shows a partial line (a prompt) with its task's prefix after a
/// short delay, not only at the newline or the exit.
#[test]
fn isola_up_shows_a_pending_partial_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = two_writes(
        dir.path(),
        GuestKind::Module,
        b"ready> ",
        Duration::from_millis(2000),
        b"done\n",
    );
    let set = write_set(
        dir.path(),
        &format!("[[task]]\nname = \"asker\"\nwasm = '{}'\n", path_str(&wasm)),
    );
    let mut child = spawn(&["up", path_str(&set)]);
    let err = drain_stderr(&mut child);
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let status = wait_within(&mut child, HUNG, "isola up");
    let err = err.join().expect("stderr");
    assert_eq!(status.code(), Some(0), "{err}");
    let lines: Vec<(Instant, String)> = rx.iter().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .find(|(_, l)| l.starts_with("asker | ") && l.contains(needle))
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no `{needle}` line: {lines:?}"))
    };
    let (prompt, done) = (at("ready>"), at("done"));
    assert!(
        done.duration_since(prompt) >= Duration::from_millis(700),
        "the prompt showed only {:?} before the rest: {lines:?}",
        done.duration_since(prompt)
    );
}

// ---------------------------------------------------------------------
// 3. Exit statuses above 255.
// ---------------------------------------------------------------------

#[test]
fn an_exit_status_above_255_is_never_success() {
    let hostile = guest("hostile", GuestKind::Module);
    for isolation in ISOLATIONS {
        for status in ["256", "512", "-1"] {
            let out = isola(&[
                "run",
                "--isolation",
                isolation,
                path_str(&hostile),
                "exit",
                status,
            ]);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "exit {status} at {isolation}: {err}"
            );
            assert!(
                err.contains(&format!("status {status}")),
                "stderr names the real status: {err}"
            );
        }
        // Within 0-255 the guest's own code is passed through.
        let out = isola(&[
            "run",
            "--isolation",
            isolation,
            path_str(&hostile),
            "exit",
            "255",
        ]);
        assert_eq!(out.status.code(), Some(255));
        assert_eq!(stderr(&out), "");
    }

    // `isola up` agrees: the task failed, with its real status.
    let dir = tempfile::tempdir().expect("tempdir");
    let set = write_set(
        dir.path(),
        &format!(
            "[[task]]\nname = \"big\"\nwasm = '{}'\nargs = [\"exit\", \"256\"]\n",
            path_str(&hostile)
        ),
    );
    let json = dir.path().join("r.json");
    let out = isola(&["up", path_str(&set), "--json", path_str(&json)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("JSON");
    assert_eq!(report["tasks"][0]["status"], "failed");
    assert_eq!(report["tasks"][0]["exit_code"], 256);
}

#[test]
fn the_library_keeps_the_full_exit_status() {
    let hostile = guest("hostile", GuestKind::Module);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for isolation in [Isolation::Thread, Isolation::Process] {
            let mut spec = TaskSpec::new(&hostile);
            spec.isolation = isolation;
            spec.args = vec!["exit".into(), "256".into()];
            let report = isola_tests::runner().run(spec).await.expect("runs");
            assert_eq!(
                report.outcome,
                Outcome::Exited { code: 256 },
                "{isolation:?}"
            );
            assert!(!report.outcome.is_success());
        }
    });
}

// ---------------------------------------------------------------------
// 4. Termination signals.
// ---------------------------------------------------------------------

/// A guest that prints `started` and then waits about a minute.
fn sleeper(dir: &Path, kind: GuestKind) -> PathBuf {
    two_writes(dir, kind, b"started\n", Duration::from_secs(60), b"woke\n")
}

/// Waits for the child's first stdout line (`started`).
fn wait_for_start(child: &mut Child, what: &str) -> std::thread::JoinHandle<String> {
    let out = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(out);
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_eq!(first, "started\n", "{what}");
    drain(reader)
}

#[test]
fn a_termination_signal_cancels_the_task_and_exits_128_plus_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in KINDS {
        let wasm = sleeper(dir.path(), kind);
        for isolation in ISOLATIONS {
            for (signal, name, code) in [
                (SIGTERM, "SIGTERM", 143),
                (SIGHUP, "SIGHUP", 129),
                (SIGINT, "SIGINT", 130),
            ] {
                let what = format!("{name} to isola run, {kind:?} at {isolation}");
                let mut child = spawn(&["run", "--isolation", isolation, path_str(&wasm)]);
                let err = drain_stderr(&mut child);
                let rest = wait_for_start(&mut child, &what);
                let workers = children_of(child.id());
                send_signal(child.id(), signal).expect("signal");
                let status = wait_within(&mut child, Duration::from_secs(15), &what);
                let err = err.join().expect("stderr");
                let _ = rest.join();
                assert_eq!(status.code(), Some(code), "{what}: {err}");
                assert!(err.contains(name), "{what}: stderr names the signal: {err}");
                assert!(
                    wait_until(Duration::from_secs(10), || !workers
                        .iter()
                        .any(|&p| is_alive(p))),
                    "{what}: nothing left running"
                );
            }
        }
    }
}

#[test]
fn a_second_termination_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = sleeper(dir.path(), GuestKind::Module);
    let mut child = spawn(&["run", path_str(&wasm)]);
    let err = drain_stderr(&mut child);
    let rest = wait_for_start(&mut child, "sleeper");
    send_signal(child.id(), SIGTERM).expect("signal");
    send_signal(child.id(), SIGTERM).expect("signal");
    let status = wait_within(&mut child, Duration::from_secs(10), "two SIGTERMs");
    let _ = (err.join(), rest.join());
    assert_eq!(status.code(), Some(143));
}

#[test]
fn isola_up_on_sigterm_cancels_summarizes_and_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let thread = sleeper(dir.path(), GuestKind::Module);
    let process = sleeper(dir.path(), GuestKind::Component);
    let set = write_set(
        dir.path(),
        &format!(
            r#"
[[task]]
name = "sleeper"
wasm = '{t}'

[[task]]
name = "worker"
wasm = '{p}'
isolation = "process"
"#,
            t = path_str(&thread),
            p = path_str(&process),
        ),
    );
    for (signal, name, code) in [(SIGTERM, "SIGTERM", 143), (SIGHUP, "SIGHUP", 129)] {
        let json = dir.path().join(format!("{name}.json"));
        let mut child = spawn(&[
            "up",
            path_str(&set),
            "--jobs",
            "2",
            "--json",
            path_str(&json),
        ]);
        let err = drain_stderr(&mut child);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut seen = Vec::new();
        while !(seen.iter().any(|l: &String| l == "sleeper | started")
            && seen.iter().any(|l| l == "worker  | started"))
        {
            match lines.next() {
                Some(line) => seen.push(line.expect("line")),
                None => panic!("isola up ended early: {seen:?}"),
            }
        }
        send_signal(child.id(), signal).expect("signal");
        seen.extend(lines.map_while(Result::ok));
        let status = wait_within(&mut child, HUNG, name);
        let err = err.join().expect("stderr");
        let text = seen.join("\n");
        assert_eq!(status.code(), Some(code), "{name}: {text}\n{err}");
        assert!(
            text.contains("TASK"),
            "{name}: the summary is printed: {text}"
        );
        assert!(text.contains("CANCELLED"), "{name}: {text}");
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&json).unwrap_or_else(|e| panic!("{name}: the JSON is written: {e}")),
        )
        .expect("JSON");
        for task in report["tasks"].as_array().expect("tasks") {
            assert_eq!(task["status"], "cancelled", "{name}: {task}");
        }
    }
}

// ---------------------------------------------------------------------
// 5. Large inputs to process tasks.
// ---------------------------------------------------------------------

/// `isola run --isolation process` copies a large stdin in full.
#[test]
fn a_large_stdin_crosses_to_a_process_task_in_full() {
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for kind in KINDS {
        let echo = guest("echo_cli", kind);
        for isolation in ISOLATIONS {
            let what = format!("{kind:?} at {isolation}");
            let mut child = spawn(&["run", "--isolation", isolation, path_str(&echo), "stdin"]);
            let mut input = child.stdin.take().expect("stdin");
            let sent = data.clone();
            let feeder = std::thread::spawn(move || input.write_all(&sent));
            let out = drain_bytes(child.stdout.take().expect("stdout"));
            let err = drain_stderr(&mut child);
            let status = wait_within(&mut child, Duration::from_secs(120), &what);
            feeder.join().expect("feeder").expect("all of stdin taken");
            let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
            assert_eq!(status.code(), Some(0), "{what}: {err}");
            assert_eq!(out.len(), data.len(), "{what}: no truncation");
            assert!(out == data, "{what}: the same bytes");
        }
    }
}

/// Start input and stdin bytes of tens of MiB reach a process task in full
/// (they travel as raw data frames, not JSON inside the run frame), as they
/// do a thread task.
#[test]
fn large_start_input_and_stdin_bytes_reach_process_tasks() {
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i ^ (i >> 7)) as u8).collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let runner = isola_tests::runner();
        for kind in KINDS {
            for isolation in [Isolation::Thread, Isolation::Process] {
                let what = format!("{kind:?} at {isolation:?}");
                // Stdin bytes, copied to stdout.
                let mut spec = TaskSpec::new(guest("echo_cli", kind));
                spec.isolation = isolation;
                spec.args = vec!["stdin".into()];
                spec.stdin = Stdin::Bytes(big.clone());
                spec.limits.capture = ByteSize::mib(32);
                let report = runner
                    .run(spec)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: stdin bytes accepted: {e}"));
                assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{what}");
                assert!(report.stdout.bytes == big, "{what}: stdin arrived in full");

                // Start input, which the echo guest posts back first.
                let mut spec = TaskSpec::new(guest("echo", kind));
                spec.isolation = isolation;
                spec.input = Some(big.clone());
                spec.limits.max_message_size = ByteSize::mib(32);
                let mut handle = runner
                    .spawn(spec)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: input accepted: {e}"));
                handle.close_channel();
                let mut messages = handle.take_messages().expect("messages");
                let first = messages.recv().await.expect("the input, posted back");
                assert!(first[..] == big[..], "{what}: input arrived in full");
                let report = handle.wait().await;
                assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{what}");
            }
        }
    });
}

/// An input larger than one IPC frame (64 MiB) reaches a process plugin:
/// 65 MiB of spaces around `41`, which the plugin trims and answers 42.
#[test]
fn isola_call_takes_an_input_larger_than_a_frame_at_both_isolations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("input");
    let mut input = vec![b' '; 65 << 20];
    input.extend_from_slice(b"41 ");
    std::fs::write(&file, input).expect("write");
    let at = format!("@{}", path_str(&file));
    for kind in KINDS {
        let plugin = guest("plugin", kind);
        for isolation in ISOLATIONS {
            let out = isola(&[
                "call",
                "--isolation",
                isolation,
                path_str(&plugin),
                "--input",
                &at,
            ]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(0), "{kind:?} at {isolation}: {err}");
            assert_eq!(stdout(&out), "42", "{kind:?} at {isolation}");
        }
    }
}

// ---------------------------------------------------------------------
// One huge write.
// ---------------------------------------------------------------------

/// One `fd_write` of 128 MiB to stdout: exits with the errno if it fails,
/// 99 if it wrote less than all of it.
const P1_HUGE_WRITE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2049)
  (func (export "_start") (local $errno i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 134217728))
    (local.set $errno (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (if (i32.ne (i32.load (i32.const 8)) (i32.const 134217728))
      (then (call $proc_exit (i32.const 99))))))
"#;

/// wasmtime's default of 128 MiB of "hostcall fuel" failed such a write
/// with `nomem` (48) before writing anything.
#[test]
fn one_write_of_128_mib_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = isola_tests::wat_file(dir.path(), "huge-write.wasm", P1_HUGE_WRITE);
    for isolation in ISOLATIONS {
        let mut child = spawn(&["run", "--isolation", isolation, path_str(&wasm)]);
        let out = child.stdout.take().expect("stdout");
        let counted = std::thread::spawn(move || {
            let mut out = out;
            std::io::copy(&mut out, &mut std::io::sink()).expect("read")
        });
        let err = drain_stderr(&mut child);
        let status = wait_within(&mut child, Duration::from_secs(120), isolation);
        let err = err.join().expect("stderr");
        assert_eq!(status.code(), Some(0), "{isolation}: {err}");
        assert_eq!(counted.join().expect("count"), 128 << 20, "{isolation}");
    }
}

// ---------------------------------------------------------------------
// 6. wasmtime-style invocation and CLI errors.
// ---------------------------------------------------------------------

#[test]
fn everything_after_the_wasm_file_goes_to_the_guest() {
    for kind in KINDS {
        let echo = guest("echo_cli", kind);
        let out = isola(&[
            "run",
            path_str(&echo),
            "args",
            "a",
            "b",
            "-c",
            "--fuel",
            "1",
        ]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "a\nb\n-c\n--fuel\n1\n", "{kind:?}");
        // `--` after the file still works, and is not passed on.
        let out = isola(&["run", path_str(&echo), "--", "args", "--help"]);
        assert_eq!(stdout(&out), "--help\n", "{kind:?}: {}", stderr(&out));
    }
}

#[test]
fn wasmtime_spellings_of_the_limits_work_and_others_are_explained() {
    let hostile = guest("hostile", GuestKind::Module);
    let h = path_str(&hostile);
    let out = isola(&["run", "-W", "fuel=1000000", h, "loop"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("--fuel"), "{}", stderr(&out));
    let out = isola(&["run", "-W", "timeout=300ms", h, "loop"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    let out = isola(&["run", "-W", "max-memory-size=33554432", h, "alloc-bomb"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("32.0 MiB"), "{}", stderr(&out));

    let out = isola(&["run", "-W", "memory64=y", h, "loop"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max-memory-size"), "{}", stderr(&out));
    let out = isola(&["run", "-S", "inherit-network", h, "loop"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("network"), "{}", stderr(&out));
}

#[test]
fn cli_errors_name_cli_flags() {
    let hello = guest("hello", GuestKind::Module);
    let out = isola(&["run", "--dir", "/nonexistent-isola-dir", path_str(&hello)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--dir /nonexistent-isola-dir"), "{err}");
    assert!(!err.contains("dirs[0]"), "{err}");
    let out = isola(&["run", "--fuel", "0", path_str(&hello)]);
    assert!(stderr(&out).contains("--fuel"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("limits.fuel"), "{}", stderr(&out));

    let out = isola(&["call", "--help"]);
    let help = stdout(&out);
    assert!(help.contains("the plugin returned an error"), "{help}");
    assert!(!help.contains("the guest's own exit code"), "{help}");

    let out = isola(&["call", path_str(&hello), "--input", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("core module"), "{err}");
    assert!(!err.contains("component"), "{err}");
}

#[test]
fn wat_text_runs_like_wasm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wat = dir.path().join("hello.wat");
    let text = P1_TWO_WRITES
        .replace("FIRST_LEN", "3")
        .replace("SECOND_LEN", "4")
        .replace("FIRST", "hi ")
        .replace("SECOND", "wat\\0a")
        .replace("WAIT_NS", "0");
    std::fs::write(&wat, text).expect("write");
    for isolation in ISOLATIONS {
        let out = isola(&["run", "--isolation", isolation, path_str(&wat)]);
        assert_eq!(out.status.code(), Some(0), "{isolation}: {}", stderr(&out));
        assert_eq!(stdout(&out), "hi wat\n", "{isolation}");
    }
}

// ---------------------------------------------------------------------
// The console of `isola up`.
// ---------------------------------------------------------------------

/// Runs `isola up` under a pseudo-terminal of `columns` columns (`script`
/// from util-linux) with `env`; returns its exit code and what it drew.
fn up_on_a_terminal(
    set: &Path,
    columns: u16,
    extra: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let command = format!(
        "stty cols {columns} rows 24; {} up {} {extra}",
        isola_bin().display(),
        set.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qefc", &command, "/dev/null"])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .env_remove("CI")
        .stdin(Stdio::null());
    for (key, value) in env {
        script.env(key, value);
    }
    let out = script.output().expect("script(1) runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `text` without ANSI escape sequences.
fn without_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next_if_eq(&'[').is_some() {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn hello_set(dir: &Path) -> PathBuf {
    let hello = guest("hello", GuestKind::Module);
    write_set(
        dir,
        &format!(
            "[[task]]\nname = \"first-task-with-a-long-name\"\nwasm = '{h}'\n\n\
             [[task]]\nname = \"second\"\nwasm = '{h}'\ndepends_on = [\"first-task-with-a-long-name\"]\n",
            h = path_str(&hello)
        ),
    )
}

#[test]
fn the_progress_line_never_wraps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = hello_set(dir.path());
    let (code, screen) = up_on_a_terminal(&set, 38, "", &[]);
    assert_eq!(code, Some(0), "{screen:?}");
    let plain = without_escapes(&screen);
    let progress: Vec<&str> = plain
        .split(['\r', '\n'])
        .filter(|piece| piece.contains("queued,"))
        .collect();
    assert!(
        !progress.is_empty(),
        "a progress line was drawn: {screen:?}"
    );
    for piece in progress {
        assert!(
            piece.chars().count() < 38,
            "{piece:?} is wider than 37 columns"
        );
    }
}

#[test]
fn colors_follow_the_flag_and_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = hello_set(dir.path());
    let sgr = |text: &str| text.contains("\u{1b}[");

    let (_, screen) = up_on_a_terminal(&set, 120, "", &[]);
    assert!(sgr(&screen), "colors on a terminal: {screen:?}");
    let (_, screen) = up_on_a_terminal(&set, 120, "", &[("NO_COLOR", "1")]);
    assert!(!without_escapes(&screen).is_empty());
    assert!(
        !screen.contains("\u{1b}[3"),
        "NO_COLOR: no colored names: {screen:?}"
    );
    let (_, screen) = up_on_a_terminal(&set, 120, "--color never", &[]);
    assert!(!screen.contains("\u{1b}[3"), "--color never: {screen:?}");
    let (_, screen) = up_on_a_terminal(&set, 120, "", &[("TERM", "dumb")]);
    assert!(!sgr(&screen), "TERM=dumb: no escapes at all: {screen:?}");
    // CI systems set `CI`; a dumb terminal stays dumb there too.
    let (_, screen) = up_on_a_terminal(&set, 120, "", &[("TERM", "dumb"), ("CI", "true")]);
    assert!(!sgr(&screen), "TERM=dumb with CI set: {screen:?}");

    // Into a pipe: plain unless forced.
    let out = isola(&["up", path_str(&set)]);
    assert!(!sgr(&stdout(&out)));
    let out = isola(&["up", "--color", "always", path_str(&set)]);
    assert!(sgr(&stdout(&out)), "--color always: {}", stdout(&out));
    let forced = Command::new(isola_bin())
        .args(["up", path_str(&set)])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("CLICOLOR_FORCE", "1")
        .env_remove("NO_COLOR")
        .output()
        .expect("isola up");
    assert!(
        sgr(&String::from_utf8_lossy(&forced.stdout)),
        "CLICOLOR_FORCE"
    );
}

#[test]
fn guest_escape_sequences_are_stripped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = guest("echo_cli", GuestKind::Module);
    let set = write_set(
        dir.path(),
        &format!(
            "[[task]]\nname = \"painter\"\nwasm = '{}'\nargs = [\"args\", \"\\u001b[31mred\\u001b[0m and \\u001b[2Jplain\"]\n",
            path_str(&echo)
        ),
    );
    let out = isola(&["up", path_str(&set)]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("painter | red and plain\n"), "{text}");
    assert!(
        !text.contains("u{1b}") && !text.contains('\u{1b}'),
        "{text}"
    );
}

#[test]
fn json_goes_to_stdout_with_a_dash_and_a_bad_path_is_refused_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = guest("echo_cli", GuestKind::Module);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let set = write_set(
        dir.path(),
        &format!(
            "[[task]]\nname = \"marker\"\nwasm = '{}'\nargs = [\"write\", \"/out/marker\", \"x\"]\n\
             dirs = [{{ host = \"out\", guest = \"/out\", writable = true }}]\n",
            path_str(&echo)
        ),
    );
    let out = Command::new(isola_bin())
        .args(["up", path_str(&set), "--json", "-"])
        .current_dir(dir.path())
        .env("ISOLA_CACHE_DIR", shared_cache())
        .output()
        .expect("isola up");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["tasks"][0]["status"], "succeeded");
    assert!(!dir.path().join("-").exists(), "no file named `-`");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("marker"),
        "the console went to stderr"
    );

    std::fs::remove_file(out_dir.join("marker")).expect("the task ran");
    let out = isola(&[
        "up",
        path_str(&set),
        "--json",
        "/nonexistent-isola-dir/r.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--json"), "{}", stderr(&out));
    assert!(
        !out_dir.join("marker").exists(),
        "refused before any task ran"
    );
}

#[test]
fn json_records_use_milliseconds_and_carry_a_failed_tasks_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = guest("hostile", GuestKind::Module);
    let echo = guest("echo_cli", GuestKind::Module);
    let set = write_set(
        dir.path(),
        &format!(
            "[[task]]\nname = \"slow\"\nwasm = '{h}'\nargs = [\"loop\"]\nlimits = {{ timeout = \"200ms\" }}\n\n\
             [[task]]\nname = \"unset\"\nwasm = '{e}'\nargs = [\"env-get\", \"MISSING\"]\n",
            h = path_str(&hostile),
            e = path_str(&echo)
        ),
    );
    let json = dir.path().join("r.json");
    let out = isola(&["up", path_str(&set), "--json", path_str(&json)]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("JSON");
    let task = |name: &str| {
        report["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let limit = &task("slow")["outcome"]["limit"];
    assert_eq!(limit["after_ms"], 200.0, "{limit}");
    assert!(limit.get("after").is_none(), "{limit}");
    assert_eq!(
        task("unset")["stderr_tail"],
        serde_json::json!(["missing: MISSING"])
    );
    // The summary explains why `slow`'s wall time reads longer than 200ms.
    assert!(
        stdout(&out).contains("note: WALL includes start-up"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn large_numbers_in_the_summary_are_grouped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = guest("hostile", GuestKind::Module);
    let set = write_set(
        dir.path(),
        &format!(
            "[[task]]\nname = \"burn\"\nwasm = '{}'\nargs = [\"loop\"]\nlimits = {{ fuel = 2_000_000 }}\n",
            path_str(&hostile)
        ),
    );
    let out = isola(&["up", path_str(&set)]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("2,000,000"), "{text}");
}
