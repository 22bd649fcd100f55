//! The on-disk cache of precompiled artifacts.
//!
//! Compiling a large module takes seconds; loading its precompiled form takes
//! milliseconds. Artifacts are keyed by the SHA-256 of the Wasm bytes and kept
//! under a directory named after the engine's compatibility hash, so an Isola
//! built with another wasmtime or other settings never picks them up.
//!
//! Loading precompiled code is `unsafe` in wasmtime: the bytes are trusted to
//! be what wasmtime wrote. So each artifact carries a trailer with its length
//! and the CRC-32 of its contents, checked (through a memory map, without
//! copying) before wasmtime maps the file; a truncated or altered file is
//! discarded and the module is compiled again. This protects against
//! corruption and accidents, not against an attacker who can write to the
//! cache directory (who could as well replace the `isola` binary), which is
//! why a fast checksum serves as well as a cryptographic hash here: a
//! 100 MiB artifact is checked in milliseconds.
//!
//! Cache failures (unwritable directory, full disk) are logged and otherwise
//! ignored: the cache makes things faster, never makes them fail.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Marks the end of an artifact file written by this version of Isola.
const TRAILER_MAGIC: &[u8; 8] = b"ISOLAc2\0";
/// CRC-32 (4 bytes), body length (8 bytes), magic; little-endian.
const TRAILER_LEN: usize = 4 + 8 + TRAILER_MAGIC.len();

/// SHA-256 of some bytes.
pub(crate) type ContentHash = [u8; 32];

pub(crate) fn content_hash(bytes: &[u8]) -> ContentHash {
    Sha256::digest(bytes).into()
}

/// A verified artifact file, open: wasmtime maps this descriptor, never the
/// path again, so what it loads is what was checked.
pub(crate) struct Artifact {
    pub(crate) file: fs::File,
}

impl Artifact {
    /// A path that opens this very file (the verified one) even if its name
    /// has been replaced since: `/proc/self/fd/N`.
    pub(crate) fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A directory of precompiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// The cache for `engine` under `root`. Nothing is created until the
    /// first artifact is stored.
    pub(crate) fn new(root: &Path, engine: &wasmtime::Engine) -> DiskCache {
        // SHA-256 rather than `std::hash::DefaultHasher`, whose output may
        // change between Rust releases and would silently orphan the cache.
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = hasher.0.finalize();
        let dir = root.join(format!("wasmtime-{}", hex::encode(&digest[..8])));
        DiskCache { dir }
    }

    /// The default cache root: `$ISOLA_CACHE_DIR`, else the user's cache
    /// directory (`~/.cache/isola` on Linux).
    pub(crate) fn default_root() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("ISOLA_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        dirs::cache_dir().map(|d| d.join("isola"))
    }

    /// The directory the cache was created for (shared by every engine
    /// configuration; each has a subdirectory).
    pub(crate) fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Whether an artifact is stored for `key` (not checked for damage):
    /// a regular file is at its path. A FIFO, a device or a directory
    /// there is no artifact (`stat` does not open it, so this cannot
    /// block), and storing replaces it.
    pub(crate) fn contains(&self, key: &ContentHash, kind: &str) -> bool {
        self.path_for(key, kind).is_file()
    }

    fn path_for(&self, key: &ContentHash, kind: &str) -> PathBuf {
        // `i2`: the trailer format; older files are simply never looked at.
        self.dir
            .join(format!("{}.{kind}.i2.cwasm", hex::encode(key)))
    }

    /// The artifact file for `key`, open and verified, if a sound one is
    /// stored. A damaged file is removed so the next store replaces it;
    /// anything but a regular file (a FIFO, a device, a directory) is a
    /// miss, and never blocks (see [`open_regular`]).
    pub(crate) fn open_verified(&self, key: &ContentHash, kind: &str) -> Option<Artifact> {
        let path = self.path_for(key, kind);
        let file = match open_regular(&path) {
            Ok(file) => file,
            Err(Opened::Missing) => return None,
            Err(Opened::NotRegular(file_type)) => {
                tracing::warn!(
                    path = %path.display(),
                    "ignoring a cache artifact that is not a regular file"
                );
                // Unlinking a name opens nothing, so it cannot block; a
                // directory is left alone (the next store then fails and
                // says so). Either way the artifact is compiled again.
                if !file_type.is_dir() {
                    let _ = fs::remove_file(&path);
                }
                return None;
            }
        };
        // SAFETY: the map is read-only and dropped before this returns.
        // Artifacts are only ever replaced by rename, never rewritten in
        // place, so the mapped file does not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) };
        if map.is_ok_and(|map| split_trailer(&map).is_some()) {
            return Some(Artifact { file });
        }
        tracing::warn!(path = %path.display(), "discarding damaged cache artifact");
        let _ = fs::remove_file(&path);
        None
    }

