//! Task sets: `tasks.toml` and its errors, the scheduler (dependencies,
//! the concurrency bound, restarts, cancellation, fail-fast, records and
//! metrics), and `isola check` / `isola up` as users run them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isola::config::{ConfigError, ConfigErrorKind, RestartPolicy, TaskConfig, TaskSet};
use isola::taskset::{Event, Scheduler, SetReport, SkipReason, StopReason, TaskRecord, TaskStatus};
use isola::{ByteSize, DirGrant, Isolation, Limit, Outcome, Stdin, TaskSpec};
use isola_tests::{GuestKind, guest, isola, isola_bin, runner, shared_cache, stderr, stdout};

/// A guest's path, for writing into a `tasks.toml`.
fn wasm(name: &str) -> String {
    guest(name, GuestKind::Module)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// `toml` with `{hello}`, `{echo}`, `{echo2}` (the component) and
/// `{hostile}` replaced by guest paths, written to `dir/tasks.toml`.
fn write_set(dir: &Path, toml: &str) -> PathBuf {
    let toml = toml
        .replace("{hello}", &wasm("hello"))
        .replace("{echo}", &wasm("echo_cli"))
        .replace(
            "{echo2}",
            guest("echo_cli", GuestKind::Component)
                .to_str()
                .expect("utf-8"),
        )
        .replace("{hostile}", &wasm("hostile"));
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write tasks.toml");
    path
}

fn load(toml: &str) -> (tempfile::TempDir, TaskSet) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(dir.path(), toml);
    let set = TaskSet::load(&path).unwrap_or_else(|e| panic!("valid set:\n{e}"));
    (dir, set)
}

/// Line and column (from 1) of the `nth` occurrence of `needle` in `text`.
fn position(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` #{nth} not in the source"))
        .0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The error whose display ends with `message`, checked to sit at the
/// position of `needle` (its `nth` occurrence) and to be of `kind`.
fn expect_error(
    errors: &[ConfigError],
    source: &str,
    kind: ConfigErrorKind,
    (needle, nth): (&str, usize),
    line: &str,
) {
    let (l, c) = position(source, needle, nth);
    let found = errors
        .iter()
        .find(|e| e.to_string().ends_with(&format!(":{l}:{c}: {line}")));
    let error = found.unwrap_or_else(|| {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("no error `{l}:{c}: {line}` among:\n{}", all.join("\n"))
    });
    assert_eq!(error.kind, kind, "{error}");
}

#[test]
fn every_config_error_is_reported_at_once_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "not wasm").expect("write");
    let source = r#"[defaults]
name = "shared"
limits = { timeout = "soon" }

[[task]]
name = "a"
wasm = '{hello}'
args = "one"
dependson = ["b"]
depends_on = ["b", "ghost"]

[[task]]
name = "b"
wasm = '{hello}'
depends_on = ["a"]
isolation = "vm"
limits = { max_memory = "lots", fuel = -1, cpu = 1 }

[[task]]
name = "a"
wasm = "missing.wasm"
dirs = [{ host = "nope", guest = "/x" }, { guest = "/y" }]
stdin = { file = "in.txt", text = "x" }
input = "x"
input_file = "data.bin"
env = { GOOD = "yes", BAD = 1 }

[[task]]
wasm = '{hello}'
restart = "on-crash"

[[task]]
name = "bad name!"
wasm = "notes.txt"
max_restarts = 2
reuse_worker = true
"#;
    let path = write_set(dir.path(), source);
    let source = std::fs::read_to_string(&path).expect("read back");
    let errors = TaskSet::load(&path).expect_err("invalid set");
    let errors = errors.errors();
    use ConfigErrorKind as K;
    let cases: &[(K, (&str, usize), &str)] = &[
        (
            K::UnknownField,
            ("name", 0),
            "[defaults]: field `name`: `name` cannot be set in [defaults]; it belongs in each [[task]]",
        ),
        (
            K::InvalidValue,
            ("\"soon\"", 0),
            "[defaults]: field `limits.timeout`: \"soon\" is not a duration; use one like \"1.5s\", \"500ms\" or \"2m\"",
        ),
        (
            K::WrongType,
            ("\"one\"", 0),
            "task `a`: field `args`: expected an array of strings, found a string",
        ),
        (
            K::UnknownField,
            ("dependson", 0),
            "task `a`: field `dependson`: unknown field `dependson`; did you mean `depends_on`?",
        ),
        (
            K::UnknownDependency,
            ("\"ghost\"", 0),
            "task `a`: field `depends_on[1]`: no task is named `ghost`",
        ),
        (
            K::Cycle,
            ("\"a\"]", 0),
            "task `b`: field `depends_on[0]`: dependency cycle: a -> b -> a",
        ),
        (
            K::InvalidValue,
            ("\"vm\"", 0),
            "task `b`: field `isolation`: expected \"thread\" or \"process\", found \"vm\"",
        ),
        (
            K::InvalidValue,
            ("\"lots\"", 0),
            "task `b`: field `limits.max_memory`: \"lots\" is not a size; use one like \"64MiB\", \"512KiB\" or \"1GiB\"",
        ),
        (
            K::InvalidValue,
            ("-1", 0),
            "task `b`: field `limits.fuel`: must not be negative, found -1",
        ),
        (
            K::UnknownField,
            ("cpu", 0),
            "task `b`: field `limits.cpu`: unknown field `cpu`; expected one of `max_memory`, `fuel`, `timeout`, `max_output`, `capture`, `process_memory`, `message_queue`, `max_message_size` or `max_messages`",
        ),
        (
            K::DuplicateName,
            ("\"a\"", 2),
            "task `a`: field `name`: the name `a` is already used by task #1; task names must be unique",
        ),
        (
            K::MissingFile,
            ("\"missing.wasm\"", 0),
            &format!(
                "task `a`: field `wasm`: `{}` does not exist (relative paths start from the directory of the config file)",
                dir.path().join("missing.wasm").display()
            ),
        ),
        (
            K::MissingFile,
            ("\"nope\"", 0),
            &format!(
                "task `a`: field `dirs[0].host`: `{}` does not exist (relative paths start from the directory of the config file)",
                dir.path().join("nope").display()
            ),
        ),
        (
            K::MissingField,
            ("{ guest = \"/y\" }", 0),
            "task `a`: field `dirs[1].host`: a directory grant needs a `host` directory",
        ),
        (
            K::MissingFile,
            ("\"in.txt\"", 0),
            &format!(
                "task `a`: field `stdin.file`: `{}` does not exist (relative paths start from the directory of the config file)",
                dir.path().join("in.txt").display()
            ),
        ),
        (
            K::Conflict,
            ("text", 0),
            "task `a`: field `stdin.text`: `stdin` takes either `text` or `file`, not both",
        ),
        (
            K::Conflict,
            ("input_file", 0),
            "task `a`: field `input_file`: `input` and `input_file` cannot both be set",
        ),
        (
            K::WrongType,
            ("1 }", 1),
            "task `a`: field `env.BAD`: expected a string, found an integer",
        ),
        (
            K::MissingField,
            ("[[task]]", 3),
            "task #4: field `name`: every [[task]] needs a `name`",
        ),
        (
            K::Conflict,
            ("\"on-crash\"", 0),
            "task #4: field `restart`: restarts apply only to process tasks (a thread task cannot crash); set `isolation = \"process\"`",
        ),
        (
            K::InvalidValue,
            ("\"bad name!\"", 0),
            "task #5: field `name`: `bad name!` is not a valid task name: use letters, digits, `-`, `_` and `.`, starting with a letter or digit",
        ),
        (
            K::InvalidValue,
            ("\"notes.txt\"", 0),
            &format!(
                "task #5: field `wasm`: `{}` is not a WebAssembly file (it does not start with `\\0asm`)",
                dir.path().join("notes.txt").display()
            ),
        ),
        (
            K::Conflict,
            ("2\n", 0),
            "task #5: field `max_restarts`: restarts apply only to process tasks (a thread task cannot crash); set `isolation = \"process\"`",
        ),
        (
            K::Conflict,
            ("true", 0),
            "task #5: field `reuse_worker`: only process tasks have a worker to reuse; set `isolation = \"process\"` or leave `reuse_worker` out",
        ),
    ];
    for (kind, at, line) in cases {
        expect_error(errors, &source, *kind, *at, line);
    }
    assert_eq!(
        errors.len(),
        cases.len(),
        "exactly these errors: {:#?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    // In file order, and each line starts with the file.
    let lines: Vec<usize> = errors
        .iter()
        .map(|e| e.location.expect("located").line)
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    let prefix = format!("{}:", path.display());
    assert!(errors.iter().all(|e| e.to_string().starts_with(&prefix)));
}

