//! Reading `tasks.toml`: the document is parsed with spans (`toml::de::DeTable`)
//! and walked by hand rather than deserialized with serde, because serde
//! stops at the first error and users should see every problem at once.
//! The `limits` table is the exception that proves it: it is walked key by
//! key, but each key is checked by deserializing it alone into [`Limits`],
//! so that a new limit needs no change here (see [`LIMIT_FIELDS`]).
//!
//! The readers here check what is about the document: TOML types, sizes
//! and durations that parse, paths that exist, names, the graph. Whether a
//! task's spec can work is the rulebook's ([`crate::rules`]), asked once
//! the defaults are merged in, the same rules the runner applies; each of
//! its problems is reported at the key it names.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use bytesize::ByteSize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigErrorKind as Kind, ConfigErrors, Location, Scope};
use super::{RestartPolicy, TaskConfig, TaskSet, config_kind, graph};
use crate::cache::{ContentHash, content_hash};
use crate::group::GroupSpec;
use crate::rules::{self, Problem, ProblemKind};
use crate::spec::{DirGrant, Isolation, Limits, Sandbox, Stdin, TaskSpec};

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;
/// A value in serde's data model, as `limits` values are kept: read from
/// TOML, checked and merged as what [`Limits`]' own serde form accepts.
type Json = serde_json::Value;

/// Fields of a `[[task]]` table. `[defaults]` takes the same except `name`
/// and `depends_on`, which only make sense per task.
pub(crate) const TASK_FIELDS: &[&str] = &[
    "name",
    "wasm",
    "argv0",
    "isolation",
    "args",
    "env",
    "inherit_env",
    "dirs",
    "stdin",
    "input",
    "input_file",
    "limits",
    "restart",
    "max_restarts",
    "reuse_worker",
    "sandbox",
    "host_functions",
    "kv",
    "depends_on",
    "shared_memory",
];
const PER_TASK_ONLY: &[&str] = &["name", "depends_on"];
/// The keys a task's `limits` table accepts: every field of [`Limits`] by
/// its serialized name, in declaration order. Taken from `Limits`' own
/// `Deserialize`, so the list never has to be kept in step by hand.
pub static LIMIT_FIELDS: LazyLock<&'static [&'static str]> = LazyLock::new(limit_names);

/// How each key of [`LIMIT_FIELDS`] is read, in the same order.
static LIMIT_KINDS: LazyLock<Vec<(&'static str, LimitKind)>> = LazyLock::new(|| {
    LIMIT_FIELDS
        .iter()
        .map(|&key| (key, LimitKind::of(key)))
        .collect()
});
const DIR_FIELDS: &[&str] = &["host", "guest", "writable"];
const STDIN_FIELDS: &[&str] = &["text", "file"];
const TOP_FIELDS: &[&str] = &["defaults", "task", "shared_memory"];
const GROUP_FIELDS: &[&str] = &["name", "wasm", "initial", "maximum"];

/// Restarts a process task gets with `restart = "on-crash"` and no
/// `max_restarts`.
pub(crate) const DEFAULT_MAX_RESTARTS: u32 = 3;

/// A field of one table: absent, present but invalid (already reported, so
/// nothing downstream complains about it again), or set, with the span of
/// its value.
#[derive(Debug, Clone, Default)]
enum Field<T> {
    #[default]
    Absent,
    Bad,
    Set(T, Span),
}

impl<T> Field<T> {
    fn from_option(value: Option<T>, span: Span) -> Field<T> {
        match value {
            Some(value) => Field::Set(value, span),
            None => Field::Bad,
        }
    }

    /// This table's value, else the defaults' one.
    fn or(self, fallback: &Field<T>) -> Field<T>
    where
        T: Clone,
    {
        match self {
            Field::Absent => fallback.clone(),
            other => other,
        }
    }

