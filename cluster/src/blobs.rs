//! Content-addressed blobs in the JetStream object store: modules, packed
//! directories and stdin files, each named by the SHA-256 of its bytes,
//! uploaded once and verified on arrival.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use tokio::io::AsyncReadExt;

use crate::Error;
use crate::files::hash;

pub(crate) struct Blobs {
    store: ObjectStore,
    /// Blobs known to be in the store (uploaded or seen by this process).
    present: Mutex<HashSet<String>>,
    /// One upload per name at a time: the client's `put` of a name that
    /// exists replaces the object and purges the old chunks, which a
    /// concurrent reader of them would wait on forever.
    uploading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A read of a blob that makes no progress for this long is abandoned and
/// tried again (its object may have been replaced under it by another
/// process storing the same bytes).
const READ_STALL: Duration = Duration::from_secs(20);
/// Reads of one blob before giving up.
const READ_ATTEMPTS: usize = 3;

impl Blobs {
    pub(crate) fn new(store: ObjectStore) -> Blobs {
        Blobs {
            store,
            present: Mutex::new(HashSet::new()),
            uploading: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self, name: &str) -> bool {
        self.present
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    fn remember(&self, name: &str) {
        self.present
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
    }

    /// Stores `bytes` unless a blob of the same hash is there; returns the
    /// hash.
    pub(crate) async fn put(&self, bytes: &[u8]) -> Result<String, Error> {
        let name = hash(bytes);
        if self.known(&name) {
            return Ok(name);
        }
        let gate = self
            .uploading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.clone())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        if self.known(&name) {
            return Ok(name);
        }
        let there = matches!(self.store.info(&name).await, Ok(info) if info.size == bytes.len());
        if !there {
            let mut reader = bytes;
            self.store
                .put(name.as_str(), &mut reader)
                .await
                .map_err(|e| Error::JetStream(format!("cannot store blob {name}: {e}")))?;
        }
        self.remember(&name);
        Ok(name)
    }

    /// The blob named `name`, at most `limit` bytes, checked against its
    /// name.
    pub(crate) async fn get(&self, name: &str, limit: u64) -> Result<Vec<u8>, Error> {
        let fail = |what: String| Error::JetStream(format!("cannot fetch blob {name}: {what}"));
        if !is_blob_name(name) {
            return Err(fail("not a SHA-256 name".into()));
        }
        let mut last = String::new();
        for _ in 0..READ_ATTEMPTS {
            match self.read(name, limit).await.map(|bytes| {
                let verdict = verify(name, &bytes, limit);
                (bytes, verdict)
            }) {
                Ok((bytes, Verdict::Good)) => {
                    self.remember(name);
                    return Ok(bytes);
                }
                Ok((_, Verdict::TooLarge)) => {
                    return Err(fail(format!("larger than the {limit} bytes allowed")));
                }
                // Perhaps replaced under the read by another process
                // storing the same name: read again.
                Ok((_, Verdict::Mismatch)) => last = "its bytes do not match its hash".into(),
                Err(err) => last = err,
            }
        }
        Err(fail(last))
    }

    /// One read of a blob, at most `limit + 1` bytes, abandoned when it
    /// stalls.
    async fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, String> {
        let object = tokio::time::timeout(READ_STALL, self.store.get(name))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut object = object.take(limit.saturating_add(1));
        let mut bytes = Vec::new();
        loop {
            bytes.reserve(128 << 10);
            let read = tokio::time::timeout(READ_STALL, object.read_buf(&mut bytes))
                .await
                .map_err(|_| format!("no progress for {} s", READ_STALL.as_secs()))?
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(bytes);
            }
        }
    }

    /// The blob as a file in `cache` (fetched and verified once, then
    /// reused).
    pub(crate) async fn get_cached(
        &self,
        name: &str,
        cache: &Path,
        limit: u64,
    ) -> Result<PathBuf, Error> {
        // The name comes from an untrusted message: checked before it
        // names a path.
        if !is_blob_name(name) {
            return Err(Error::JetStream(format!("`{name}` is not a blob name")));
        }
        let path = cache.join(format!("{name}.wasm"));
        if tokio::fs::metadata(&path).await.is_ok() {
            return Ok(path);
        }
        let bytes = self.get(name, limit).await?;
        let io = |e: std::io::Error| {
            Error::Files(format!(
                "cannot cache a module in `{}`: {e}",
                cache.display()
            ))
        };
        tokio::fs::create_dir_all(cache).await.map_err(io)?;
        // Written aside under a name of its own and renamed, so a reader
        // never sees half a file, and tasks fetching the same module at
        // once do not take each other's file away (the last rename wins,
        // with the same bytes).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial = cache.join(format!("{name}.{}-{n}.part", std::process::id()));
        tokio::fs::write(&partial, &bytes).await.map_err(io)?;
        if let Err(err) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(io(err));
        }
        Ok(path)
    }
}

/// What a read of a blob may be used for.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The bytes hash to the blob's name and fit the limit.
    Good,
    /// More bytes than the reader allows: refused, unhashed.
    TooLarge,
    /// The bytes are not the ones the name promises.
    Mismatch,
}

/// Checks bytes read for blob `name` (a SHA-256, hex) against the name and
/// the reader's `limit` in bytes: a blob is content-addressed, so its
/// bytes are trusted only when they hash to the name they came under.
fn verify(name: &str, bytes: &[u8], limit: u64) -> Verdict {
    if bytes.len() as u64 > limit {
        Verdict::TooLarge
    } else if hash(bytes) == name {
        Verdict::Good
    } else {
        Verdict::Mismatch
    }
}

/// A blob's name: a SHA-256 in lowercase hex.
pub(crate) fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::{Verdict, verify};

    #[test]
    fn bytes_are_used_only_when_they_hash_to_their_name_and_fit() {
        let bytes = b"(module)".to_vec();
        let name = crate::files::hash(&bytes);
        assert_eq!(verify(&name, &bytes, 8), Verdict::Good);
        // One byte changed, the same length: what a corrupted or
        // substituted object looks like.
        let mut other = bytes.clone();
        other[1] ^= 1;
        assert_eq!(verify(&name, &other, 8), Verdict::Mismatch);
        assert_eq!(verify(&name, &bytes, 7), Verdict::TooLarge);
        // Upper-case hex is not the name a blob is stored under.
        assert_eq!(verify(&name.to_uppercase(), &bytes, 8), Verdict::Mismatch);
    }

    #[test]
    fn a_blob_name_is_a_lowercase_sha256_and_nothing_else() {
        let good = "a".repeat(64);
        assert!(super::is_blob_name(&good));
        for bad in [
            "",
            "../../etc/passwd",
            &"A".repeat(64),
            &"a".repeat(63),
            &format!("{}/", "a".repeat(63)),
        ] {
            assert!(!super::is_blob_name(bad), "{bad:?}");
        }
    }
}