#[test]
fn syntax_errors_unknown_tables_and_unreadable_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(dir.path(), "[[task]]\nname = \"a\"\nargs = [1,\n");
    let errors = TaskSet::load(&path).expect_err("bad TOML");
    let first = &errors.errors()[0];
    assert_eq!(first.kind, ConfigErrorKind::Syntax);
    assert!(
        first
            .to_string()
            .starts_with(&format!("{}:3:", path.display())),
        "{first}"
    );
    assert!(first.message.starts_with("invalid TOML: "), "{first}");

    let path = write_set(dir.path(), "[[tasks]]\nname = \"a\"\n");
    let errors = TaskSet::load(&path).expect_err("unknown table");
    assert_eq!(
        errors.to_string(),
        format!(
            "{}:1:3: field `tasks`: unknown field `tasks`; did you mean `task`?",
            path.display()
        )
    );

    let path = write_set(dir.path(), "# nothing here\n");
    let errors = TaskSet::load(&path).expect_err("no tasks");
    assert_eq!(errors.errors()[0].kind, ConfigErrorKind::MissingField);
    assert!(
        errors
            .to_string()
            .ends_with("no tasks: add at least one [[task]] table")
    );

    let missing = dir.path().join("absent.toml");
    let errors = TaskSet::load(&missing).expect_err("no file");
    assert_eq!(errors.errors()[0].kind, ConfigErrorKind::Io);
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}: cannot read the task set:", missing.display())),
        "{errors}"
    );
}

#[test]
fn a_config_maps_onto_task_specs_with_defaults_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    std::fs::write(dir.path().join("in.txt"), "stdin from a file").expect("write");
    std::fs::write(dir.path().join("input.bin"), [0u8, 1, 2, 255]).expect("write");
    let source = r#"
[defaults]
wasm = '{echo}'
env = { SHARED = "1", OVERRIDDEN = "default" }
inherit_env = ["HOME"]
limits = { max_memory = "64MiB", timeout = "1.5s" }
isolation = "process"
restart = "on-crash"

[[task]]
name = "full"
argv0 = "prog"
args = ["cat", "x"]
env = { OVERRIDDEN = "task", OWN = "2" }
dirs = [{ host = "data", guest = "/data", writable = true }, { host = "data" }]
stdin = { file = "in.txt" }
input_file = "input.bin"
limits = { fuel = 1000, max_output = "1KiB" }
max_restarts = 5

[[task]]
name = "plain"
isolation = "thread"
stdin = { text = "typed" }
input = "hello"
depends_on = ["full", "full"]
"#;
    let path = write_set(dir.path(), source);
    let set = TaskSet::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), 2);
    assert_eq!(set.path(), Some(path.as_path()));

    let full = set.get("full").expect("full");
    let mut expected = TaskSpec::new(guest("echo_cli", GuestKind::Module));
    expected.argv0 = Some("prog".into());
    expected.args = vec!["cat".into(), "x".into()];
    expected.env = [("OVERRIDDEN", "task"), ("OWN", "2"), ("SHARED", "1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    expected.inherit_env = vec!["HOME".into()];
    expected.dirs = vec![
        DirGrant {
            host: dir.path().join("data"),
            guest: Some("/data".into()),
            writable: true,
        },
        DirGrant {
            host: dir.path().join("data"),
            guest: None,
            writable: false,
        },
    ];
    expected.stdin = Stdin::File(dir.path().join("in.txt"));
    expected.input = Some(vec![0, 1, 2, 255]);
    expected.limits.max_memory = ByteSize::mib(64);
    expected.limits.timeout = Some(Duration::from_millis(1500));
    expected.limits.fuel = Some(1000);
    expected.limits.max_output = Some(ByteSize::kib(1));
    expected.isolation = Isolation::Process;
    assert_eq!(full.spec, expected);
    assert_eq!(full.restart, RestartPolicy::OnCrash { max_restarts: 5 });
    assert!(full.depends_on.is_empty());

    let plain = set.get("plain").expect("plain");
    assert_eq!(plain.spec.isolation, Isolation::Thread);
    assert_eq!(plain.spec.stdin, Stdin::Bytes(b"typed".to_vec()));
    assert_eq!(plain.spec.input, Some(b"hello".to_vec()));
    assert_eq!(plain.spec.env.len(), 2, "the defaults' env only");
    assert_eq!(
        plain.restart,
        RestartPolicy::Never,
        "the defaults' restart policy applies to process tasks only"
    );
    assert_eq!(
        plain.depends_on,
        ["full"],
        "a repeated dependency counts once"
    );
}

#[test]
fn sets_built_in_code_are_checked_too() {
    let spec = || TaskSpec::new("x.wasm");
    let mut a = TaskConfig::new("a", spec());
    a.depends_on = vec!["b".into()];
    let mut b = TaskConfig::new("b", spec());
    b.depends_on = vec!["a".into(), "zzz".into()];
    let dup = TaskConfig::new("a", spec());
    let mut restarting = TaskConfig::new("r", spec());
    restarting.restart = RestartPolicy::OnCrash { max_restarts: 1 };
    let errors = TaskSet::new(vec![a, b, dup, restarting]).expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "task `r`: field `restart`: restarts apply only to process tasks (a thread task cannot crash); set `isolation = \"process\"`",
            "task `a`: field `name`: the name `a` is already used by task #1; task names must be unique",
            "task `b`: field `depends_on[1]`: no task is named `zzz`",
            "task `b`: field `depends_on[0]`: dependency cycle: a -> b -> a",
        ]
    );
}