    /// The verified artifact bytes for `key` (tests only; loading maps the
    /// file instead).
    #[cfg(test)]
    fn load(&self, key: &ContentHash, kind: &str) -> Option<Vec<u8>> {
        use std::io::Read;
        let mut bytes = Vec::new();
        open_regular(&self.path_for(key, kind))
            .ok()?
            .read_to_end(&mut bytes)
            .ok()?;
        match split_trailer(&bytes) {
            Some(len) => {
                bytes.truncate(len);
                Some(bytes)
            }
            None => {
                let _ = self.open_verified(key, kind);
                None
            }
        }
    }

    /// Stores an artifact atomically (temp file, then rename), so a reader
    /// never sees a partial file. Failures are logged, not returned.
    pub(crate) fn store(&self, key: &ContentHash, kind: &str, artifact: &[u8]) {
        if let Err(err) = self.try_store(key, kind, artifact) {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write the compile cache");
        }
    }

    fn try_store(&self, key: &ContentHash, kind: &str, artifact: &[u8]) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(artifact)?;
        tmp.write_all(&crc32fast::hash(artifact).to_le_bytes())?;
        tmp.write_all(&(artifact.len() as u64).to_le_bytes())?;
        tmp.write_all(TRAILER_MAGIC)?;
        tmp.as_file().sync_data()?;
        tmp.persist(self.path_for(key, kind)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Why [`open_regular`] gave no file.
enum Opened {
    /// Nothing there, or it cannot be opened: a plain miss.
    Missing,
    /// Something other than a regular file is there, of this type.
    NotRegular(fs::FileType),
}

/// Opens `path` read-only if it is a regular file, without ever blocking.
///
/// `open` on a FIFO waits for a writer (forever, if none comes), and
/// opening a device can wait or act; so the file is opened with
/// `O_NONBLOCK` (no effect on a regular file's reads, and wasmtime maps
/// the file rather than reading it) and `O_NOCTTY`, then checked with
/// `fstat` on the open descriptor, so what is checked is what was opened
/// even if the name is replaced in between.
fn open_regular(path: &Path) -> Result<fs::File, Opened> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|_| Opened::Missing)?;
    let file_type = file.metadata().map_err(|_| Opened::Missing)?.file_type();
    if file_type.is_file() {
        Ok(file)
    } else {
        Err(Opened::NotRegular(file_type))
    }
}

