//! `isola:kv`: a key-value store Isola keeps on a SQLite database, shared
//! by every task granted the same file ([`crate::TaskSpec::kv`], `kv` in
//! `tasks.toml`, `isola run --kv FILE`) at either isolation level.
//!
//! The host owns one connection per database file (WAL mode, every
//! operation in its own `IMMEDIATE` transaction, one at a time), so tasks
//! of any isolation level, and a crashing worker among them, see one
//! serial history: a process task's calls cross the pipe to the parent
//! like any host function's. An operation the host began is finished even
//! if its task is cancelled or its worker dies meanwhile (it runs on a
//! blocking thread that is not interrupted): an increment either happened
//! whole or not at all, and one that happened is counted
//! ([`KvStore::committed`]) whether or not its reply reached the guest.
//!
//! Guests call it through the host function call with these names and
//! byte encodings (little-endian integers; the guest SDK's `kv` module
//! wraps them):
//!
//! | function | arguments | result |
//! |---|---|---|
//! | `kv.get` | the key | `1` and the value, or `0` if absent |
//! | `kv.set` | key length (u32), key, value | empty |
//! | `kv.delete` | the key | `1` if it was there, else `0` |
//! | `kv.increment` | amount (i64), key | the new value (i64); an absent key counts as 0 |
//! | `kv.cas` | key length (u32), key, expected (a byte `0` absent, or `1`, length (u32), bytes), new (likewise) | `1` if the value was the expected one and is now the new one (absent: deleted), else `0` |
//! | `kv.list` | a key prefix | each key with the prefix, in order, as length (u32) and bytes |
//!
//! Values `kv.increment` works on are decimal integers (`"42"`); another
//! value there is an error value for the guest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior};

/// A function's result for the guest, or its error value (as
/// `host_fn::HostResult`, which this module does not import: the host
/// function layer uses the store, not the reverse).
type HostResult = Result<Vec<u8>, String>;

/// Prefix of the host function names `isola:kv` answers.
pub(crate) const PREFIX: &str = "kv.";

/// A key-value store on one SQLite database file.
pub struct KvStore {
    path: PathBuf,
    connection: Mutex<Connection>,
    committed: AtomicU64,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").field("path", &self.path).finish()
    }
}

/// Why a store could not be opened or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// SQLite refused: the file is not a database, is locked, the disk is
    /// full...
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// `increment` of a value that is not a decimal integer, or past
    /// `i64`'s range.
    #[error("the value of this key is not an integer that can be incremented")]
    NotAnInteger,
    /// `PRAGMA integrity_check` found faults; SQLite's report.
    #[error("the database is damaged: {0}")]
    Corrupt(String),
}

