//! Task sets: many tasks described in one `tasks.toml`, each mapped one to
//! one onto a [`TaskSpec`], with dependencies between them.
//!
//! ```toml
//! [defaults]                      # merged into every task; the task wins
//! limits = { timeout = "10s", max_memory = "256MiB" }
//!
//! [[task]]
//! name = "fetch"
//! wasm = "guests/fetch.wasm"      # relative to this file's directory
//! dirs = [{ host = "data", guest = "/data", writable = true }]
//!
//! [[task]]
//! name = "report"
//! wasm = "guests/report.wasm"
//! isolation = "process"
//! restart = "on-crash"
//! max_restarts = 2
//! depends_on = ["fetch"]
//! ```
//!
//! [`TaskSet::load`] checks the whole file and reports every problem at
//! once, each with its file, line and column, its task and its field.
//! `isola check` prints them; the `taskset` module runs a loaded set.
//!
//! # Examples
//!
//! ```
//! use isola::config::TaskSet;
//!
//! let text = r#"
//! [[task]]
//! name = "build"
//! wasm = "build.wasm"
//! limits = { timeout = "soon" }
//! "#;
//! // `TaskSet::load("tasks.toml")` reads the file; this parses text.
//! match TaskSet::parse(text, "tasks.toml") {
//!     Ok(set) => println!("{} tasks", set.len()),
//!     // One line per problem, with where it is:
//!     // `tasks.toml:5:21: task `build`: field `limits.timeout`: ...`
//!     Err(errors) => {
//!         assert!(errors.to_string().contains("limits.timeout"), "{errors}");
//!         eprintln!("{errors}");
//!     }
//! }
//! ```

mod error;
mod graph;
mod parse;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::size_text::{SizeError, parse_size};
pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, Location, Scope};

/// The keys a `[[task]]` table accepts (`[defaults]` takes the same except
/// `name` and `depends_on`).
pub const TASK_KEYS: &[&str] = parse::TASK_FIELDS;

/// The keys a task's `limits` table accepts.
pub use parse::LIMIT_FIELDS as LIMIT_KEYS;

use crate::rules::{self, ProblemKind};
use crate::spec::TaskSpec;

/// The config error kind of a problem found by the rulebook
/// ([`crate::rules`]).
fn config_kind(kind: ProblemKind) -> ConfigErrorKind {
    match kind {
        ProblemKind::InvalidValue => ConfigErrorKind::InvalidValue,
        ProblemKind::Conflict => ConfigErrorKind::Conflict,
    }
}

/// What happens when a process task's worker dies (its outcome is
/// [`crate::Outcome::Crashed`]).
///
/// In `tasks.toml`: `restart = "never"` (the default) or
/// `restart = "on-crash"`, with `max_restarts = N` (default 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// The first ending is the task's ending. The default.
    #[default]
    Never,
    /// Start the task again after a crash, at most `max_restarts` times. Any
    /// other outcome (an exit, a trap, a limit) is final: running the same
    /// program again would end the same way.
    OnCrash {
        /// Most restarts after the first attempt.
        max_restarts: u32,
    },
}

impl RestartPolicy {
    /// Restarts after a crash when none is given: 3.
    pub const DEFAULT_MAX_RESTARTS: u32 = parse::DEFAULT_MAX_RESTARTS;
}

/// One task of a set: a name, what to run, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskConfig {
    /// Unique within the set: letters, digits, `-`, `_` and `.`, starting
    /// with a letter or digit.
    pub name: String,
    /// What to run. The scheduler pipes stdout and stderr to its output sink
    /// whatever [`TaskSpec::stdout`] and [`TaskSpec::stderr`] say.
    pub spec: TaskSpec,
    /// Names of the tasks that must succeed before this one starts.
    pub depends_on: Vec<String>,
    /// What to do when the task's worker process crashes.
    pub restart: RestartPolicy,
}

impl TaskConfig {
    /// A task with no dependencies that is never restarted.
    pub fn new(name: impl Into<String>, spec: TaskSpec) -> TaskConfig {
        TaskConfig {
            name: name.into(),
            spec,
            depends_on: Vec::new(),
            restart: RestartPolicy::Never,
        }
    }
}

/// A checked set of tasks: names are valid and unique, every dependency
/// names a task of the set, there is no dependency cycle, and every task's
/// spec passes the rulebook that [`crate::Runner::spawn`] applies (what
/// depends on the host, such as a directory that must exist, is checked
/// when the set is loaded from a file, and again when a task starts).
///
/// A set loaded from a file is also checked against the limits of the
/// runner it will run on, as far as the file tells: each task's
/// `limits.max_memory` against the runner's per-task ceiling, and the
/// shared memory groups against its budget and group count. [`TaskSet::load`]
/// and [`TaskSet::parse`] take those of a default [`crate::RunnerConfig`],
/// which is what `isola up` runs a set on (so a set `isola check` accepts
/// does not fail at start for a reason in its file);
/// [`TaskSet::parse_with_ceiling`] takes another ceiling.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSet {
    path: Option<PathBuf>,
    tasks: Vec<TaskConfig>,
    groups: Vec<crate::group::GroupSpec>,
}