#[test]
fn spec_problems_in_every_task_are_reported_at_once_at_their_keys() {
    // Each task breaks a rule of the spec (the rulebook the runner applies
    // too); a bad value in [defaults] is reported there, once, though two
    // tasks inherit it.
    let dir = tempfile::tempdir().expect("tempdir");
    let source = r#"[defaults]
limits = { message_queue = 0 }

[[task]]
name = "a"
wasm = '{hello}'
args = ["fine", "nul\u0000here"]
reuse_worker = true
limits = { fuel = 0, message_queue = 8 }

[[task]]
name = "b"
wasm = '{hello}'
isolation = "process"
env = { "BAD=NAME" = "x", GOOD = "ok" }
inherit_env = ["HOME", "GOOD"]
limits = { max_message_size = "64MiB", timeout = "0s" }

[[task]]
name = "c"
wasm = '{hello}'
argv0 = "a\u0000b"
dirs = [{ host = ".", guest = "" }]
"#;
    let path = write_set(dir.path(), source);
    let source = std::fs::read_to_string(&path).expect("read back");
    let errors = TaskSet::load(&path).expect_err("invalid set");
    let errors = errors.errors();
    use ConfigErrorKind as K;
    let frame = format!(
        "task `b`: field `limits.max_message_size`: process tasks carry messages in IPC frames of at most {}: use a smaller size or `isolation = \"thread\"`",
        ByteSize::mib(64)
    );
    let cases: &[(K, (&str, usize), &str)] = &[
        (
            K::InvalidValue,
            ("0 }", 0),
            "[defaults]: field `limits.message_queue`: must be at least 1",
        ),
        (
            K::InvalidValue,
            ("\"nul\\u0000here\"", 0),
            "task `a`: field `args[1]`: contains a NUL character",
        ),
        (
            K::Conflict,
            ("true", 0),
            "task `a`: field `reuse_worker`: only process tasks have a worker to reuse; set `isolation = \"process\"` or leave `reuse_worker` out",
        ),
        (
            K::InvalidValue,
            ("0, message_queue", 0),
            "task `a`: field `limits.fuel`: must be at least 1",
        ),
        (
            K::InvalidValue,
            ("\"BAD=NAME\"", 0),
            "task `b`: field `env.BAD=NAME`: a variable name must be non-empty and contain no `=`",
        ),
        (
            K::Conflict,
            ("\"GOOD\"]", 0),
            "task `b`: field `inherit_env[1]`: `GOOD` also has a value in `env`: give a variable a value or pass the host's through, not both",
        ),
        (K::Conflict, ("\"64MiB\"", 0), &frame),
        (
            K::InvalidValue,
            ("\"0s\"", 0),
            "task `b`: field `limits.timeout`: must be longer than zero",
        ),
        (
            K::InvalidValue,
            ("\"a\\u0000b\"", 0),
            "task `c`: field `argv0`: contains a NUL character",
        ),
        (
            K::InvalidValue,
            ("\"\" }", 0),
            "task `c`: field `dirs[0].guest`: the guest path is empty",
        ),
    ];
    for (kind, at, line) in cases {
        expect_error(errors, &source, *kind, *at, line);
    }
    assert_eq!(
        errors.len(),
        cases.len(),
        "exactly these errors: {:#?}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    let lines: Vec<usize> = errors
        .iter()
        .map(|e| e.location.expect("located").line)
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");

    // Fixed, the same set loads.
    let fixed = source
        .replace("message_queue = 0", "message_queue = 1")
        .replace("\"nul\\u0000here\"", "\"nul\"")
        .replace("reuse_worker = true", "reuse_worker = false")
        .replace("fuel = 0,", "fuel = 1,")
        .replace("\"BAD=NAME\"", "BAD_NAME")
        .replace("\"HOME\", \"GOOD\"", "\"HOME\"")
        .replace("\"64MiB\"", "\"1MiB\"")
        .replace("\"0s\"", "\"1s\"")
        .replace("\"a\\u0000b\"", "\"ab\"")
        .replace("guest = \"\"", "guest = \"/d\"");
    std::fs::write(&path, fixed).expect("write");
    let set = TaskSet::load(&path).unwrap_or_else(|e| panic!("fixed set:\n{e}"));
    assert_eq!(set.len(), 3);
}

#[test]
fn every_limit_is_accepted_in_defaults_and_tasks_and_reaches_the_spec() {
    use isola::Limits;
    // The keys are exactly the fields of `Limits`, by their serialized names.
    let json = serde_json::to_value(Limits::default()).expect("limits as JSON");
    let mut fields: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut keys = isola::config::LIMIT_KEYS.to_vec();
    keys.sort_unstable();
    assert_eq!(keys, fields);

    let (_dir, set) = load(
        r#"
[defaults]
limits = { capture = "1MiB", message_queue = 16, max_message_size = 4096, max_messages = 100 }

[[task]]
name = "every"
wasm = '{hello}'
isolation = "process"
limits = { max_memory = "32MiB", fuel = 5000, timeout = "2s", max_output = "2KiB", capture = 512, process_memory = "600MiB", message_queue = 3, max_message_size = "1MiB", max_messages = 7 }

[[task]]
name = "merged"
wasm = '{hello}'
limits = { max_messages = 9, max_output = 100 }
"#,
    );
    // Every field named, so a new limit must be added here too.
    let every = Limits {
        max_memory: ByteSize::mib(32),
        fuel: Some(5000),
        timeout: Some(Duration::from_secs(2)),
        max_output: Some(ByteSize::kib(2)),
        capture: ByteSize(512),
        process_memory: Some(ByteSize::mib(600)),
        message_queue: 3,
        max_message_size: ByteSize::mib(1),
        max_messages: Some(7),
    };
    assert_eq!(set.get("every").expect("every").spec.limits, every);
    let merged = Limits {
        capture: ByteSize::mib(1),
        message_queue: 16,
        max_message_size: ByteSize(4096),
        max_messages: Some(9),
        max_output: Some(ByteSize(100)),
        ..Limits::default()
    };
    assert_eq!(set.get("merged").expect("merged").spec.limits, merged);

    // The new keys have the typed readers of the old ones.
    let dir = tempfile::tempdir().expect("tempdir");
    let source = "[[task]]\nname = \"t\"\nwasm = '{hello}'\nlimits = { message_queue = \"many\", max_messages = -1, capture = \"lots\", max_message_size = true }\n";
    let path = write_set(dir.path(), source);
    let source = std::fs::read_to_string(&path).expect("read back");
    let errors = TaskSet::load(&path).expect_err("bad limits");
    let errors = errors.errors();
    use ConfigErrorKind as K;
    let cases: &[(K, (&str, usize), &str)] = &[
        (
            K::WrongType,
            ("\"many\"", 0),
            "task `t`: field `limits.message_queue`: expected an integer, found a string",
        ),
        (
            K::InvalidValue,
            ("-1", 0),
            "task `t`: field `limits.max_messages`: must not be negative, found -1",
        ),
        (
            K::InvalidValue,
            ("\"lots\"", 0),
            "task `t`: field `limits.capture`: \"lots\" is not a size; use one like \"64MiB\", \"512KiB\" or \"1GiB\"",
        ),
        (
            K::WrongType,
            ("true", 0),
            "task `t`: field `limits.max_message_size`: expected a size such as \"64MiB\", found a boolean",
        ),
    ];
    for (kind, at, line) in cases {
        expect_error(errors, &source, *kind, *at, line);
    }
    assert_eq!(errors.len(), cases.len(), "{errors:?}");
}

#[test]
fn a_zero_message_queue_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = "[[task]]\nname = \"q\"\nwasm = '{hello}'\nlimits = { message_queue = 0 }\n";
    let path = write_set(dir.path(), source);
    let source = std::fs::read_to_string(&path).expect("read back");
    let errors = TaskSet::load(&path).expect_err("a zero queue");
    assert_eq!(errors.len(), 1, "{errors}");
    expect_error(
        errors.errors(),
        &source,
        ConfigErrorKind::InvalidValue,
        ("0 }", 0),
        "task `q`: field `limits.message_queue`: must be at least 1",
    );

    // Built in code: the same rule, the same words.
    let mut spec = TaskSpec::new("x.wasm");
    spec.limits.message_queue = 0;
    let errors = TaskSet::new(vec![TaskConfig::new("q", spec)]).expect_err("a zero queue");
    assert_eq!(
        errors.to_string(),
        "task `q`: field `limits.message_queue`: must be at least 1"
    );
    assert_eq!(errors.errors()[0].kind, ConfigErrorKind::InvalidValue);
}