impl KvStore {
    /// Opens (creating it if needed) the database at `path`, in WAL mode,
    /// with the store's table.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] if the file cannot be opened or is not a SQLite
    /// database.
    pub fn open(path: impl AsRef<Path>) -> Result<KvStore, KvError> {
        let path = path.as_ref().to_owned();
        let sqlite = |source| KvError::Sqlite {
            path: path.clone(),
            source,
        };
        let connection = Connection::open(&path).map_err(sqlite)?;
        // First: another program holding the file locked is waited for,
        // even while the journal mode changes.
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        // WAL: readers (another program, a backup) do not block the writer.
        // NORMAL: in WAL mode a commit survives any crash of a process
        // (Isola's included) and only the last commits may be lost to a
        // power cut; FULL would sync the disk at every operation.
        let mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %path.display(),
                "the key-value store's database stays in journal mode `{mode}`, not WAL"
            );
        }
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        connection
            .execute(
                "CREATE TABLE IF NOT EXISTS isola_kv (key BLOB PRIMARY KEY, value BLOB NOT NULL)",
                (),
            )
            .map_err(sqlite)?;
        Ok(KvStore {
            path,
            connection: Mutex::new(connection),
            committed: AtomicU64::new(0),
        })
    }

    /// SQLite's own check of the whole database (`PRAGMA
    /// integrity_check`): `Ok` if it says `ok`, else what it found.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`], or [`KvError::Corrupt`] with SQLite's report.
    pub fn check_integrity(&self) -> Result<(), KvError> {
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let report: String = connection
            .query_row("PRAGMA integrity_check", (), |row| row.get(0))
            .map_err(|source| KvError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        if report == "ok" {
            Ok(())
        } else {
            Err(KvError::Corrupt(report))
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many writes (`set`, `delete`, `increment`, a successful `cas`)
    /// this store committed since it was opened.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Runs `op` in one transaction, alone on the connection; commits if
    /// it returns `Ok`, counting it a write if it says so. An operation
    /// that may write takes the write lock at once (`IMMEDIATE`, so two
    /// processes never deadlock upgrading); a read (`DEFERRED`) takes only
    /// a read snapshot, which in WAL mode neither waits for writers nor
    /// holds them up.
    fn transaction<T>(
        &self,
        may_write: bool,
        op: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, bool), KvError>,
    ) -> Result<T, KvError> {
        let sqlite = self.sqlite();
        let behavior = if may_write {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let tx = connection
            .transaction_with_behavior(behavior)
            .map_err(&sqlite)?;
        let (value, wrote) = op(&tx)?;
        tx.commit().map_err(&sqlite)?;
        if wrote {
            self.committed.fetch_add(1, Ordering::SeqCst);
        }
        Ok(value)
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> KvError + '_ {
        |source| KvError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The value of `key`, if it has one.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`].
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let sqlite = self.sqlite();
        self.transaction(false, |tx| {
            let value = value_of(tx, key).map_err(&sqlite)?;
            Ok((value, false))
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`].
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let sqlite = self.sqlite();
        self.transaction(true, |tx| {
            upsert(tx, key, value).map_err(&sqlite)?;
            Ok(((), true))
        })
    }

    /// Deletes `key`; whether it was there.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`].
    pub fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        let sqlite = self.sqlite();
        self.transaction(true, |tx| {
            let n = remove(tx, key).map_err(&sqlite)?;
            Ok((n > 0, n > 0))
        })
    }

    /// Adds `by` to the decimal integer at `key` (0 if absent); the new
    /// value.
    ///
    /// # Errors
    ///
    /// [`KvError::NotAnInteger`] for a value that is not one (or would
    /// overflow); [`KvError::Sqlite`].
    pub fn increment(&self, key: &[u8], by: i64) -> Result<i64, KvError> {
        let sqlite = self.sqlite();
        self.transaction(true, |tx| {
            let old: Option<Vec<u8>> = value_of(tx, key).map_err(&sqlite)?;
            let old = match old {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or(KvError::NotAnInteger)?,
            };
            let new = old.checked_add(by).ok_or(KvError::NotAnInteger)?;
            upsert(tx, key, new.to_string().as_bytes()).map_err(&sqlite)?;
            Ok((new, true))
        })
    }

    /// Sets `key` to `new` (absent: deletes it) if its value is `expected`
    /// (absent: it has none); whether it did.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`].
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        let sqlite = self.sqlite();
        self.transaction(true, |tx| {
            let current: Option<Vec<u8>> = value_of(tx, key).map_err(&sqlite)?;
            if current.as_deref() != expected {
                return Ok((false, false));
            }
            match new {
                Some(value) => upsert(tx, key, value),
                None => remove(tx, key),
            }
            .map_err(&sqlite)?;
            Ok((true, true))
        })
    }

    /// The keys that start with `prefix`, in byte order.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`].
    pub fn list(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, KvError> {
        let sqlite = self.sqlite();
        self.transaction(false, |tx| {
            let mut statement = tx
                .prepare("SELECT key FROM isola_kv WHERE substr(key, 1, ?2) = ?1 ORDER BY key")
                .map_err(&sqlite)?;
            let len = i64::try_from(prefix.len()).unwrap_or(i64::MAX);
            let keys = statement
                .query_map((prefix, len), |row| row.get::<_, Vec<u8>>(0))
                .map_err(&sqlite)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&sqlite)?;
            Ok((keys, false))
        })
    }

    /// Answers the host function `function` (one of the module table's)
    /// with `args` as encoded there, on a blocking thread that finishes the
    /// operation even if this future is dropped.
    pub(crate) async fn call(self: &Arc<Self>, function: &str, args: Vec<u8>) -> HostResult {
        let store = Arc::clone(self);
        let function = function.to_owned();
        match tokio::task::spawn_blocking(move || store.answer(&function, &args)).await {
            Ok(result) => result,
            Err(err) => Err(format!("the key-value store failed: {err}")),
        }
    }

    /// [`KvStore::call`]'s work.
    fn answer(&self, function: &str, args: &[u8]) -> HostResult {
        let flag = |yes: bool| vec![u8::from(yes)];
        let failed = |err: KvError| err.to_string();
        match function.strip_prefix(PREFIX) {
            Some("get") => Ok(match self.get(args).map_err(failed)? {
                Some(value) => [&[1u8][..], &value].concat(),
                None => vec![0],
            }),
            Some("set") => {
                let (key, value) = split_sized(args).ok_or_else(malformed)?;
                self.set(key, value).map_err(failed)?;
                Ok(Vec::new())
            }
            Some("delete") => Ok(flag(self.delete(args).map_err(failed)?)),
            Some("increment") => {
                let (by, key) = args.split_first_chunk::<8>().ok_or_else(malformed)?;
                let new = self
                    .increment(key, i64::from_le_bytes(*by))
                    .map_err(failed)?;
                Ok(new.to_le_bytes().to_vec())
            }
            Some("cas") => {
                let (key, rest) = split_sized(args).ok_or_else(malformed)?;
                let (expected, rest) = optional(rest).ok_or_else(malformed)?;
                let (new, rest) = optional(rest).ok_or_else(malformed)?;
                if !rest.is_empty() {
                    return Err(malformed());
                }
                Ok(flag(
                    self.compare_and_swap(key, expected, new).map_err(failed)?,
                ))
            }
            Some("list") => {
                let mut out = Vec::new();
                for key in self.list(args).map_err(failed)? {
                    let len = u32::try_from(key.len()).map_err(|_| malformed())?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&key);
                }
                Ok(out)
            }
            _ => Err(format!("`isola:kv` has no function `{function}`")),
        }
    }
}