/// Feeds what a `Hash` impl writes into SHA-256, so the digest depends only
/// on the hashed bytes, not on the standard library's hasher of the day.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// Checks the trailer and returns the length of the artifact before it.
fn split_trailer(bytes: &[u8]) -> Option<usize> {
    let body_len = bytes.len().checked_sub(TRAILER_LEN)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (crc, rest) = trailer.split_at(4);
    let (len, magic) = rest.split_at(8);
    let crc = u32::from_le_bytes(crc.try_into().ok()?);
    let len = u64::from_le_bytes(len.try_into().ok()?);
    (magic == TRAILER_MAGIC && len == body_len as u64 && crc == crc32fast::hash(body))
        .then_some(body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, DiskCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = wasmtime::Engine::default();
        let cache = DiskCache::new(dir.path(), &engine);
        (dir, cache)
    }

    #[test]
    fn the_directory_is_named_by_a_sha256_of_the_compatibility_hash() {
        /// Records the bytes a `Hash` impl writes.
        #[derive(Default)]
        struct Recorder(Vec<u8>);
        impl Hasher for Recorder {
            fn write(&mut self, bytes: &[u8]) {
                self.0.extend_from_slice(bytes);
            }
            fn finish(&self) -> u64 {
                0
            }
        }
        let engine = wasmtime::Engine::default();
        let mut recorder = Recorder::default();
        engine.precompile_compatibility_hash().hash(&mut recorder);
        let expected = format!(
            "wasmtime-{}",
            hex::encode(&Sha256::digest(&recorder.0)[..8])
        );
        let cache = DiskCache::new(Path::new("/cache"), &engine);
        assert_eq!(cache.dir, Path::new("/cache").join(expected));
        assert_eq!(cache.root(), Path::new("/cache"));
    }

    #[test]
    fn an_artifact_is_read_through_the_verified_descriptor() {
        let (_dir, cache) = cache();
        let key = content_hash(b"module");
        cache.store(&key, "module", b"the verified artifact");
        let artifact = cache.open_verified(&key, "module").expect("sound");
        // Someone replaces the file after it was checked.
        let path = cache.path_for(&key, "module");
        let intruder = path.with_extension("intruder");
        fs::write(&intruder, b"something else entirely").expect("write");
        fs::rename(&intruder, &path).expect("rename");
        let seen = fs::read(artifact.fd_path()).expect("read through the descriptor");
        assert!(
            seen.starts_with(b"the verified artifact"),
            "the loader must see what was verified"
        );
    }

    #[test]
    fn round_trip() {
        let (_dir, cache) = cache();
        let key = content_hash(b"module");
        assert_eq!(cache.load(&key, "module"), None);
        cache.store(&key, "module", b"artifact bytes");
        assert_eq!(
            cache.load(&key, "module").as_deref(),
            Some(&b"artifact bytes"[..])
        );
        assert_eq!(cache.load(&key, "component"), None, "kinds are kept apart");
    }

    #[test]
    fn damaged_artifacts_are_rejected_and_removed() {
        let (_dir, cache) = cache();
        let key = content_hash(b"module");
        cache.store(&key, "module", b"artifact bytes");
        let path = cache.path_for(&key, "module");
        let good = fs::read(&path).expect("read artifact");

        // One flipped bit in the body.
        let mut tampered = good.clone();
        tampered[3] ^= 1;
        fs::write(&path, &tampered).expect("write");
        assert_eq!(cache.load(&key, "module"), None);
        assert!(!path.exists(), "a damaged artifact is removed");

        // Truncated, in the body and in the trailer.
        for len in [5, good.len() - 1, 0] {
            fs::write(&path, &good[..len]).expect("write");
            assert_eq!(cache.load(&key, "module"), None, "truncated to {len}");
        }
    }

    /// A FIFO where an artifact should be: opening it to read would wait
    /// for a writer forever (issue 18, item 7). It is a miss, at once, and
    /// is replaced by the next store.
    #[test]
    fn a_fifo_at_an_artifact_path_is_a_miss_not_a_hang() {
        let (_dir, cache) = cache();
        let key = content_hash(b"module");
        let path = cache.path_for(&key, "module");
        fs::create_dir_all(&cache.dir).expect("cache dir");
        mkfifo(&path);

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let probe = cache.clone();
        // On its own thread, so a regression fails the test instead of
        // hanging it.
        std::thread::spawn(move || {
            let found = probe.open_verified(&key, "module").is_some();
            let _ = done_tx.send((found, probe.contains(&key, "module")));
        });
        let (found, contained) = done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("open_verified returned promptly");
        assert!(!found, "a FIFO is no artifact");
        assert!(!contained, "nor does `contains` count it");

        // Replaced by a real artifact on the next store.
        cache.store(&key, "module", b"artifact bytes");
        assert_eq!(
            cache.load(&key, "module").as_deref(),
            Some(&b"artifact bytes"[..])
        );
    }

    /// Another non-regular file (a directory) is a miss too, and is left
    /// where it is.
    #[test]
    fn a_directory_at_an_artifact_path_is_a_miss() {
        let (_dir, cache) = cache();
        let key = content_hash(b"module");
        let path = cache.path_for(&key, "module");
        fs::create_dir_all(&path).expect("a directory where the artifact goes");
        assert!(cache.open_verified(&key, "module").is_none());
        assert!(!cache.contains(&key, "module"));
        assert!(path.is_dir(), "a directory is not removed");
    }

    /// Makes a FIFO at `path`.
    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: `mkfifo` reads the NUL-terminated string, which lives
        // until the call returns.
        let ret = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(ret, 0, "mkfifo: {}", std::io::Error::last_os_error());
    }

    #[test]
    fn unwritable_directory_is_not_an_error() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        // A regular file where the cache directory should be.
        let engine = wasmtime::Engine::default();
        let cache = DiskCache::new(file.path(), &engine);
        let key = content_hash(b"m");
        cache.store(&key, "module", b"x");
        assert_eq!(cache.load(&key, "module"), None);
    }
}