/// `sandbox` in a file: from `[defaults]` it reaches process tasks only, a
/// task's own wins, and a thread task's own or a bad value is refused at
/// its key.
#[test]
fn sandbox_policy_in_a_file_reaches_process_tasks() {
    let (_dir, set) = load(
        r#"[defaults]
sandbox = "required"

[[task]]
name = "p"
wasm = '{hello}'
isolation = "process"

[[task]]
name = "off"
wasm = '{hello}'
isolation = "process"
sandbox = "off"

[[task]]
name = "t"
wasm = '{hello}'
"#,
    );
    let policy = |name: &str| set.get(name).expect("task").spec.sandbox;
    assert_eq!(policy("p"), Some(isola::Sandbox::Required));
    assert_eq!(policy("off"), Some(isola::Sandbox::Off));
    assert_eq!(policy("t"), None, "[defaults] does not reach a thread task");

    let dir = tempfile::tempdir().expect("tempdir");
    let source = "[[task]]\nname = \"t\"\nwasm = '{hello}'\nsandbox = \"on\"\n\n\
                  [[task]]\nname = \"x\"\nwasm = '{hello}'\nisolation = \"process\"\nsandbox = \"maybe\"\n";
    let path = write_set(dir.path(), source);
    let source = std::fs::read_to_string(&path).expect("read back");
    let errors = TaskSet::load(&path).expect_err("two bad tasks");
    assert_eq!(errors.len(), 2, "{errors}");
    expect_error(
        errors.errors(),
        &source,
        ConfigErrorKind::Conflict,
        ("\"on\"", 0),
        "task `t`: field `sandbox`: `sandbox = \"on\"` is about a worker process; a thread task \
         runs in the host process, which no OS sandbox surrounds: set `isolation = \"process\"` \
         or leave `sandbox` out",
    );
    expect_error(
        errors.errors(),
        &source,
        ConfigErrorKind::InvalidValue,
        ("\"maybe\"", 0),
        "task `x`: field `sandbox`: expected \"on\", \"off\" or \"required\", found \"maybe\"",
    );
}

#[test]
fn sets_built_in_code_are_checked_by_the_spec_rules() {
    let mut nul = TaskSpec::new("x.wasm");
    nul.args = vec!["a\0".into()];
    nul.reuse_worker = true;
    let mut grouped = TaskSpec::new("x.wasm");
    grouped.shared_group = Some("g".into());
    grouped.isolation = Isolation::Process;
    grouped.limits.max_message_size = ByteSize::mib(64);
    let errors = TaskSet::new(vec![
        TaskConfig::new("nul", nul),
        TaskConfig::new("grouped", grouped),
        TaskConfig::new("fine", TaskSpec::new("x.wasm")),
    ])
    .expect_err("invalid specs");
    let found: Vec<(String, Option<String>, ConfigErrorKind)> = errors
        .iter()
        .map(|e| (e.scope.to_string(), e.field.clone(), e.kind))
        .collect();
    let expected = [
        ("task `nul`", "args[0]", ConfigErrorKind::InvalidValue),
        ("task `nul`", "reuse_worker", ConfigErrorKind::Conflict),
        (
            "task `grouped`",
            "limits.max_message_size",
            ConfigErrorKind::Conflict,
        ),
        ("task `grouped`", "isolation", ConfigErrorKind::Conflict),
    ];
    let expected: Vec<(String, Option<String>, ConfigErrorKind)> = expected
        .iter()
        .map(|(s, f, k)| ((*s).to_owned(), Some((*f).to_owned()), *k))
        .collect();
    assert_eq!(found, expected);
}

/// Every event of a run, as text: `started a 1`, `out a hello`,
/// `finished a succeeded`, `restarting a 2`.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn sink(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let line = match event {
                Event::Queued { task } => format!("queued {task}"),
                Event::Started { task, attempt, .. } => format!("started {task} {attempt}"),
                Event::Output { task, line, .. } => format!("out {task} {line}"),
                Event::Restarting { task, attempt, .. } => format!("restarting {task} {attempt}"),
                Event::Finished { record } => format!("finished {} {}", record.name, record.status),
                _ => return,
            };
            log.lock().expect("log").push(line);
        }
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log").clone()
    }
}

async fn run_set(set: &TaskSet, jobs: usize, log: &Log) -> SetReport {
    let scheduler = Scheduler::new(runner()).jobs(jobs).sink(log.sink());
    tokio::time::timeout(Duration::from_secs(120), scheduler.run(set))
        .await
        .expect("the set finishes")
}

