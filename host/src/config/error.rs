//! Config errors: typed, positioned, and reported all at once.

use std::fmt;
use std::path::PathBuf;

/// A line and column in the config file, both counted from 1. The column
/// counts characters, not bytes, so it matches what an editor shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Which part of the config an error is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The document itself (top-level keys, syntax, reading the file).
    File,
    /// The `[defaults]` table.
    Defaults,
    /// One `[[shared_memory]]` group.
    Group {
        /// Position of the entry among the `[[shared_memory]]` tables, from 1.
        index: usize,
        /// The group's name, when it has a valid one.
        name: Option<String>,
    },
    /// One `[[task]]` entry.
    Task {
        /// Position of the entry among the `[[task]]` tables, from 1.
        index: usize,
        /// The task's name, when it has a valid one.
        name: Option<String>,
    },
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::File => Ok(()),
            Scope::Defaults => f.write_str("[defaults]"),
            Scope::Task {
                name: Some(name), ..
            } => write!(f, "task `{name}`"),
            Scope::Task { index, name: None } => write!(f, "task #{index}"),
            Scope::Group {
                name: Some(name), ..
            } => write!(f, "shared_memory `{name}`"),
            Scope::Group { index, name: None } => write!(f, "shared_memory #{index}"),
        }
    }
}

/// The kinds of config error, for callers that react to some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key the config does not know (often a typo).
    UnknownField,
    /// A value of the wrong TOML type (a number where a string belongs).
    WrongType,
    /// A value of the right type that cannot work (a bad size, an empty name).
    InvalidValue,
    /// A required field is absent.
    MissingField,
    /// A file or directory the config names does not exist.
    MissingFile,
    /// Two tasks have the same name.
    DuplicateName,
    /// `depends_on` names a task that does not exist.
    UnknownDependency,
    /// The dependencies form a cycle.
    Cycle,
    /// Two fields that cannot be used together.
    Conflict,
}

/// One problem in a task set's config.
///
/// Displays as `file:line:col: task `name`: field `x`: message`; the parts
/// that do not apply are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, when the task set came from one.
    pub file: Option<PathBuf>,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// The `[defaults]` table, a `[[task]]`, or the document.
    pub scope: Scope,
    /// The field, as a path: `limits.timeout`, `dirs[1].host`, `env.HOME`.
    pub field: Option<String>,
    /// What kind of problem it is.
    pub kind: ConfigErrorKind,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
            if let Some(Location { line, column }) = self.location {
                write!(f, "{line}:{column}:")?;
            }
            f.write_str(" ")?;
        }
        if self.scope != Scope::File {
            write!(f, "{}: ", self.scope)?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, in file order. Never empty.
///
/// Displays as one [`ConfigError`] per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> ConfigErrors {
        debug_assert!(!errors.is_empty(), "ConfigErrors is never empty");
        ConfigErrors(errors)
    }

    /// The errors, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false; here because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the errors in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
