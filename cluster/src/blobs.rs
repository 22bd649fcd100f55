//! Content-addressed blobs in the JetStream object store: modules, packed
//! directories and stdin files, each named by the SHA-256 of its bytes,
//! uploaded once and verified on arrival.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_nats::jetstream::object_store::ObjectStore;
use tokio::io::AsyncReadExt;

use crate::Error;
use crate::files::hash;

pub(crate) struct Blobs {
    store: ObjectStore,
    /// Blobs known to be in the store (uploaded or seen by this process).
    present: Mutex<HashSet<String>>,
}

impl Blobs {
    pub(crate) fn new(store: ObjectStore) -> Blobs {
        Blobs {
            store,
            present: Mutex::new(HashSet::new()),
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
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("not a SHA-256 name".into()));
        }
        let object = self
            .store
            .get(name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut bytes = Vec::new();
        object
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(fail(format!("larger than the {limit} bytes allowed")));
        }
        if hash(&bytes) != name {
            return Err(fail("its bytes do not match its hash".into()));
        }
        self.remember(name);
        Ok(bytes)
    }

    /// The blob as a file in `cache` (fetched and verified once, then
    /// reused).
    pub(crate) async fn get_cached(
        &self,
        name: &str,
        cache: &Path,
        limit: u64,
    ) -> Result<PathBuf, Error> {
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