fn record<'a>(report: &'a SetReport, name: &str) -> &'a TaskRecord {
    report
        .get(name)
        .unwrap_or_else(|| panic!("no record for `{name}`"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_run_in_order_and_share_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("shared")).expect("mkdir");
    // Listed last-first: only `depends_on` can put them in order.
    let source = r#"
[defaults]
dirs = [{ host = "shared", guest = "/shared", writable = true }]

[[task]]
name = "third"
wasm = '{echo2}'
args = ["cat", "/shared/two.txt"]
depends_on = ["second"]

[[task]]
name = "second"
wasm = '{echo}'
isolation = "process"
args = ["write", "/shared/two.txt", "second saw the first"]
depends_on = ["first"]

[[task]]
name = "first"
wasm = '{echo}'
args = ["write", "/shared/one.txt", "first"]
"#;
    let path = write_set(dir.path(), source);
    let set = TaskSet::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let log = Log::default();
    let report = run_set(&set, 3, &log).await;
    assert!(report.succeeded(), "{report:#?}");
    let lines = log.lines();
    assert!(
        lines.contains(&"out third second saw the first".to_owned()),
        "{lines:?}"
    );

    let (first, second, third) = (
        record(&report, "first"),
        record(&report, "second"),
        record(&report, "third"),
    );
    assert_eq!(second.isolation, Isolation::Process);
    for (dep, task) in [(first, second), (second, third)] {
        assert!(
            dep.finished_at.expect("finished") <= task.started_at.expect("started"),
            "{} started before {} finished",
            task.name,
            dep.name
        );
        assert!(
            task.queued_at >= dep.finished_at,
            "queued when its dependency succeeded"
        );
    }
    // The events say the same.
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no `{line}` in {lines:?}"))
    };
    assert!(at("finished first succeeded") < at("started second 1"));
    assert!(at("finished second succeeded") < at("started third 1"));
}

/// The most records whose [started, finished) slot times overlap.
fn max_overlap(report: &SetReport) -> usize {
    let mut edges: Vec<(Duration, i32)> = Vec::new();
    for task in &report.tasks {
        if let (Some(start), Some(end)) = (task.started_at, task.finished_at) {
            edges.push((start, 1));
            edges.push((end, -1));
        }
    }
    // At equal instants, ends come first: a slot handed over is not shared.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    usize::try_from(most).expect("non-negative")
}