/// The value of `key` in the transaction, if it has one.
fn value_of(tx: &rusqlite::Transaction<'_>, key: &[u8]) -> rusqlite::Result<Option<Vec<u8>>> {
    tx.query_row("SELECT value FROM isola_kv WHERE key = ?1", [key], |row| {
        row.get(0)
    })
    .optional()
}

/// Sets `key` to `value` in the transaction; the rows changed (1).
fn upsert(tx: &rusqlite::Transaction<'_>, key: &[u8], value: &[u8]) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO isola_kv (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
}

fn remove(tx: &rusqlite::Transaction<'_>, key: &[u8]) -> rusqlite::Result<usize> {
    tx.execute("DELETE FROM isola_kv WHERE key = ?1", [key])
}

/// The error value of arguments that do not follow the encoding.
fn malformed() -> String {
    "malformed `isola:kv` arguments (see the encoding in Isola's kv module)".to_owned()
}

/// A `u32` length, that many bytes, and the rest.
fn split_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A byte `0` (absent) or `1` followed by a [`split_sized`] value, and the
/// rest.
fn optional(bytes: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    match bytes.split_first()? {
        (0, rest) => Some((None, rest)),
        (1, rest) => split_sized(rest).map(|(value, rest)| (Some(value), rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn every_operation_through_its_encoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KvStore::open(dir.path().join("kv.db")).expect("open");
        let answer = |f: &str, args: Vec<u8>| store.answer(f, &args);
        assert_eq!(answer("kv.get", b"a".to_vec()), Ok(vec![0]));
        assert_eq!(
            answer("kv.set", [sized(b"a"), b"one".to_vec()].concat()),
            Ok(vec![])
        );
        assert_eq!(answer("kv.get", b"a".to_vec()), Ok(b"\x01one".to_vec()));
        let inc = |by: i64, key: &[u8]| [by.to_le_bytes().to_vec(), key.to_vec()].concat();
        assert_eq!(
            answer("kv.increment", inc(5, b"n")),
            Ok(5i64.to_le_bytes().to_vec())
        );
        assert_eq!(
            answer("kv.increment", inc(-7, b"n")),
            Ok((-2i64).to_le_bytes().to_vec())
        );
        assert!(
            answer("kv.increment", inc(1, b"a")).is_err(),
            "`one` is no integer"
        );
        // cas: expected absent fails on a present key; the right value swaps.
        let cas = |key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>| {
            let opt = |v: Option<&[u8]>| match v {
                None => vec![0],
                Some(v) => [vec![1], sized(v)].concat(),
            };
            [sized(key), opt(expected), opt(new)].concat()
        };
        assert_eq!(answer("kv.cas", cas(b"a", None, Some(b"x"))), Ok(vec![0]));
        assert_eq!(
            answer("kv.cas", cas(b"a", Some(b"one"), Some(b"two"))),
            Ok(vec![1])
        );
        assert_eq!(answer("kv.get", b"a".to_vec()), Ok(b"\x01two".to_vec()));
        assert_eq!(answer("kv.cas", cas(b"a", Some(b"two"), None)), Ok(vec![1]));
        assert_eq!(answer("kv.get", b"a".to_vec()), Ok(vec![0]));
        for key in [&b"p/2"[..], b"p/1", b"q"] {
            store.set(key, b"v").expect("set");
        }
        assert_eq!(
            answer("kv.list", b"p/".to_vec()),
            Ok([sized(b"p/1"), sized(b"p/2")].concat())
        );
        assert_eq!(answer("kv.delete", b"q".to_vec()), Ok(vec![1]));
        assert_eq!(answer("kv.delete", b"q".to_vec()), Ok(vec![0]));
        // Malformed or unknown: error values, never a panic.
        assert!(answer("kv.set", vec![9, 0, 0, 0, b'a']).is_err());
        assert!(answer("kv.cas", [sized(b"a"), vec![7]].concat()).is_err());
        assert!(answer("kv.increment", vec![1, 2]).is_err());
        assert!(answer("kv.nope", vec![]).is_err());
        // set a, cas x2, delete a (via cas), 3 sets, delete q, 2 increments.
        assert_eq!(store.committed(), 1 + 2 + 3 + 1 + 2);
        drop(store);
        // Reopened: the data is there, and whole.
        let store = KvStore::open(dir.path().join("kv.db")).expect("reopen");
        assert_eq!(store.get(b"n").expect("get"), Some(b"-2".to_vec()));
        store.check_integrity().expect("integrity");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not.db");
        std::fs::write(&path, vec![b'x'; 4096]).expect("write");
        let err = KvStore::open(&path).expect_err("not a database");
        assert!(err.to_string().contains("not.db"), "{err}");
    }
}