    fn value(self) -> Option<T> {
        match self {
            Field::Set(value, _) => Some(value),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    Never,
    OnCrash,
}

/// One table (`[defaults]` or a `[[task]]`) with its fields checked one by
/// one, before defaults are merged in.
#[derive(Debug, Clone, Default)]
struct Partial {
    name: Field<String>,
    wasm: Field<PathBuf>,
    argv0: Field<String>,
    isolation: Field<Isolation>,
    args: Field<Vec<String>>,
    env: Field<BTreeMap<String, String>>,
    inherit_env: Field<Vec<String>>,
    dirs: Field<Vec<DirGrant>>,
    stdin: Field<Stdin>,
    input: Field<Vec<u8>>,
    /// The `limits` table, key by key (the serialized names of [`Limits`]'
    /// fields), each value as [`Limits`]' serde form reads it; see
    /// [`Parser::limits`] and [`merged_limits`].
    limits: BTreeMap<String, Field<Json>>,
    restart: Field<Restart>,
    max_restarts: Field<u32>,
    reuse_worker: Field<bool>,
    sandbox: Field<Sandbox>,
    host_functions: Field<Vec<String>>,
    kv: Field<PathBuf>,
    depends_on: Field<Vec<(String, Span)>>,
    shared_memory: Field<String>,
    /// The span of every key written in the table, by the name the
    /// rulebook gives its field: `argv0` and `limits.fuel` (their values),
    /// `args[1]` and `dirs[0].guest` (the item or value), `env.NAME` (the
    /// key). Where a rulebook problem is reported (see [`locate`]).
    spans: BTreeMap<String, Span>,
}

/// Parses `source` as the task set in `file`. Relative paths in it are
/// resolved against `file`'s directory. `max_memory_per_task` is the
/// runner's per-task memory ceiling the set is checked against
/// ([`rules::ceiling_problem`]).
pub(crate) fn parse(
    source: &str,
    file: &Path,
    max_memory_per_task: u64,
) -> Result<TaskSet, ConfigErrors> {
    let base = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut p = Parser {
        source,
        file,
        base,
        lines: line_starts(source),
        errors: Vec::new(),
        groups: Vec::new(),
        groups_seen: Vec::new(),
        hashes: HashMap::new(),
        max_memory_per_task,
        shared_reserved: 0,
    };
    let tasks = p.document();
    if p.errors.is_empty() {
        Ok(TaskSet {
            path: Some(file.to_owned()),
            tasks,
            groups: p.groups,
        })
    } else {
        // Stable sort: errors at one position keep the order they were found.
        p.errors.sort_by_key(|(offset, _)| *offset);
        Err(ConfigErrors::new(
            p.errors.into_iter().map(|(_, error)| error).collect(),
        ))
    }
}

/// The error for a config file that cannot be read.
pub(crate) fn read_error(file: &Path, err: &std::io::Error) -> ConfigErrors {
    ConfigErrors::new(vec![ConfigError {
        file: Some(file.to_owned()),
        location: None,
        scope: Scope::File,
        field: None,
        kind: Kind::Io,
        message: format!("cannot read the task set: {err}"),
    }])
}

struct Parser<'a> {
    source: &'a str,
    file: &'a Path,
    base: PathBuf,
    /// Byte offset of the start of each line.
    lines: Vec<usize>,
    /// Errors with the byte offset they point at, for sorting.
    errors: Vec<(usize, ConfigError)>,
    /// The valid `[[shared_memory]]` groups, read before the tasks.
    groups: Vec<GroupSpec>,
    /// Every group name seen, valid or not, to catch duplicates.
    groups_seen: Vec<String>,
    /// Content hashes of the Wasm files compared with a group's module, so
    /// each is read once however many tasks name it.
    hashes: HashMap<PathBuf, ContentHash>,
    /// The runner's per-task memory ceiling each task is checked against.
    max_memory_per_task: u64,
    /// The `maximum`s of the valid groups so far, against the default
    /// runner's shared memory budget.
    shared_reserved: u64,
}

fn line_starts(source: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

impl Parser<'_> {
    /// Line and column of a byte offset; the column counts characters.
    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.source.len());
        let line = self.lines.partition_point(|&start| start <= offset).max(1);
        let start = self.lines.get(line - 1).copied().unwrap_or(0);
        let column = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location { line, column }
    }

    fn error(
        &mut self,
        scope: &Scope,
        field: Option<&str>,
        span: &Span,
        kind: Kind,
        message: String,
    ) {
        let error = ConfigError {
            file: Some(self.file.to_owned()),
            location: Some(self.location(span.start)),
            scope: scope.clone(),
            field: field.map(str::to_owned),
            kind,
            message,
        };
        self.errors.push((span.start, error));
    }

    /// Reports a value of the wrong TOML type.
    fn wrong_type(&mut self, scope: &Scope, field: &str, value: &Value<'_>, expected: &str) {
        let found = value.get_ref().type_str();
        let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        self.error(
            scope,
            Some(field),
            &value.span(),
            Kind::WrongType,
            format!("expected {expected}, found {article} {found}"),
        );
    }

    fn unknown_field(
        &mut self,
        scope: &Scope,
        prefix: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        known: &[&str],
    ) {
        let name = key.get_ref().as_ref();
        let hint = suggest(name, known.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!("; expected one of {}", list(known)));
        self.error(
            scope,
            Some(&format!("{prefix}{name}")),
            &key.span(),
            Kind::UnknownField,
            format!("unknown field `{name}`{hint}"),
        );
    }

    fn document(&mut self) -> Vec<TaskConfig> {
        let (doc, syntax) = DeTable::parse_recoverable(self.source);
        if !syntax.is_empty() {
            // Recovery can report one problem more than once; after a syntax
            // error the rest of the document is not checked, because what
            // the parser recovered may not be what the user meant.
            let mut seen = Vec::new();
            for err in syntax {
                let span = err.span().unwrap_or(0..0);
                let message = err.message().trim().to_owned();
                if seen.contains(&(span.clone(), message.clone())) {
                    continue;
                }
                seen.push((span.clone(), message.clone()));
                self.error(
                    &Scope::File,
                    None,
                    &span,
                    Kind::Syntax,
                    format!("invalid TOML: {message}"),
                );
            }
            return Vec::new();
        }
        let doc = doc.get_ref();

        let mut defaults = Partial::default();
        let mut tables = Vec::new();
        let mut group_tables = Vec::new();
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "defaults" => match value.get_ref() {
                    DeValue::Table(table) => {
                        defaults = self.entry(&Scope::Defaults, table);
                        self.defaults_problems(&defaults, &value.span());
                    }
                    _ => self.wrong_type(&Scope::File, "defaults", value, "a table ([defaults])"),
                },
                "shared_memory" => match value.get_ref() {
                    DeValue::Array(array) => group_tables.extend(array.iter()),
                    _ => self.wrong_type(
                        &Scope::File,
                        "shared_memory",
                        value,
                        "an array of tables ([[shared_memory]])",
                    ),
                },
                "task" => match value.get_ref() {
                    DeValue::Array(array) => tables.extend(array.iter()),
                    _ => self.wrong_type(
                        &Scope::File,
                        "task",
                        value,
                        "an array of tables ([[task]])",
                    ),
                },
                _ => self.unknown_field(&Scope::File, "", key, TOP_FIELDS),
            }
        }
        if tables.is_empty() && self.errors.is_empty() {
            self.error(
                &Scope::File,
                None,
                &(0..0),
                Kind::MissingField,
                "no tasks: add at least one [[task]] table".into(),
            );
        }

        // One at a time into `self.groups`: each group is checked against
        // the ones before it (their number, their share of the budget).
        for (i, value) in group_tables.into_iter().enumerate() {
            if let Some(group) = self.group(i + 1, value) {
                self.groups.push(group);
            }
        }

        let mut tasks = Vec::new();
        let mut entries = Vec::new();
        for (i, value) in tables.into_iter().enumerate() {
            let mut scope = Scope::Task {
                index: i + 1,
                name: None,
            };
            let DeValue::Table(table) = value.get_ref() else {
                self.wrong_type(&scope, "task", value, "a table ([[task]])");
                continue;
            };
            // The name first, so errors in the other fields can say which task.
            let name = table.get("name").map(|v| self.name(&scope, v));
            if let Some(Field::Set(name, _)) = &name {
                scope = Scope::Task {
                    index: i + 1,
                    name: Some(name.clone()),
                };
            }
            let mut own = self.entry(&scope, table);
            own.name = name.unwrap_or_default();
            let entry = self.finish(&scope, &value.span(), own, &defaults);
            if let Some(task) = &entry.task {
                tasks.push(task.clone());
            }
            entries.push(entry);
        }
        self.check_graph(&entries);
        tasks
    }

    /// Duplicate names, unknown dependencies and cycles, at the position of
    /// the name or `depends_on` entry at fault.
    fn check_graph(&mut self, entries: &[Entry]) {
        let names: Vec<Option<&str>> = entries
            .iter()
            .map(|e| e.name.as_ref().map(|(n, _)| n.as_str()))
            .collect();
        let deps: Vec<Vec<&str>> = entries
            .iter()
            .map(|e| e.deps.iter().map(|(n, _)| n.as_str()).collect())
            .collect();
        for problem in graph::check(&names, &deps) {
            let entry = &entries[problem.task];
            let (field, span) = match problem.dep {
                Some(dep) => (format!("depends_on[{dep}]"), entry.deps[dep].1.clone()),
                None => (
                    "name".to_owned(),
                    entry.name.as_ref().map_or(0..0, |(_, span)| span.clone()),
                ),
            };
            self.error(
                &entry.scope,
                Some(&field),
                &span,
                problem.kind,
                problem.message,
            );
        }
    }
}

/// A `[[task]]` table after checking, with what the graph checks need.
struct Entry {
    scope: Scope,
    name: Option<(String, Span)>,
    deps: Vec<(String, Span)>,
    task: Option<TaskConfig>,
}

/// What a path field must name.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// A WebAssembly file (checked by its `\0asm` header).
    Wasm,
    File,
    Dir,
    /// A file that may not exist yet (the task creates it), in a directory
    /// that does.
    Creatable,
}