#[tokio::test(flavor = "multi_thread")]
async fn never_more_than_jobs_tasks_run_at_once() {
    let mut tasks = String::new();
    for i in 0..8 {
        let isolation = if i % 2 == 0 { "thread" } else { "process" };
        tasks.push_str(&format!(
            "[[task]]\nname = \"t{i}\"\nwasm = '{{hostile}}'\nargs = [\"sleep\", \"50\"]\nisolation = \"{isolation}\"\n\n"
        ));
    }
    let (_dir, set) = load(&tasks);
    for jobs in [1, 3] {
        // Counted from the events as they happen, independently of the
        // records' timestamps.
        let live = Arc::new(Mutex::new((0usize, 0usize)));
        let counter = Arc::clone(&live);
        let sink = move |event: &Event<'_>| {
            let mut guard = counter.lock().expect("counter");
            let (now, most) = &mut *guard;
            match event {
                Event::Started { attempt: 1, .. } => {
                    *now += 1;
                    *most = (*most).max(*now);
                }
                Event::Finished { record } if record.attempts > 0 => *now -= 1,
                _ => {}
            }
        };
        let scheduler = Scheduler::new(runner()).jobs(jobs).sink(sink);
        let report = scheduler.run(&set).await;
        assert!(report.succeeded(), "{report:#?}");
        let most_live = live.lock().expect("counter").1;
        // The slots are filled before any task can finish, so the bound is
        // also reached.
        assert_eq!(most_live, jobs, "events");
        assert_eq!(max_overlap(&report), jobs, "records");
        assert_eq!(report.pool.max_running, jobs);
        assert_eq!(report.pool.jobs, jobs);
        assert!(report.pool.utilization > 0.0 && report.pool.utilization <= 1.0);
        assert_eq!(report.pool.wait_time.count, 8);
        assert_eq!(report.pool.run_time.count, 8);
        let h = report.pool.run_time;
        assert!(h.min <= h.p50 && h.p50 <= h.p90 && h.p90 <= h.p99 && h.p99 <= h.max);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crashed_process_tasks_are_restarted_up_to_their_limit() {
    // Every worker that starts is killed from outside (SIGKILL), as a
    // crash would end it: each attempt crashes.
    let source = r#"
[[task]]
name = "crashy"
wasm = '{hostile}'
args = ["sleep", "60000"]
isolation = "process"
restart = "on-crash"
max_restarts = 2

[[task]]
name = "once"
wasm = '{hostile}'
args = ["sleep", "60000"]
isolation = "process"
"#;
    let (dir, set) = load(source);
    let log = Log::default();
    // This runner's workers run under a name of their own, so that only
    // they are killed (other tests run in this process too).
    let worker = dir.path().join("crashing-worker");
    std::os::unix::fs::symlink(isola_bin(), &worker).expect("symlink");
    let runner = isola::Runner::with_config(isola::RunnerConfig {
        prestarted_workers: 0,
        worker_program: Some(worker.clone()),
        cache_dir: isola::CacheDir::Path(isola_tests::shared_cache()),
        ..isola::RunnerConfig::default()
    })
    .expect("runner");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let done = std::sync::Arc::clone(&done);
        let worker = worker.clone();
        std::thread::spawn(move || {
            // Killed once it has run a while: by then its task has started
            // (a kill during the handshake would be a start failure).
            let mut seen = std::collections::HashMap::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                for pid in isola_tests::procs::children_of(std::process::id()) {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
                    let first_seen = *seen.entry(pid).or_insert_with(std::time::Instant::now);
                    if program == worker.as_os_str().as_encoded_bytes()
                        && first_seen.elapsed() > Duration::from_millis(300)
                    {
                        let _ = isola_tests::procs::send_signal(pid, 9);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let scheduler = Scheduler::new(runner).jobs(3).sink(log.sink());
    let report = tokio::time::timeout(Duration::from_secs(120), scheduler.run(&set))
        .await
        .expect("the set finishes");
    done.store(true, std::sync::atomic::Ordering::Release);
    killer.join().expect("killer thread");

    let crashy = record(&report, "crashy");
    assert!(
        matches!(
            crashy.outcome,
            Some(Outcome::Crashed {
                signal: Some(9),
                ..
            })
        ),
        "{crashy:#?}"
    );
    assert_eq!(crashy.status, TaskStatus::Failed);
    assert_eq!(crashy.attempts, 3, "the first attempt and two restarts");
    assert_eq!(crashy.crashes.len(), 2);
    assert!(
        crashy
            .crashes
            .iter()
            .all(|c| matches!(c, Outcome::Crashed { .. }))
    );
    let lines = log.lines();
    for expected in [
        "started crashy 1",
        "restarting crashy 2",
        "started crashy 2",
        "restarting crashy 3",
        "started crashy 3",
    ] {
        assert!(
            lines.contains(&expected.to_owned()),
            "`{expected}` in {lines:?}"
        );
    }
    assert!(!lines.iter().any(|l| l == "restarting crashy 4"));

    let once = record(&report, "once");
    assert!(matches!(once.outcome, Some(Outcome::Crashed { .. })));
    assert_eq!(once.attempts, 1, "restart = \"never\" by default");
    assert!(once.crashes.is_empty());

    // Only crashes restart: a process task that succeeds runs once.
    let (_dir, set) = load(
        r#"
[[task]]
name = "fine"
wasm = '{hello}'
isolation = "process"
restart = "on-crash"
"#,
    );
    let report = run_set(&set, 1, &Log::default()).await;
    let fine = record(&report, "fine");
    assert_eq!(fine.status, TaskStatus::Succeeded);
    assert_eq!(fine.attempts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_memory_limit_too_small_to_start_is_reported_as_that_limit() {
    let (_dir, set) = load(
        r#"
[[task]]
name = "tiny"
wasm = '{hello}'
isolation = "process"
restart = "on-crash"
limits = { process_memory = "1MiB" }
"#,
    );
    let report = run_set(&set, 1, &Log::default()).await;
    let tiny = record(&report, "tiny");
    // Below what a worker holds before it runs anything: the limit, every
    // time (the worker's own first allocation used to abort it, SIGABRT).
    assert_eq!(
        tiny.outcome,
        Some(Outcome::LimitExceeded {
            limit: Limit::ProcessMemory {
                max: isola::ByteSize::mib(1)
            }
        })
    );
}

/// Resolves when `log` shows every task in `names` started.
async fn all_started(log: &Log, names: &[&str]) {
    loop {
        let lines = log.lines();
        if names
            .iter()
            .all(|n| lines.contains(&format!("started {n} 1")))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cancels_running_tasks_and_skips_the_rest() {
    let source = r#"
[[task]]
name = "sleeper"
wasm = '{hostile}'
args = ["sleep", "60000"]

[[task]]
name = "spinner"
wasm = '{hostile}'
args = ["loop"]
isolation = "process"

[[task]]
name = "waiting"
wasm = '{hello}'

[[task]]
name = "dependent"
wasm = '{hello}'
depends_on = ["sleeper"]
"#;
    let (_dir, set) = load(source);
    let log = Log::default();
    let scheduler = Scheduler::new(runner()).jobs(2).sink(log.sink());
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        scheduler.run_until(&set, all_started(&log, &["sleeper", "spinner"])),
    )
    .await
    .expect("shutdown stops the set");

    assert_eq!(report.stopped, Some(StopReason::Shutdown));
    for name in ["sleeper", "spinner"] {
        let task = record(&report, name);
        assert_eq!(task.status, TaskStatus::Cancelled, "{task:#?}");
        assert_eq!(task.outcome, Some(Outcome::Cancelled));
    }
    for name in ["waiting", "dependent"] {
        let task = record(&report, name);
        assert_eq!(task.status, TaskStatus::Skipped);
        assert_eq!(task.skip_reason, Some(SkipReason::Shutdown));
        assert_eq!(task.attempts, 0);
        assert_eq!(task.started_at, None);
    }
    assert!(
        record(&report, "waiting").queued_at.is_some(),
        "it was ready"
    );
    let lines = log.lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("finished ")).count(),
        4,
        "one Finished event per task: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_fast_stops_the_set_on_the_first_failure() {
    let source = r#"
[[task]]
name = "sleeper"
wasm = '{hostile}'
args = ["sleep", "60000"]

[[task]]
name = "bad"
wasm = '{echo}'
args = ["exit", "3"]

[[task]]
name = "later"
wasm = '{hello}'
"#;
    let (_dir, set) = load(source);
    let scheduler = Scheduler::new(runner()).jobs(2).fail_fast(true);
    let report = tokio::time::timeout(Duration::from_secs(60), scheduler.run(&set))
        .await
        .expect("fail-fast stops the sleeper");
    let failed = "bad".to_owned();
    assert_eq!(
        report.stopped,
        Some(StopReason::FailFast {
            failed: failed.clone()
        })
    );
    let bad = record(&report, "bad");
    assert_eq!((bad.status, bad.exit_code), (TaskStatus::Failed, Some(3)));
    assert_eq!(record(&report, "sleeper").status, TaskStatus::Cancelled);
    assert_eq!(
        record(&report, "later").skip_reason,
        Some(SkipReason::FailFast { failed })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failure_leaves_the_other_results_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Passes the config's header check, fails to compile at start.
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm\x01\0\0\0garbage").expect("write");
    let source = r#"
[[task]]
name = "starved"
wasm = '{hello}'
isolation = "process"
limits = { process_memory = "1MiB" }

[[task]]
name = "timeout"
wasm = '{hostile}'
args = ["loop"]
limits = { timeout = "200ms" }

[[task]]
name = "memory"
wasm = '{hostile}'
args = ["alloc-bomb"]
isolation = "process"
limits = { max_memory = "32MiB" }

[[task]]
name = "trap"
wasm = '{hostile}'
args = ["unreachable"]

[[task]]
name = "broken"
wasm = "broken.wasm"

[[task]]
name = "after-trap"
wasm = '{hello}'
depends_on = ["trap"]

[[task]]
name = "hello"
wasm = '{hello}'

[[task]]
name = "echo"
wasm = '{echo2}'
args = ["args", "still", "here"]
isolation = "process"
"#;
    let path = write_set(dir.path(), source);
    let set = TaskSet::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let log = Log::default();
    let report = run_set(&set, 2, &log).await;
    assert!(!report.succeeded());
    assert_eq!(report.stopped, None, "no fail-fast: everything ran");

    assert!(matches!(
        record(&report, "starved").outcome,
        Some(Outcome::LimitExceeded {
            limit: Limit::ProcessMemory { .. }
        })
    ));
    assert!(matches!(
        record(&report, "timeout").outcome,
        Some(Outcome::LimitExceeded {
            limit: Limit::Timeout { .. }
        })
    ));
    assert!(matches!(
        record(&report, "memory").outcome,
        Some(Outcome::LimitExceeded {
            limit: Limit::Memory { .. }
        })
    ));
    assert!(matches!(
        record(&report, "trap").outcome,
        Some(Outcome::Trapped(_))
    ));
    let broken = record(&report, "broken");
    assert_eq!(
        (broken.status, broken.outcome.as_ref()),
        (TaskStatus::Failed, None)
    );
    let error = broken.start_error.as_deref().expect("a start error");
    assert!(error.contains("is not valid WebAssembly"), "{error}");
    assert_eq!(
        record(&report, "after-trap").skip_reason,
        Some(SkipReason::DependencyFailed {
            dependency: "trap".into()
        })
    );

    for name in ["hello", "echo"] {
        let task = record(&report, name);
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:#?}");
        assert_eq!(task.exit_code, Some(0));
        assert!(task.peak_memory > 0 && task.fuel_used > 0, "{task:#?}");
    }
    let lines = log.lines();
    assert!(lines.contains(&"out hello Hello from Isola!".to_owned()));
    assert!(
        lines.contains(&"out echo still".to_owned()) && lines.contains(&"out echo here".to_owned())
    );
    let counts = report.counts();
    assert_eq!((counts.succeeded, counts.failed, counts.skipped), (2, 5, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_report_has_a_stable_schema() {
    let source = r#"
[[task]]
name = "hello"
wasm = '{hello}'

[[task]]
name = "fails"
wasm = '{echo}'
args = ["exit", "4"]

[[task]]
name = "skipped"
wasm = '{hello}'
depends_on = ["fails"]
"#;
    let (_dir, set) = load(source);
    let report = run_set(&set, 2, &Log::default()).await;
    let json = report.to_json().expect("json");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");

    assert_eq!(value["version"], 1);
    assert_eq!(value["stopped"], serde_json::Value::Null);
    let tasks = value["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3);
    let hello = &tasks[0];
    for key in [
        "name",
        "isolation",
        "status",
        "outcome",
        "exit_code",
        "start_error",
        "skip_reason",
        "attempts",
        "crashes",
        "queued_at_ms",
        "started_at_ms",
        "finished_at_ms",
        "wait_ms",
        "wall_ms",
        "startup_ms",
        "run_ms",
        "peak_memory",
        "fuel_used",
    ] {
        assert!(hello.get(key).is_some(), "`{key}` missing from {hello}");
    }
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["isolation"], "thread");
    assert_eq!(hello["status"], "succeeded");
    assert_eq!(hello["exit_code"], 0);
    assert_eq!(hello["attempts"], 1);
    assert!(hello["outcome"].is_object());
    assert!(hello["wall_ms"].as_f64().expect("number") > 0.0);
    assert!(hello["peak_memory"].as_u64().expect("number") > 0);
    assert_eq!(tasks[1]["status"], "failed");
    assert_eq!(tasks[1]["exit_code"], 4);
    let skipped = &tasks[2];
    assert_eq!(skipped["status"], "skipped");
    assert_eq!(skipped["skip_reason"]["reason"], "dependency_failed");
    assert_eq!(skipped["skip_reason"]["dependency"], "fails");
    assert_eq!(skipped["wall_ms"], serde_json::Value::Null);

    let pool = &value["pool"];
    assert_eq!(pool["jobs"], 2);
    for key in ["max_running", "wall_ms", "busy_ms", "utilization"] {
        assert!(pool[key].is_number(), "pool.{key}");
    }
    for histogram in ["wait_time", "run_time"] {
        for key in [
            "count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms",
        ] {
            assert!(pool[histogram][key].is_number(), "pool.{histogram}.{key}");
        }
    }
    assert_eq!(pool["run_time"]["count"], 2, "the two tasks that ran");

    // And it reads back into the typed report.
    let back: SetReport = serde_json::from_str(&json).expect("typed");
    assert_eq!(back.tasks.len(), 3);
    assert_eq!(back.tasks[1].status, TaskStatus::Failed);
    assert_eq!(back.tasks[2].skip_reason, report.tasks[2].skip_reason);
}

#[test]
fn check_validates_without_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(
        dir.path(),
        "[[task]]\nname = \"a\"\nwasm = '{hello}'\n\n[[task]]\nname = \"b\"\nwasm = '{hello}'\nisolation = \"process\"\ndepends_on = [\"a\"]\n",
    );
    let p = path.to_str().expect("utf-8");
    let out = isola(&["check", p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{p}: OK, 2 tasks (1 thread, 1 process), 1 dependency\n")
    );

    let path = write_set(
        dir.path(),
        "[[task]]\nname = \"a\"\nwasm = \"nope.wasm\"\ntimeout = \"1s\"\n",
    );
    let out = isola(&["check", p]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{}:3:8: task `a`: field `wasm`: `",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(
        lines[1],
        format!(
            "{}:4:1: task `a`: field `timeout`: unknown field `timeout`; expected one of `name`, `wasm`, `argv0`, `isolation`, `args`, `env`, `inherit_env`, `dirs`, `stdin`, `input`, `input_file`, `limits`, `restart`, `max_restarts`, `reuse_worker`, `sandbox`, `host_functions`, `kv`, `depends_on` or `shared_memory`",
            path.display()
        )
    );
    assert_eq!(
        lines[2],
        format!("error: 2 problems found in {}", path.display())
    );
}

/// Text with any ANSI escape or other control character (newlines aside).
fn has_control_codes(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn up_prints_prefixed_lines_a_summary_and_fails_when_a_task_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = r#"
[[task]]
name = "hello"
wasm = '{hello}'

[[task]]
name = "talker"
wasm = '{hostile}'
args = ["sleep", "1"]
isolation = "process"

[[task]]
name = "runaway"
wasm = '{hostile}'
args = ["loop"]
limits = { timeout = "200ms" }

[[task]]
name = "after"
wasm = '{hello}'
depends_on = ["runaway"]
"#;
    let path = write_set(dir.path(), source);
    let json = dir.path().join("out.json");
    let out = isola(&[
        "up",
        path.to_str().expect("utf-8"),
        "--jobs",
        "2",
        "--json",
        json.to_str().expect("utf-8"),
        "--metrics",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        !has_control_codes(&text),
        "no control codes when not a terminal:\n{text:?}"
    );
    assert!(text.contains("\nhello   | Hello from Isola!\n"), "{text}");
    assert!(text.contains("\ntalker  | woke\n"), "{text}");
    assert!(
        text.contains("\nrunaway failed: limit exceeded: timeout of 200ms in "),
        "{text}"
    );

    // The summary: one row per task, failures named at the end.
    let table = text
        .split_once("\nTASK ")
        .map(|(_, t)| t)
        .expect("a summary table");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(&row("hello")[..4], ["hello", "thread", "ok", "exited"]);
    assert_eq!(&row("talker")[..3], ["talker", "process", "ok"]);
    assert_eq!(
        &row("runaway")[..4],
        ["runaway", "thread", "FAILED", "limit"]
    );
    assert_eq!(&row("after")[..3], ["after", "thread", "SKIPPED"]);
    assert!(
        text.contains("4 tasks: 2 succeeded, 1 failed, 1 skipped in "),
        "{text}"
    );
    assert!(
        text.contains("\n  runaway: limit exceeded: timeout of 200ms\n"),
        "{text}"
    );
    assert!(
        text.contains("\n  after: skipped: dependency `runaway` did not succeed\n"),
        "{text}"
    );
    assert!(
        text.contains("\npool: 2 jobs, at most 2 running"),
        "--metrics: {text}"
    );
    assert!(text.contains("\nwait time "), "{text}");

    let report: SetReport =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote")).expect("JSON");
    assert_eq!(report.tasks.len(), 4);
    assert_eq!(
        report.get("runaway").expect("runaway").status,
        TaskStatus::Failed
    );

    // All good: exit 0.
    let path = write_set(dir.path(), "[[task]]\nname = \"hello\"\nwasm = '{hello}'\n");
    let out = isola(&["up", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 task: 1 succeeded in "));

    // An invalid set does not run.
    let path = write_set(dir.path(), "[[task]]\nname = \"x\"\n");
    let out = isola(&["up", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("task `x`: field `wasm`: no `wasm` in this task or in [defaults]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn guest_control_codes_are_stripped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(
        dir.path(),
        "[[task]]\nname = \"sneaky\"\nwasm = '{echo}'\nargs = [\"args\", \"\\u001b[2Jcleared?\"]\n",
    );
    let out = isola(&["up", path.to_str().expect("utf-8")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!has_control_codes(&text), "{text:?}");
    // Escape sequences are removed (issue 13), not shown escaped.
    assert!(text.contains("sneaky | cleared?\n"), "{text}");
}

#[test]
fn ctrl_c_cancels_the_set_and_still_prints_the_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = r#"
[[task]]
name = "sleeper"
wasm = '{hostile}'
args = ["sleep", "60000"]

[[task]]
name = "worker"
wasm = '{hostile}'
args = ["sleep", "60000"]
isolation = "process"

[[task]]
name = "never"
wasm = '{hello}'
depends_on = ["sleeper"]
"#;
    let path = write_set(dir.path(), source);
    let mut child = Command::new(isola_bin())
        .args(["up", path.to_str().expect("utf-8"), "--jobs", "2"])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola up");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    // Wait until both long tasks have started.
    while !(seen
        .iter()
        .any(|l: &String| l.starts_with("sleeper started"))
        && seen.iter().any(|l| l.starts_with("worker  started")))
    {
        match lines.next() {
            Some(line) => seen.push(line.expect("utf-8 line")),
            None => panic!("isola up ended early: {seen:?}"),
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    seen.extend(lines.map(|l| l.expect("utf-8 line")));
    let code = child.wait().expect("wait").code();
    let text = seen.join("\n");
    assert_eq!(code, Some(130), "{text}");
    assert!(
        text.contains("isola: stopping: cancelling running tasks"),
        "{text}"
    );
    let row = |name: &str| {
        seen.iter()
            .rev()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("sleeper"), "sleeper thread CANCELLED");
    assert_eq!(row("worker"), "worker process CANCELLED");
    assert_eq!(row("never"), "never thread SKIPPED");
    assert!(
        text.contains("\n  never: skipped: cancelled before it started"),
        "{text}"
    );
}

#[test]
fn the_shipped_example_is_valid_and_runs() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tasks.toml");
    let example = example.to_str().expect("utf-8");
    let out = isola(&["check", example]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).trim_end().ends_with(", 1 shared memory group"),
        "the summary counts groups: {}",
        stdout(&out)
    );

    let out = isola(&["up", example]);
    let text = stdout(&out);
    // Two hostile tasks are stopped by their limits on purpose.
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("  runaway: limit exceeded: timeout of 500ms"),
        "{text}"
    );
    assert!(
        text.contains("  memory-hog: limit exceeded: memory limit of 32.0 MiB"),
        "{text}"
    );
    assert!(text.contains("inspect     | written by prepare"), "{text}");
    assert!(
        text.contains(": 8 succeeded, 2 failed, 1 skipped in "),
        "{text}"
    );
}

/// Runs `isola up` under a pseudo-terminal (`script` from util-linux), so
/// it takes its terminal path; returns everything it drew.
fn up_on_a_terminal(path: &Path, extra: &str) -> (Option<i32>, String) {
    let command = format!("{} up {} {extra}", isola_bin().display(), path.display());
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_output_is_colored_and_progress_is_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(
        dir.path(),
        r#"
[[task]]
name = "first"
wasm = '{hello}'

[[task]]
name = "second"
wasm = '{hello}'
depends_on = ["first"]
"#,
    );
    let (code, screen) = up_on_a_terminal(&path, "");
    assert_eq!(code, Some(0), "{screen}");
    // Task names are colored: an SGR sequence right before the prefix.
    assert!(
        screen.contains("\u{1b}["),
        "no control codes on a terminal: {screen:?}"
    );
    assert!(screen.contains("first"), "{screen:?}");
    assert!(screen.contains("Hello from Isola!"), "{screen:?}");
    // The live progress line is redrawn in place (carriage return or
    // erase-line), and counts what is done.
    assert!(
        screen.contains('\r') || screen.contains("\u{1b}[2K") || screen.contains("\u{1b}[K"),
        "{screen:?}"
    );
    assert!(screen.contains("2 succeeded"), "{screen:?}");
}

#[test]
fn a_second_ctrl_c_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_set(
        dir.path(),
        r#"
[[task]]
name = "sleeper"
wasm = '{hostile}'
args = ["sleep", "60000"]
"#,
    );
    let mut child = Command::new(isola_bin())
        .args(["up", path.to_str().expect("utf-8")])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola up");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        if line.expect("utf-8").starts_with("sleeper started") {
            break;
        }
    }
    for _ in 0..2 {
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
    }
    let started = std::time::Instant::now();
    let code = child.wait().expect("wait").code();
    assert_eq!(code, Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exited promptly"
    );
}

#[test]
fn a_plugin_task_that_returns_a_value_succeeds_and_shows_it() {
    for kind in [GuestKind::Module, GuestKind::Component] {
        for isolation in ["thread", "process"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let plugin = guest("plugin", kind);
            let source = format!(
                r#"
[[task]]
name = "adder"
wasm = '{plugin}'
input = "41"
isolation = "{isolation}"

[[task]]
name = "after"
wasm = '{{hello}}'
depends_on = ["adder"]
"#,
                plugin = plugin.to_str().expect("utf-8")
            );
            let path = write_set(dir.path(), &source);
            let json = dir.path().join("out.json");
            let out = isola(&[
                "up",
                path.to_str().expect("utf-8"),
                "--json",
                json.to_str().expect("utf-8"),
            ]);
            let text = stdout(&out);
            let what = format!("{kind:?} at {isolation}");
            assert_eq!(out.status.code(), Some(0), "{what}: {text}{}", stderr(&out));
            assert!(
                text.contains("\nadder | 42\n"),
                "{what}: the returned value is shown:\n{text}"
            );
            assert!(
                text.contains("\nafter | Hello from Isola!\n"),
                "{what}: dependents run:\n{text}"
            );
            let report: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid json");
            let adder = report["tasks"]
                .as_array()
                .and_then(|tasks| tasks.iter().find(|t| t["name"] == "adder"))
                .expect("adder's record");
            assert_eq!(adder["status"], "succeeded", "{what}: {adder}");
            assert_eq!(adder["returned"], "42", "{what}: {adder}");
        }
    }
}