impl TaskSet {
    /// Reads and checks the `tasks.toml` at `path`. Relative paths in it are
    /// resolved against the file's directory.
    ///
    /// # Errors
    ///
    /// Every problem found, in file order: the file cannot be read, bad
    /// TOML, unknown fields, wrong types, bad values, missing files,
    /// duplicate names, unknown dependencies, cycles.
    pub fn load(path: impl AsRef<Path>) -> Result<TaskSet, ConfigErrors> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path).map_err(|err| parse::read_error(path, &err))?;
        TaskSet::parse(&source, path)
    }

    /// Checks `source` as if it were the contents of the file at `path`
    /// (used for relative paths and in messages; it is not read).
    ///
    /// # Errors
    ///
    /// As [`TaskSet::load`].
    pub fn parse(source: &str, path: impl AsRef<Path>) -> Result<TaskSet, ConfigErrors> {
        let ceiling = crate::RunnerConfig::default().max_memory_per_task;
        parse::parse(source, path.as_ref(), ceiling)
    }

    /// As [`TaskSet::parse`], for a set that will run on a runner whose
    /// [`crate::RunnerConfig::max_memory_per_task`] is `max_memory_per_task`
    /// (bytes) rather than the default: a task asking for more is an error
    /// at its `limits.max_memory`.
    ///
    /// # Errors
    ///
    /// As [`TaskSet::load`].
    pub fn parse_with_ceiling(
        source: &str,
        path: impl AsRef<Path>,
        max_memory_per_task: u64,
    ) -> Result<TaskSet, ConfigErrors> {
        parse::parse(source, path.as_ref(), max_memory_per_task)
    }

    /// A set built in code rather than read from a file.
    ///
    /// # Errors
    ///
    /// Invalid or duplicate names, unknown dependencies, cycles, every
    /// problem the rulebook finds in a task's spec (the same rules
    /// [`crate::Runner::spawn`] and `tasks.toml` apply: a NUL in an argument,
    /// a zero `limits.message_queue`, `reuse_worker` on a thread task...),
    /// and restart policies on thread tasks; the errors have no file
    /// position.
    ///
    /// # Examples
    ///
    /// ```
    /// use isola::TaskSpec;
    /// use isola::config::{TaskConfig, TaskSet};
    ///
    /// let build = TaskConfig::new("build", TaskSpec::new("build.wasm"));
    /// let mut test = TaskConfig::new("test", TaskSpec::new("test.wasm"));
    /// test.depends_on = vec!["build".into()];
    /// let set = TaskSet::new(vec![build, test]).expect("valid set");
    /// assert_eq!(set.len(), 2);
    ///
    /// let mut loop_ = TaskConfig::new("loop", TaskSpec::new("x.wasm"));
    /// loop_.depends_on = vec!["loop".into()];
    /// assert!(TaskSet::new(vec![loop_]).is_err());
    /// ```
    pub fn new(tasks: Vec<TaskConfig>) -> Result<TaskSet, ConfigErrors> {
        let mut errors = Vec::new();
        let scope = |i: usize, valid: bool| Scope::Task {
            index: i + 1,
            name: valid.then(|| tasks[i].name.clone()),
        };
        let mut error = |scope: Scope, field: &str, kind: ConfigErrorKind, message: String| {
            errors.push(ConfigError {
                file: None,
                location: None,
                scope,
                field: Some(field.to_owned()),
                kind,
                message,
            });
        };
        let mut names = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            let problem = graph::name_problem(&task.name);
            let valid = problem.is_none();
            if let Some(problem) = problem {
                error(
                    scope(i, false),
                    "name",
                    ConfigErrorKind::InvalidValue,
                    problem,
                );
            }
            // The spec's own rules, then the restart policy's (which lives
            // here, not in the spec); a policy built in code always carries
            // its `max_restarts`, so that is never set on its own.
            let mut problems = rules::problems(&task.spec);
            problems.extend(rules::restart_problems(
                task.spec.isolation,
                matches!(task.restart, RestartPolicy::OnCrash { .. }),
                false,
            ));
            for problem in problems {
                error(
                    scope(i, valid),
                    &problem.field,
                    config_kind(problem.kind),
                    problem.message,
                );
            }
            names.push(valid.then_some(task.name.as_str()));
        }
        let deps: Vec<Vec<&str>> = tasks
            .iter()
            .map(|t| t.depends_on.iter().map(String::as_str).collect())
            .collect();
        for problem in graph::check(&names, &deps) {
            let field = match problem.dep {
                Some(dep) => format!("depends_on[{dep}]"),
                None => "name".into(),
            };
            let valid = names[problem.task].is_some();
            error(
                scope(problem.task, valid),
                &field,
                problem.kind,
                problem.message,
            );
        }
        if errors.is_empty() {
            Ok(TaskSet {
                path: None,
                tasks,
                groups: Vec::new(),
            })
        } else {
            Err(ConfigErrors::new(errors))
        }
    }

    /// The tasks, in the order of the file.
    /// The shared memory groups (`[[shared_memory]]`) the tasks may join.
    pub fn groups(&self) -> &[crate::group::GroupSpec] {
        &self.groups
    }

    /// The tasks, in file order.
    pub fn tasks(&self) -> &[TaskConfig] {
        &self.tasks
    }

    /// The task named `name`.
    pub fn get(&self, name: &str) -> Option<&TaskConfig> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// How many tasks the set has.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the set has no task (only a set built with
    /// [`TaskSet::new`] can be empty).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The file the set was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// For each task (by position), the positions of the tasks it depends
    /// on. Valid by construction: every name resolves.
    pub(crate) fn dependency_indices(&self) -> Vec<Vec<usize>> {
        let index: HashMap<&str, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        self.tasks
            .iter()
            .map(|t| {
                let mut deps: Vec<usize> = t
                    .depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect();
                deps.sort_unstable();
                deps.dedup();
                deps
            })
            .collect()
    }
}