impl Parser<'_> {
    /// Checks every field of a `[defaults]` or `[[task]]` table except the
    /// task's `name`, which the caller reads first.
    fn entry(&mut self, scope: &Scope, table: &DeTable<'_>) -> Partial {
        let in_defaults = *scope == Scope::Defaults;
        let mut p = Partial::default();
        for (key, value) in table.iter() {
            let span = value.span();
            let k = key.get_ref().as_ref();
            p.spans.insert(k.to_owned(), span.clone());
            match k {
                _ if in_defaults && PER_TASK_ONLY.contains(&k) => self.error(
                    scope,
                    Some(k),
                    &key.span(),
                    Kind::UnknownField,
                    format!("`{k}` cannot be set in [defaults]; it belongs in each [[task]]"),
                ),
                "name" => {}
                "wasm" => p.wasm = self.path(scope, k, value, Expect::Wasm),
                "argv0" => p.argv0 = Field::from_option(self.string(scope, k, value), span),
                "isolation" => {
                    let isolation = self.string(scope, k, value).and_then(|s| match s.as_str() {
                        "thread" => Some(Isolation::Thread),
                        "process" => Some(Isolation::Process),
                        other => {
                            self.invalid(
                                scope,
                                k,
                                &span,
                                format!("expected \"thread\" or \"process\", found \"{other}\""),
                            );
                            None
                        }
                    });
                    p.isolation = Field::from_option(isolation, span);
                }
                "args" => {
                    item_spans(&mut p.spans, k, value);
                    p.args = Field::from_option(self.strings(scope, k, value), span);
                }
                "env" => p.env = Field::from_option(self.env(scope, value, &mut p.spans), span),
                // The names are the rulebook's to judge, like `env`'s.
                "inherit_env" => {
                    item_spans(&mut p.spans, k, value);
                    p.inherit_env = Field::from_option(self.strings(scope, k, value), span);
                }
                "dirs" => p.dirs = Field::from_option(self.dirs(scope, value, &mut p.spans), span),
                "stdin" => p.stdin = Field::from_option(self.stdin(scope, value), span),
                "input" => {
                    // Keys come sorted, so `input` is seen before `input_file`.
                    p.input = Field::from_option(
                        self.string(scope, k, value).map(String::into_bytes),
                        span,
                    );
                }
                "input_file" => {
                    if !matches!(p.input, Field::Absent) {
                        self.error(
                            scope,
                            Some(k),
                            &key.span(),
                            Kind::Conflict,
                            "`input` and `input_file` cannot both be set".into(),
                        );
                        p.input = Field::Bad;
                        continue;
                    }
                    // The rulebook knows this value as `input`.
                    p.spans.insert("input".to_owned(), span.clone());
                    let bytes = match self.path(scope, k, value, Expect::File) {
                        Field::Set(path, _) => match std::fs::read(&path) {
                            Ok(bytes) => Some(bytes),
                            Err(err) => {
                                self.error(
                                    scope,
                                    Some(k),
                                    &span,
                                    Kind::MissingFile,
                                    format!("cannot read `{}`: {err}", path.display()),
                                );
                                None
                            }
                        },
                        _ => None,
                    };
                    p.input = Field::from_option(bytes, span);
                }
                "limits" => self.limits(scope, value, &mut p),
                "restart" => {
                    let restart = self.string(scope, k, value).and_then(|s| match s.as_str() {
                        "never" => Some(Restart::Never),
                        "on-crash" => Some(Restart::OnCrash),
                        other => {
                            self.invalid(
                                scope,
                                k,
                                &span,
                                format!("expected \"never\" or \"on-crash\", found \"{other}\""),
                            );
                            None
                        }
                    });
                    p.restart = Field::from_option(restart, span);
                }
                "reuse_worker" => {
                    p.reuse_worker = Field::from_option(self.bool(scope, k, value), span);
                }
                "kv" => p.kv = self.path(scope, k, value, Expect::Creatable),
                "host_functions" => {
                    item_spans(&mut p.spans, k, value);
                    p.host_functions = Field::from_option(self.strings(scope, k, value), span);
                }
                "sandbox" => {
                    let sandbox = self.string(scope, k, value).and_then(|s| match s.as_str() {
                        "on" => Some(Sandbox::On),
                        "off" => Some(Sandbox::Off),
                        "required" => Some(Sandbox::Required),
                        other => {
                            self.invalid(
                                scope,
                                k,
                                &span,
                                format!(
                                    "expected \"on\", \"off\" or \"required\", found \"{other}\""
                                ),
                            );
                            None
                        }
                    });
                    p.sandbox = Field::from_option(sandbox, span);
                }
                "max_restarts" => {
                    let n = self.integer(scope, k, value).and_then(|n| {
                        u32::try_from(n).ok().or_else(|| {
                            self.invalid(scope, k, &span, format!("{n} is too large"));
                            None
                        })
                    });
                    p.max_restarts = Field::from_option(n, span);
                }
                "depends_on" => {
                    p.depends_on = Field::from_option(self.depends_on(scope, value), span)
                }
                "shared_memory" => {
                    p.shared_memory = Field::from_option(self.string(scope, k, value), span)
                }
                _ => {
                    let known: Vec<&str> = TASK_FIELDS
                        .iter()
                        .copied()
                        .filter(|f| !in_defaults || !PER_TASK_ONLY.contains(f))
                        .collect();
                    self.unknown_field(scope, "", key, &known);
                }
            }
        }
        p
    }

    /// Merges the defaults into a task, checks the result against the
    /// rulebook and builds its [`TaskConfig`]. The spec is checked even
    /// when the task cannot be built (no valid name or `wasm`), so that
    /// every problem shows at once.
    fn finish(&mut self, scope: &Scope, table: &Span, own: Partial, defaults: &Partial) -> Entry {
        let name = match &own.name {
            Field::Set(name, span) => Some((name.clone(), span.clone())),
            Field::Absent => {
                self.error(
                    scope,
                    Some("name"),
                    table,
                    Kind::MissingField,
                    "every [[task]] needs a `name`".into(),
                );
                None
            }
            Field::Bad => None,
        };
        let deps = own.depends_on.clone().value().unwrap_or_default();
        let mut entry = Entry {
            scope: scope.clone(),
            name,
            deps,
            task: None,
        };

        let group = self.task_group(scope, &own, defaults);
        let mut wasm = own.wasm.clone().or(&defaults.wasm);
        if let (Some(group), Field::Absent) = (&group, &wasm) {
            // A group's tasks run the group's module; no need to repeat it.
            wasm = Field::Set(group.wasm.clone(), table.clone());
        }
        if matches!(wasm, Field::Absent) {
            self.error(
                scope,
                Some("wasm"),
                table,
                Kind::MissingField,
                "no `wasm` in this task or in [defaults]".into(),
            );
        }
        // `None`: invalid, already reported.
        let isolation = match own.isolation.clone().or(&defaults.isolation) {
            Field::Set(isolation, _) => Some(isolation),
            Field::Absent => Some(Isolation::default()),
            Field::Bad => None,
        };
        let restart =
            isolation.map(|isolation| self.restart(scope, table, &own, defaults, isolation));

        let mut spec = merged_spec(&own, defaults);
        spec.wasm = wasm.clone().value().unwrap_or_default();
        spec.shared_group = group.map(|g| g.name);
        spec.reuse_worker = reuse_worker(&own, defaults, isolation);
        spec.sandbox = sandbox(&own, defaults, isolation);
        let problems = match isolation {
            Some(isolation) => {
                spec.isolation = isolation;
                spec_problems(&spec, self.max_memory_per_task)
            }
            None => certain_problems(&spec, self.max_memory_per_task),
        };
        self.report(scope, table, &own, defaults, problems);

        let (Some((name, _)), Field::Set(_, _), Some(restart)) = (&entry.name, &wasm, restart)
        else {
            return entry;
        };
        entry.task = Some(TaskConfig {
            name: name.clone(),
            spec,
            depends_on: entry.deps.iter().map(|(d, _)| d.clone()).collect(),
            restart,
        });
        entry
    }

    /// Reports what the rulebook found wrong with a task (or with
    /// `[defaults]`), each problem at the key it names (see [`locate`]),
    /// else at the table. A bad value that came from `[defaults]` was
    /// reported there, once, by [`Parser::defaults_problems`]: not again for
    /// each task it reaches. A conflict is the task's, though its key may be
    /// in `[defaults]` (say `isolation = "process"` for a task of a group).
    fn report(
        &mut self,
        scope: &Scope,
        table: &Span,
        own: &Partial,
        defaults: &Partial,
        problems: Vec<Problem>,
    ) {
        for problem in problems {
            let (span, in_defaults) =
                locate(&problem.field, own, defaults).unwrap_or_else(|| (table.clone(), false));
            if in_defaults && problem.kind == ProblemKind::InvalidValue {
                continue;
            }
            self.error(
                scope,
                Some(&problem.field),
                &span,
                config_kind(problem.kind),
                problem.message,
            );
        }
    }

    /// The bad values of `[defaults]` itself, reported once under
    /// `[defaults]`, whether or not a task uses them. A bad value is bad
    /// whatever the task (unlike a conflict, which needs the task's other
    /// fields and is reported with it).
    fn defaults_problems(&mut self, defaults: &Partial, table: &Span) {
        let spec = merged_spec(defaults, &Partial::default());
        let problems = spec_problems(&spec, self.max_memory_per_task)
            .into_iter()
            .filter(|p| p.kind == ProblemKind::InvalidValue)
            .collect();
        self.report(
            &Scope::Defaults,
            table,
            defaults,
            &Partial::default(),
            problems,
        );
    }

    /// The shared memory group a task joins, checked: it must exist, and the
    /// task's `wasm` (if given) must be the group's module. That the task
    /// is thread-isolated is the rulebook's to check.
    fn task_group(
        &mut self,
        scope: &Scope,
        own: &Partial,
        defaults: &Partial,
    ) -> Option<GroupSpec> {
        let (name, span) = match own.shared_memory.clone().or(&defaults.shared_memory) {
            Field::Set(name, span) => (name, span),
            _ => return None,
        };
        let Some(group) = self.groups.iter().find(|g| g.name == name).cloned() else {
            let known: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
            let hint = suggest(&name, known.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            self.error(
                scope,
                Some("shared_memory"),
                &span,
                Kind::InvalidValue,
                format!("no [[shared_memory]] group is named `{name}`{hint}"),
            );
            return None;
        };
        if let Field::Set(wasm, wasm_span) = own.wasm.clone().or(&defaults.wasm) {
            let problem = match self.same_module(&wasm, &group.wasm) {
                Ok(true) => None,
                Ok(false) => Some((
                    Kind::Conflict,
                    format!(
                        "`{}` is not the module of shared memory group `{name}`; expected `{}` \
                         (or leave `wasm` out)",
                        wasm.display(),
                        group.wasm.display()
                    ),
                )),
                Err(err) => Some((
                    Kind::MissingFile,
                    format!(
                        "cannot read `{}` or `{}` to compare them: {err}",
                        wasm.display(),
                        group.wasm.display()
                    ),
                )),
            };
            if let Some((kind, message)) = problem {
                self.error(scope, Some("wasm"), &wasm_span, kind, message);
                return None;
            }
        }
        Some(group)
    }

    /// Whether the Wasm files `a` and `b` are the same module, compared as
    /// the runner compares a task's program with its group's
    /// (`group::same_module`): by the SHA-256 of their bytes, so a copy or
    /// another path to the same file counts as the same module.
    fn same_module(&mut self, a: &Path, b: &Path) -> std::io::Result<bool> {
        if a == b {
            return Ok(true);
        }
        // Files of different lengths differ: no need to read them.
        if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
            return Ok(false);
        }
        Ok(self.content_hash(a)? == self.content_hash(b)?)
    }

    /// The SHA-256 of the file at `path`, read once per parse.
    fn content_hash(&mut self, path: &Path) -> std::io::Result<ContentHash> {
        if let Some(hash) = self.hashes.get(path) {
            return Ok(*hash);
        }
        let hash = content_hash(&std::fs::read(path)?);
        self.hashes.insert(path.to_owned(), hash);
        Ok(hash)
    }

    /// One `[[shared_memory]]` table.
    fn group(&mut self, index: usize, value: &Value<'_>) -> Option<GroupSpec> {
        let scope = Scope::Group { index, name: None };
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                &scope,
                "shared_memory",
                value,
                "a table ([[shared_memory]])",
            );
            return None;
        };
        let name = table.get("name").and_then(|v| {
            let name = self.name(&scope, v);
            match name {
                Field::Set(name, _) => Some(name),
                _ => None,
            }
        });
        let scope = Scope::Group {
            index,
            name: name.clone(),
        };
        let (mut wasm, mut initial, mut maximum) = (None, None, None);
        let (mut initial_span, mut maximum_span) = (value.span(), value.span());
        for (key, value) in table.iter() {
            let k = key.get_ref().as_ref();
            match k {
                "name" => {}
                "wasm" => wasm = self.path(&scope, k, value, Expect::Wasm).value(),
                "initial" => {
                    initial = self.size(&scope, k, value);
                    initial_span = value.span();
                }
                "maximum" => {
                    maximum = self.size(&scope, k, value);
                    maximum_span = value.span();
                }
                _ => self.unknown_field(&scope, "", key, GROUP_FIELDS),
            }
        }
        // What the runner refuses when it creates a group, as far as the
        // file alone tells (the module's own limits need it compiled, which
        // is `isola up`'s job), checked against the default runner `isola
        // up` uses: so `isola check` does not pass a set whose group then
        // fails to start. Such a group is still returned, so that its tasks
        // are not also told it does not exist; the set is invalid anyway.
        if let (Some(initial), Some(maximum)) = (initial, maximum)
            && initial > maximum
        {
            self.invalid(
                &scope,
                "initial",
                &initial_span,
                format!("{initial} is more than the group's `maximum` ({maximum})"),
            );
        }
        let mut reserve = maximum.map_or(0, |m| m.as_u64());
        if let Some(max) = maximum {
            let budget = crate::RunnerConfig::default().shared_memory_budget;
            if self.shared_reserved.saturating_add(max.as_u64()) > budget {
                self.invalid(
                    &scope,
                    "maximum",
                    &maximum_span,
                    format!(
                        "{max} would exceed the runner's shared memory budget ({} of {} taken \
                         by the groups before this one)",
                        ByteSize(self.shared_reserved),
                        ByteSize(budget)
                    ),
                );
                // Reported here once: the groups after it are not blamed.
                reserve = 0;
            }
        }
        let missing = |p: &mut Self, field: &str| {
            p.error(
                &scope,
                Some(field),
                &value.span(),
                Kind::MissingField,
                format!("every [[shared_memory]] needs `{field}`"),
            );
        };
        if name.is_none() && table.get("name").is_none() {
            missing(self, "name");
        }
        if wasm.is_none() && table.get("wasm").is_none() {
            missing(self, "wasm");
        }
        if maximum.is_none() && table.get("maximum").is_none() {
            missing(self, "maximum");
        }
        if let Some(name) = &name
            && self.groups_seen.contains(name)
        {
            self.error(
                &scope,
                Some("name"),
                &value.span(),
                Kind::DuplicateName,
                format!("another [[shared_memory]] is named `{name}`"),
            );
            return None;
        }
        let name = name?;
        self.groups_seen.push(name.clone());
        if self.groups.len() >= crate::loader::MAX_GROUPS as usize {
            self.error(
                &scope,
                None,
                &value.span(),
                Kind::InvalidValue,
                format!(
                    "a runner holds at most {} shared memory groups",
                    crate::loader::MAX_GROUPS
                ),
            );
        }
        let group = GroupSpec {
            name,
            wasm: wasm?,
            initial,
            maximum: maximum?,
        };
        self.shared_reserved = self.shared_reserved.saturating_add(reserve);
        Some(group)
    }

    /// The restart policy of a task. `[defaults]` may set one for all
    /// process tasks; a thread task takes none from there (it cannot
    /// crash), and one set on a thread task itself is refused by the
    /// rulebook ([`rules::restart_problems`]), as is a `max_restarts`
    /// without `restart = "on-crash"`. Invalid fields (already reported)
    /// count as absent.
    fn restart(
        &mut self,
        scope: &Scope,
        table: &Span,
        own: &Partial,
        defaults: &Partial,
        isolation: Isolation,
    ) -> RestartPolicy {
        let restart = match isolation {
            Isolation::Thread => own.restart.clone(),
            Isolation::Process => own.restart.clone().or(&defaults.restart),
        };
        let on_crash = matches!(restart, Field::Set(Restart::OnCrash, _));
        let max_restarts_set = matches!(own.max_restarts, Field::Set(..));
        let problems = rules::restart_problems(isolation, on_crash, max_restarts_set);
        self.report(scope, table, own, defaults, problems);
        if on_crash && isolation == Isolation::Process {
            RestartPolicy::OnCrash {
                max_restarts: own
                    .max_restarts
                    .clone()
                    .or(&defaults.max_restarts)
                    .value()
                    .unwrap_or(DEFAULT_MAX_RESTARTS),
            }
        } else {
            RestartPolicy::Never
        }
    }

    fn invalid(&mut self, scope: &Scope, field: &str, span: &Span, message: String) {
        self.error(scope, Some(field), span, Kind::InvalidValue, message);
    }

    fn name(&mut self, scope: &Scope, value: &Value<'_>) -> Field<String> {
        let span = value.span();
        let name =
            self.string(scope, "name", value)
                .and_then(|name| match graph::name_problem(&name) {
                    Some(problem) => {
                        self.invalid(scope, "name", &span, problem);
                        None
                    }
                    None => Some(name),
                });
        Field::from_option(name, span)
    }

    fn string(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(scope, field, value, "a string");
                None
            }
        }
    }

    fn strings(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(scope, field, value, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(scope, &format!("{field}[{i}]"), item) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn bool(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(scope, field, value, "a boolean (true or false)");
                None
            }
        }
    }

    /// A non-negative integer.
    fn integer(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<u64> {
        let DeValue::Integer(int) = value.get_ref() else {
            self.wrong_type(scope, field, value, "an integer");
            return None;
        };
        match i64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) => match u64::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.invalid(
                        scope,
                        field,
                        &value.span(),
                        format!("must not be negative, found {n}"),
                    );
                    None
                }
            },
            Err(_) => {
                self.invalid(scope, field, &value.span(), "is not a valid integer".into());
                None
            }
        }
    }

    /// A size: a string such as `"64MiB"`, or a number of bytes.
    fn size(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<ByteSize> {
        match value.get_ref() {
            DeValue::Integer(_) => self.integer(scope, field, value).map(ByteSize),
            DeValue::String(s) => match super::parse_size(s) {
                Ok(size) => Some(size),
                Err(err) => {
                    // A number too large is a size, just not one that fits:
                    // say so rather than "not a size".
                    let message = match err {
                        super::SizeError::TooLarge => format!("\"{s}\" is {err}"),
                        _ => format!(
                            "\"{s}\" is not a size; use one like \"64MiB\", \"512KiB\" or \"1GiB\""
                        ),
                    };
                    self.invalid(scope, field, &value.span(), message);
                    None
                }
            },
            _ => {
                self.wrong_type(scope, field, value, "a size such as \"64MiB\"");
                None
            }
        }
    }

    /// A duration: a string such as `"1.5s"` or `"500ms"`.
    fn duration(&mut self, scope: &Scope, field: &str, value: &Value<'_>) -> Option<Duration> {
        let DeValue::String(s) = value.get_ref() else {
            self.wrong_type(
                scope,
                field,
                value,
                "a duration such as \"1.5s\" or \"500ms\"",
            );
            return None;
        };
        // A zero duration parses; whether it can work is the rulebook's.
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            // humantime's own message ("expected number at 0") helps less
            // than an example.
            Err(_) => {
                self.invalid(
                    scope,
                    field,
                    &value.span(),
                    format!(
                        "\"{s}\" is not a duration; use one like \"1.5s\", \"500ms\" or \"2m\""
                    ),
                );
                None
            }
        }
    }

    /// A path, resolved against the config file's directory and checked to
    /// exist as what `expect` says.
    fn path(
        &mut self,
        scope: &Scope,
        field: &str,
        value: &Value<'_>,
        expect: Expect,
    ) -> Field<PathBuf> {
        let span = value.span();
        let Some(raw) = self.string(scope, field, value) else {
            return Field::Bad;
        };
        if raw.is_empty() {
            self.invalid(scope, field, &span, "the path is empty".into());
            return Field::Bad;
        }
        let path = self.base.join(&raw);
        let problem = match std::fs::metadata(&path) {
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    && expect == Expect::Creatable
                    && path.parent().is_some_and(Path::is_dir) =>
            {
                None
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some((
                Kind::MissingFile,
                format!(
                    "`{}` does not exist (relative paths start from the directory of the config file)",
                    path.display()
                ),
            )),
            Err(err) => Some((
                Kind::MissingFile,
                format!("cannot access `{}`: {err}", path.display()),
            )),
            Ok(meta) if expect == Expect::Dir && !meta.is_dir() => Some((
                Kind::InvalidValue,
                format!("`{}` is not a directory", path.display()),
            )),
            Ok(meta) if expect != Expect::Dir && meta.is_dir() => Some((
                Kind::InvalidValue,
                format!("`{}` is a directory, not a file", path.display()),
            )),
            Ok(_) if expect == Expect::Wasm => wasm_problem(&path).map(|m| (Kind::InvalidValue, m)),
            Ok(_) => None,
        };
        match problem {
            Some((kind, message)) => {
                self.error(scope, Some(field), &span, kind, message);
                Field::Bad
            }
            None => Field::Set(path, span),
        }
    }

    /// `env = { NAME = "value" }`. The names are checked by the rulebook,
    /// once merged with the defaults' (see [`Partial::spans`]).
    fn env(
        &mut self,
        scope: &Scope,
        value: &Value<'_>,
        spans: &mut BTreeMap<String, Span>,
    ) -> Option<BTreeMap<String, String>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                scope,
                "env",
                value,
                "a table of strings (env = { KEY = \"value\" })",
            );
            return None;
        };
        let mut env = BTreeMap::new();
        let mut ok = true;
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            let field = rules::env_field(name);
            // A problem with a variable is most often its name: point there.
            spans.insert(field.clone(), key.span());
            match self.string(scope, &field, value) {
                Some(v) => {
                    env.insert(name.to_owned(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(env)
    }

    /// `dirs = [{ host = "data", guest = "/data", writable = true }]`. The
    /// guest paths are checked by the rulebook.
    fn dirs(
        &mut self,
        scope: &Scope,
        value: &Value<'_>,
        spans: &mut BTreeMap<String, Span>,
    ) -> Option<Vec<DirGrant>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                scope,
                "dirs",
                value,
                "an array of tables (dirs = [{ host = \"data\", guest = \"/data\" }])",
            );
            return None;
        };
        let mut dirs = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let prefix = format!("dirs[{i}]");
            spans.insert(prefix.clone(), item.span());
            let DeValue::Table(table) = item.get_ref() else {
                self.wrong_type(
                    scope,
                    &prefix,
                    item,
                    "a table ({ host = \"data\", guest = \"/data\" })",
                );
                ok = false;
                continue;
            };
            let mut host = Field::Absent;
            let mut guest = None;
            let mut writable = false;
            for (key, value) in table.iter() {
                let field = format!("{prefix}.{}", key.get_ref());
                spans.insert(field.clone(), value.span());
                match key.get_ref().as_ref() {
                    "host" => host = self.path(scope, &field, value, Expect::Dir),
                    "guest" => match self.string(scope, &field, value) {
                        Some(g) => guest = Some(g),
                        None => ok = false,
                    },
                    "writable" => match self.bool(scope, &field, value) {
                        Some(w) => writable = w,
                        None => ok = false,
                    },
                    _ => {
                        self.unknown_field(scope, &format!("{prefix}."), key, DIR_FIELDS);
                        ok = false;
                    }
                }
            }
            match host {
                Field::Set(host, _) => dirs.push(DirGrant {
                    host,
                    guest,
                    writable,
                }),
                Field::Absent => {
                    self.error(
                        scope,
                        Some(&format!("{prefix}.host")),
                        &item.span(),
                        Kind::MissingField,
                        "a directory grant needs a `host` directory".into(),
                    );
                    ok = false;
                }
                Field::Bad => ok = false,
            }
        }
        ok.then_some(dirs)
    }

    /// `stdin = "closed"`, `stdin = { text = "..." }` or
    /// `stdin = { file = "path" }`.
    fn stdin(&mut self, scope: &Scope, value: &Value<'_>) -> Option<Stdin> {
        const SHAPES: &str = "\"closed\", { text = \"...\" } or { file = \"path\" }";
        match value.get_ref() {
            DeValue::String(s) if s == "closed" => Some(Stdin::Closed),
            DeValue::String(s) => {
                self.invalid(
                    scope,
                    "stdin",
                    &value.span(),
                    format!("expected {SHAPES}, found \"{s}\""),
                );
                None
            }
            DeValue::Table(table) => {
                let mut stdin = None;
                let mut ok = true;
                let mut seen = false;
                for (key, value) in table.iter() {
                    let field = format!("stdin.{}", key.get_ref());
                    let next = match key.get_ref().as_ref() {
                        "text" => self
                            .string(scope, &field, value)
                            .map(|t| Stdin::Bytes(t.into_bytes())),
                        "file" => self
                            .path(scope, &field, value, Expect::File)
                            .value()
                            .map(Stdin::File),
                        _ => {
                            self.unknown_field(scope, "stdin.", key, STDIN_FIELDS);
                            ok = false;
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen, true) {
                        self.error(
                            scope,
                            Some(&field),
                            &key.span(),
                            Kind::Conflict,
                            "`stdin` takes either `text` or `file`, not both".into(),
                        );
                        ok = false;
                    }
                    match next {
                        Some(next) => stdin = Some(next),
                        None => ok = false,
                    }
                }
                if !seen && ok {
                    self.error(
                        scope,
                        Some("stdin"),
                        &value.span(),
                        Kind::MissingField,
                        format!("expected {SHAPES}"),
                    );
                }
                stdin.filter(|_| ok)
            }
            _ => {
                self.wrong_type(scope, "stdin", value, SHAPES);
                None
            }
        }
    }

    /// A `limits` table, read without naming any of its keys: the keys
    /// are [`LIMIT_FIELDS`], and each value is read by the typed reader its
    /// [`LimitKind`] names, then checked by deserializing it, alone, into
    /// [`Limits`]. A new field of [`Limits`] is thereby accepted here, with
    /// the messages of the reader for its type.
    fn limits(&mut self, scope: &Scope, value: &Value<'_>, p: &mut Partial) {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(
                scope,
                "limits",
                value,
                "a table (limits = { timeout = \"1s\" })",
            );
            return;
        };
        // Only the types here: which values can work (a zero fuel or queue,
        // a message size too large for a process task) is the rulebook's.
        for (key, value) in table.iter() {
            let span = value.span();
            let k = key.get_ref().as_ref();
            let field = format!("limits.{k}");
            p.spans.insert(field.clone(), span.clone());
            match limit_kind(k) {
                Some(kind) => {
                    let read = self.limit(scope, &field, k, kind, value);
                    p.limits
                        .insert(k.to_owned(), Field::from_option(read, span));
                }
                None => self.unknown_field(scope, "limits.", key, *LIMIT_FIELDS),
            }
        }
    }

    /// The value of the `limits` key `key` (reported as `field`) in serde's
    /// data model, or `None` when it is invalid (reported here). Sizes,
    /// durations and integers go through the parser's own readers, so their
    /// messages are the same as everywhere else in the file; then the value
    /// must deserialize as `key` of [`Limits`], and serde's refusal is
    /// reported in the parser's words where they fit.
    fn limit(
        &mut self,
        scope: &Scope,
        field: &str,
        key: &str,
        kind: LimitKind,
        value: &Value<'_>,
    ) -> Option<Json> {
        let json = match kind {
            LimitKind::Size => Json::from(self.size(scope, field, value)?.as_u64()),
            LimitKind::Duration => {
                let duration = self.duration(scope, field, value)?;
                // humantime's text reads back to the same duration.
                Json::from(humantime::format_duration(duration).to_string())
            }
            LimitKind::Integer => Json::from(self.integer(scope, field, value)?),
            LimitKind::Other => match toml_to_json(value.get_ref()) {
                Ok(json) => json,
                Err(message) => {
                    self.invalid(scope, field, &value.span(), message);
                    return None;
                }
            },
        };
        match one_limit(key, json.clone()) {
            Ok(_) => Some(json),
            Err(err) => {
                self.serde_error(scope, field, value, &err);
                None
            }
        }
    }

    /// Reports serde's refusal of a `limits` value. A wrong type is worded
    /// as [`Parser::wrong_type`] words it (the TOML type found, serde's
    /// idea of what was expected); a wrong value as "expected ..., found
    /// ..." when serde says both; anything else in serde's words.
    fn serde_error(
        &mut self,
        scope: &Scope,
        field: &str,
        value: &Value<'_>,
        err: &serde_json::Error,
    ) {
        let message = err.to_string();
        // `rsplit`: the value serde quotes may itself hold ", expected ".
        if let Some((_, expected)) = message
            .strip_prefix("invalid type: ")
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            self.wrong_type(scope, field, value, expected);
            return;
        }
        let message = match message
            .strip_prefix("invalid value: ")
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            Some((found, expected)) => format!("expected {expected}, found {found}"),
            None => message,
        };
        self.invalid(scope, field, &value.span(), message);
    }

    fn depends_on(&mut self, scope: &Scope, value: &Value<'_>) -> Option<Vec<(String, Span)>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(scope, "depends_on", value, "an array of task names");
            return None;
        };
        let mut deps: Vec<(String, Span)> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(scope, &format!("depends_on[{i}]"), item) {
                // Listing a dependency twice is harmless; keep the first.
                Some(name) if deps.iter().any(|(d, _)| *d == name) => {}
                Some(name) => deps.push((name, item.span())),
                None => ok = false,
            }
        }
        ok.then_some(deps)
    }
}

/// The spec a task's own fields and the defaults make, the task winning
/// (`env` and `limits` key by key). `wasm`, `isolation`, `shared_group`,
/// `reuse_worker` and `sandbox` are left for the caller, which has rules of its own for
/// them. A field that was invalid (already reported) is left at its
/// default.
fn merged_spec(own: &Partial, defaults: &Partial) -> TaskSpec {
    /// The task's value, else the defaults' one.
    fn pick<T: Clone>(own: &Field<T>, defaults: &Field<T>) -> Option<T> {
        own.clone().or(defaults).value()
    }
    let env = match (&own.env, &defaults.env) {
        (Field::Set(mine, _), Field::Set(theirs, _)) => {
            let mut env = theirs.clone();
            env.extend(mine.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(env)
        }
        (mine, theirs) => pick(mine, theirs),
    };
    let limits = merged_limits(&own.limits, &defaults.limits);
    TaskSpec {
        argv0: pick(&own.argv0, &defaults.argv0),
        args: pick(&own.args, &defaults.args).unwrap_or_default(),
        env: env.unwrap_or_default(),
        inherit_env: pick(&own.inherit_env, &defaults.inherit_env).unwrap_or_default(),
        dirs: pick(&own.dirs, &defaults.dirs).unwrap_or_default(),
        stdin: pick(&own.stdin, &defaults.stdin).unwrap_or_default(),
        input: pick(&own.input, &defaults.input),
        host_functions: pick(&own.host_functions, &defaults.host_functions).unwrap_or_default(),
        kv: pick(&own.kv, &defaults.kv),
        limits,
        ..TaskSpec::new("")
    }
}

/// The limits the task's own `limits` table and the defaults' make, key by
/// key, the task winning; a key that is invalid in the table that wins
/// (already reported) is left at [`Limits`]' default, as is a key neither
/// table sets.
fn merged_limits(
    own: &BTreeMap<String, Field<Json>>,
    defaults: &BTreeMap<String, Field<Json>>,
) -> Limits {
    let mut merged = defaults.clone();
    merged.extend(own.iter().map(|(key, field)| (key.clone(), field.clone())));
    let object: serde_json::Map<String, Json> = merged
        .into_iter()
        .filter_map(|(key, field)| field.value().map(|value| (key, value)))
        .collect();
    // Each value was accepted on its own (`Parser::limit`), and serde reads
    // the fields of `Limits` independently of each other, so together they
    // are accepted too. Were they ever not, the defaults are kept: the
    // input must not panic the parser.
    serde_json::from_value(Json::Object(object)).unwrap_or_default()
}

/// How the value of a `limits` key is read. Found by asking the key's
/// serde form what it accepts ([`LimitKind::of`]), never by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitKind {
    /// A byte size: a number of bytes or text such as `"64MiB"`
    /// ([`Parser::size`]).
    Size,
    /// A duration: text such as `"1.5s"` ([`Parser::duration`]).
    Duration,
    /// A non-negative integer ([`Parser::integer`]).
    Integer,
    /// Anything else: the TOML value is handed to serde as it is
    /// ([`toml_to_json`]).
    Other,
}

impl LimitKind {
    /// The kind of the [`Limits`] field serialized as `key`, told from
    /// what deserializing `{key: value}` makes of a few probes: a size
    /// reads `"1KiB"` as 1024 bytes and refuses `"lots"`; a duration reads
    /// `"1s"` as `"1000ms"` and refuses `"1KiB"`; an integer takes `1` but
    /// not `0.5`.
    fn of(key: &str) -> LimitKind {
        let read = |value: Json| one_limit(key, value).ok();
        let same = |a: Json, b: Json| matches!((read(a), read(b)), (Some(a), Some(b)) if a == b);
        if same(Json::from("1KiB"), Json::from(1024_u64)) && read(Json::from("lots")).is_none() {
            LimitKind::Size
        } else if same(Json::from("1s"), Json::from("1000ms")) && read(Json::from("1KiB")).is_none()
        {
            LimitKind::Duration
        } else if read(Json::from(1_u64)).is_some() && read(Json::from(0.5_f64)).is_none() {
            LimitKind::Integer
        } else {
            LimitKind::Other
        }
    }
}

/// The kind of the `limits` key `key`, or `None` for a key [`Limits`]
/// does not have.
fn limit_kind(key: &str) -> Option<LimitKind> {
    LIMIT_KINDS
        .iter()
        .find(|(name, _)| *name == key)
        .map(|&(_, kind)| kind)
}

/// What serde makes of `{key: value}` as [`Limits`] (the other fields at
/// their defaults): whether `value` is a valid `key`, and what it means.
fn one_limit(key: &str, value: Json) -> Result<Limits, serde_json::Error> {
    let mut object = serde_json::Map::new();
    object.insert(key.to_owned(), value);
    serde_json::from_value(Json::Object(object))
}

/// The names [`Limits`]' `Deserialize` accepts, in declaration order: the
/// `fields` a derived `Deserialize` passes to `deserialize_struct` (the
/// list serde's own "unknown field" error gives), caught by a deserializer
/// that only records them. Empty if `Limits` ever stops deserializing as
/// a struct (a test checks it does not).
fn limit_names() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// Records the field names it is asked for, then refuses.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only the field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut names: &'static [&'static str] = &[];
    // Refused by design: only `names` is wanted.
    let _ = <Limits as serde::Deserialize>::deserialize(FieldNames(&mut names));
    names
}

/// A TOML value as JSON, for serde to read as a limit: strings, integers,
/// floats, booleans, arrays and tables as themselves, a datetime as its
/// TOML text. Fails, with a message, on what JSON cannot hold: an integer
/// past 64 bits, a float that is not finite.
fn toml_to_json(value: &DeValue<'_>) -> Result<Json, String> {
    Ok(match value {
        DeValue::String(s) => Json::String(s.to_string()),
        DeValue::Integer(int) => {
            let (digits, radix) = (int.as_str(), int.radix());
            if let Ok(n) = i64::from_str_radix(digits, radix) {
                Json::from(n)
            } else if let Ok(n) = u64::from_str_radix(digits, radix) {
                Json::from(n)
            } else {
                return Err(format!("{int} is not a valid integer"));
            }
        }
        DeValue::Float(float) => float
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(|| format!("{float} is not a finite number"))?,
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(datetime) => Json::String(datetime.to_string()),
        DeValue::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| toml_to_json(item.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => Json::Object(
            table
                .iter()
                .map(|(key, value)| -> Result<(String, Json), String> {
                    Ok((key.get_ref().to_string(), toml_to_json(value.get_ref())?))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// `reuse_worker` for a task: a process task takes it from the task or
/// `[defaults]`; a thread task only from itself (from `[defaults]` it does
/// not apply; on the task itself the rulebook refuses it). With the
/// isolation unknown (invalid), the task's own value.
fn reuse_worker(own: &Partial, defaults: &Partial, isolation: Option<Isolation>) -> bool {
    let field = match isolation {
        Some(Isolation::Process) => own.reuse_worker.clone().or(&defaults.reuse_worker),
        Some(Isolation::Thread) | None => own.reuse_worker.clone(),
    };
    field.value().unwrap_or(false)
}

/// `sandbox` for a task, by the rule of [`reuse_worker`]: from
/// `[defaults]` it reaches process tasks only.
fn sandbox(own: &Partial, defaults: &Partial, isolation: Option<Isolation>) -> Option<Sandbox> {
    let field = match isolation {
        Some(Isolation::Process) => own.sandbox.clone().or(&defaults.sandbox),
        Some(Isolation::Thread) | None => own.sandbox.clone(),
    };
    field.value()
}

/// Every problem the rulebook finds in `spec` as a runner with the
/// per-task memory ceiling `max_memory_per_task` would: [`rules::problems`]
/// and [`rules::ceiling_problem`]. So `isola check` refuses whatever
/// `isola up` would refuse at start for a reason in the file.
fn spec_problems(spec: &TaskSpec, max_memory_per_task: u64) -> Vec<Problem> {
    let mut found = rules::problems(spec);
    found.extend(rules::ceiling_problem(spec, max_memory_per_task));
    found
}

/// The problems of `spec` whatever its isolation. For a task whose
/// `isolation` is invalid (already reported), only what would be wrong
/// either way is certain: the problems found both as a thread task and as
/// a process task.
fn certain_problems(spec: &TaskSpec, max_memory_per_task: u64) -> Vec<Problem> {
    let as_isolation = |isolation| {
        let mut spec = spec.clone();
        spec.isolation = isolation;
        spec_problems(&spec, max_memory_per_task)
    };
    let process = as_isolation(Isolation::Process);
    as_isolation(Isolation::Thread)
        .into_iter()
        .filter(|problem| process.contains(problem))
        .collect()
}

/// Where to report a problem with `field` (a rulebook name such as
/// `dirs[0].guest`): the task's own key, else the `[defaults]` key its
/// value came from, else the nearest enclosing key written (`dirs[0]`,
/// then `dirs`), the task's first. The flag says the span is in
/// `[defaults]`. `None` when neither table wrote any part of the field
/// (a default value, or the group's `wasm`).
///
/// The task's key comes first at each level because the task wins the
/// merge: where both tables set a field, the value is the task's.
fn locate(field: &str, own: &Partial, defaults: &Partial) -> Option<(Span, bool)> {
    let mut path = field;
    loop {
        if let Some(span) = own.spans.get(path) {
            return Some((span.clone(), false));
        }
        if let Some(span) = defaults.spans.get(path) {
            return Some((span.clone(), true));
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
    }
}

/// Records the span of each item of the array `value` as `field[i]`, the
/// name the rulebook gives it.
fn item_spans(spans: &mut BTreeMap<String, Span>, field: &str, value: &Value<'_>) {
    if let DeValue::Array(items) = value.get_ref() {
        for (i, item) in items.iter().enumerate() {
            spans.insert(format!("{field}[{i}]"), item.span());
        }
    }
}

/// Why `path` is not a WebAssembly file, if it is not. Only the header is
/// read: compiling is `isola up`'s job, and would make `check` slow.
fn wasm_problem(path: &Path) -> Option<String> {
    use std::io::Read;
    // WebAssembly text: parsed (and any error in it reported) when the
    // task loads, as a binary is compiled then.
    if path.extension().is_some_and(|ext| ext == "wat") {
        return std::fs::File::open(path)
            .err()
            .map(|err| format!("cannot read `{}`: {err}", path.display()));
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    match read {
        Ok(()) if magic == *b"\0asm" => None,
        Ok(()) => Some(format!(
            "`{}` is not a WebAssembly file (it does not start with `\\0asm`)",
            path.display()
        )),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Some(format!(
            "`{}` is not a WebAssembly file (it is shorter than a Wasm header)",
            path.display()
        )),
        Err(err) => Some(format!("cannot read `{}`: {err}", path.display())),
    }
}

/// The known name closest to `name`, if one is close enough to be a typo.
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (distance(name, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `a`, `b` or `c`.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_fields_are_the_serialized_fields_of_limits_in_their_order() {
        let object = serde_json::to_value(Limits::default()).expect("limits as JSON");
        let object = object.as_object().expect("an object");
        assert_eq!(object.len(), LIMIT_FIELDS.len(), "{:?}", *LIMIT_FIELDS);
        assert!(LIMIT_FIELDS.iter().all(|key| object.contains_key(*key)));
        // Declaration order: the order serde writes the fields in.
        let text = serde_json::to_string(&Limits::default()).expect("limits as JSON");
        let mut at = 0;
        for key in LIMIT_FIELDS.iter() {
            let found = text[at..].find(&format!("\"{key}\":"));
            at += found.unwrap_or_else(|| panic!("`{key}` out of order in {text}"));
        }
    }

    #[test]
    fn each_limit_is_read_by_the_reader_for_its_type() {
        assert_eq!(limit_kind("max_memory"), Some(LimitKind::Size));
        assert_eq!(limit_kind("max_output"), Some(LimitKind::Size));
        assert_eq!(limit_kind("timeout"), Some(LimitKind::Duration));
        assert_eq!(limit_kind("fuel"), Some(LimitKind::Integer));
        assert_eq!(limit_kind("message_queue"), Some(LimitKind::Integer));
        assert_eq!(limit_kind("cpu"), None);
        assert_eq!(LIMIT_KINDS.len(), LIMIT_FIELDS.len());
    }

    #[test]
    fn merged_limits_are_the_tasks_over_the_defaults_key_by_key() {
        let table = |pairs: Vec<(&str, Field<Json>)>| -> BTreeMap<String, Field<Json>> {
            pairs
                .into_iter()
                .map(|(key, field)| (key.to_owned(), field))
                .collect()
        };
        let defaults = table(vec![
            ("fuel", Field::Set(Json::from(5_u64), 0..0)),
            ("timeout", Field::Set(Json::from("2s"), 0..0)),
            ("max_messages", Field::Set(Json::from(3_u64), 0..0)),
        ]);
        // An invalid key (reported already) is not filled from [defaults].
        let own = table(vec![
            ("fuel", Field::Set(Json::from(7_u64), 0..0)),
            ("timeout", Field::Bad),
            ("capture", Field::Set(Json::from(512_u64), 0..0)),
        ]);
        let expected = Limits {
            fuel: Some(7),
            max_messages: Some(3),
            capture: ByteSize(512),
            ..Limits::default()
        };
        assert_eq!(merged_limits(&own, &defaults), expected);
        assert_eq!(
            merged_limits(&BTreeMap::new(), &BTreeMap::new()),
            Limits::default()
        );
    }

    #[test]
    fn toml_values_become_json() {
        let (doc, errors) = DeTable::parse_recoverable(
            "a = [1, -2, 0x10, 1.5, true, \"s\", { b = 1979-05-27 }]\nn = nan\ni = -inf\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let doc = doc.get_ref();
        let value = |key: &str| toml_to_json(doc.get(key).expect(key).get_ref());
        assert_eq!(
            value("a"),
            Ok(serde_json::json!([1, -2, 16, 1.5, true, "s", { "b": "1979-05-27" }]))
        );
        assert_eq!(value("n"), Err("nan is not a finite number".to_owned()));
        assert_eq!(value("i"), Err("-inf is not a finite number".to_owned()));
    }
}
