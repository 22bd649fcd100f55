//! Directories as archives: packed by the submitter (a grant) and by a
//! worker (what a task changed), unpacked on the other side.
//!
//! An archive is a tar of regular files and directories only, with paths
//! relative to the directory, sorted, and no owners or times, so the same
//! tree always packs to the same bytes (and so the same blob). Unpacking
//! refuses anything else: links, devices, absolute paths, `..`, and a path
//! whose existing parent is a link, so an archive cannot write outside its
//! directory on either side.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// Most entries in one archive.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// What a walk found: files by relative path (with `/`), and directories.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub(crate) files: BTreeMap<String, FileMeta>,
    pub(crate) dirs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub(crate) len: u64,
    pub(crate) mode: u32,
    /// Modification time in nanoseconds, for a cheap "did it change".
    pub(crate) mtime_ns: i128,
}

/// Walks `dir`, refusing links and special files.
pub(crate) fn walk(dir: &Path) -> Result<Tree, Error> {
    let mut tree = Tree::default();
    walk_into(dir, "", &mut tree, true)?;
    Ok(tree)
}

/// As [`walk`], but links and special files are skipped, not refused
/// (what a task left in a writable directory: only its files travel).
pub(crate) fn walk_lenient(dir: &Path) -> Result<Tree, Error> {
    let mut tree = Tree::default();
    walk_into(dir, "", &mut tree, false)?;
    Ok(tree)
}

fn walk_into(root: &Path, prefix: &str, tree: &mut Tree, strict: bool) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let here = root.join(prefix);
    let read = std::fs::read_dir(&here)
        .map_err(|e| Error::Files(format!("cannot read `{}`: {e}", here.display())))?;
    let mut names = Vec::new();
    for entry in read {
        let entry =
            entry.map_err(|e| Error::Files(format!("cannot read `{}`: {e}", here.display())))?;
        let name = entry.file_name().into_string().map_err(|name| {
            Error::Files(format!(
                "`{}` has a name that is not UTF-8; only UTF-8 names are sent to workers",
                here.join(name).display()
            ))
        })?;
        names.push(name);
    }
    names.sort();
    for name in names {
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::Files(format!("cannot read `{}`: {e}", path.display())))?;
        if tree.files.len() + tree.dirs.len() >= MAX_ENTRIES {
            return Err(Error::Files(format!(
                "`{}` holds more than {MAX_ENTRIES} entries, the most sent to a worker",
                root.display()
            )));
        }
        if meta.is_dir() {
            tree.dirs.push(rel.clone());
            walk_into(root, &rel, tree, strict)?;
        } else if meta.is_file() {
            let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            tree.files.insert(
                rel,
                FileMeta {
                    len: meta.len(),
                    mode: meta.mode() & 0o777,
                    mtime_ns,
                },
            );
        } else if strict {
            return Err(Error::Files(format!(
                "`{}` is a link or special file; only regular files and directories are sent \
                 to workers",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Packs the directories and the listed files of `dir`, at most `limit`
/// bytes of file contents.
pub(crate) fn pack(dir: &Path, tree: &Tree, limit: u64) -> Result<Vec<u8>, Error> {
    let total: u64 = tree.files.values().map(|f| f.len).sum();
    if total > limit {
        return Err(Error::Files(format!(
            "`{}` holds {total} bytes of files, more than the {limit} sent in one archive",
            dir.display()
        )));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let io = |e: std::io::Error| Error::Files(format!("cannot pack `{}`: {e}", dir.display()));
    for rel in &tree.dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        builder
            .append_data(&mut header, rel, std::io::empty())
            .map_err(io)?;
    }
    for (rel, meta) in &tree.files {
        let path = dir.join(rel);
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::Files(format!("cannot read `{}`: {e}", path.display())))?;
        let mut header = tree_header(meta);
        // The length read is the length packed, even if the file grows.
        builder
            .append_data(&mut header, rel, file.take(meta.len))
            .map_err(io)?;
    }
    builder.into_inner().map_err(io)
}

fn tree_header(meta: &FileMeta) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(if meta.mode & 0o111 != 0 { 0o755 } else { 0o644 });
    header.set_size(meta.len);
    header.set_mtime(0);
    header
}

/// Unpacks `archive` into `dir` (which exists), at most `limit` bytes of
/// file contents. Returns the files written, by relative path.
pub(crate) fn unpack(archive: &[u8], dir: &Path, limit: u64) -> Result<Vec<String>, Error> {
    let bad = |what: String| {
        Error::Files(format!(
            "refused an archive for `{}`: {what}",
            dir.display()
        ))
    };
    let mut written = Vec::new();
    let mut total = 0u64;
    let mut tar = tar::Archive::new(archive);
    let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let rel = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel_text = rel
            .to_str()
            .ok_or_else(|| bad(format!("`{}` is not UTF-8", rel.display())))?
            .trim_end_matches('/')
            .to_owned();
        let target =
            inside(dir, &rel).ok_or_else(|| bad(format!("`{rel_text}` leaves the directory")))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target)
                    .map_err(|e| bad(format!("cannot create `{rel_text}`: {e}")))?;
            }
            tar::EntryType::Regular => {
                total = total.saturating_add(entry.size());
                if total > limit {
                    return Err(bad(format!("more than {limit} bytes of files")));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| bad(format!("cannot create `{rel_text}`: {e}")))?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                // A file in the way that is read-only is replaced, not
                // written through.
                let _ = std::fs::remove_file(&target);
                let mut out = std::fs::File::create(&target)
                    .map_err(|e| bad(format!("cannot write `{rel_text}`: {e}")))?;
                std::io::copy(&mut entry, &mut out)
                    .map_err(|e| bad(format!("cannot write `{rel_text}`: {e}")))?;
                use std::os::unix::fs::PermissionsExt;
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| bad(format!("cannot write `{rel_text}`: {e}")))?;
                written.push(rel_text);
            }
            other => {
                return Err(bad(format!(
                    "`{rel_text}` is a {other:?} entry; only files and directories are accepted"
                )));
            }
        }
    }
    Ok(written)
}

/// `dir/rel` if `rel` is a plain relative path whose existing ancestors
/// under `dir` are directories, not links.
pub(crate) fn inside(dir: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = dir.to_path_buf();
    let mut parts = 0;
    for component in rel.components() {
        match component {
            Component::Normal(part) => {
                // Each ancestor that exists must be a real directory.
                if parts > 0
                    && let Ok(meta) = std::fs::symlink_metadata(&path)
                    && !meta.is_dir()
                {
                    return None;
                }
                path.push(part);
                parts += 1;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    if parts == 0 {
        return None;
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path)
        && meta.file_type().is_symlink()
    {
        return None;
    }
    Some(path)
}

/// What a writable directory held: each regular file with the SHA-256 of
/// its contents, and each directory. A worker takes one before a task and
/// one after, and sends back the difference ([`diff`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) files: BTreeMap<String, String>,
    pub(crate) dirs: BTreeSet<String>,
}

impl Snapshot {
    /// One walk of `dir` (links and special files a task left are
    /// skipped: they do not travel), returning the walk as well, for
    /// packing what changed.
    pub(crate) fn take(dir: &Path) -> Result<(Tree, Snapshot), Error> {
        let tree = walk_lenient(dir)?;
        let mut files = BTreeMap::new();
        for rel in tree.files.keys() {
            files.insert(rel.clone(), hash_file(&dir.join(rel))?);
        }
        let dirs = tree.dirs.iter().cloned().collect();
        Ok((tree, Snapshot { files, dirs }))
    }
}

/// What changed from `before` to `after` (whose walk is `tree`): the
/// created and changed files with the created directories, to pack, and
/// the deleted paths, files and directories alike. A deleted directory is
/// named once, not with everything it held.
pub(crate) fn diff(before: &Snapshot, after: &Snapshot, mut tree: Tree) -> (Tree, Vec<String>) {
    tree.files
        .retain(|rel, _| before.files.get(rel) != after.files.get(rel));
    tree.dirs.retain(|rel| !before.dirs.contains(rel));
    let gone_dirs: Vec<&String> = before
        .dirs
        .iter()
        .filter(|rel| !after.dirs.contains(*rel))
        .collect();
    let under_gone = |rel: &str| {
        gone_dirs.iter().any(|dir| {
            rel.len() > dir.len()
                && rel.starts_with(dir.as_str())
                && rel.as_bytes()[dir.len()] == b'/'
        })
    };
    let mut deleted: Vec<String> = gone_dirs
        .iter()
        .map(|rel| (*rel).clone())
        .chain(
            before
                .files
                .keys()
                .filter(|rel| !after.files.contains_key(*rel))
                .cloned(),
        )
        .filter(|rel| !under_gone(rel))
        .collect();
    deleted.sort();
    (tree, deleted)
}

/// SHA-256 of a file's contents, hex.
pub(crate) fn hash_file(path: &Path) -> Result<String, Error> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::Files(format!("cannot read `{}`: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| Error::Files(format!("cannot read `{}`: {e}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of bytes, hex.
pub(crate) fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_the_same_tree_to_the_same_bytes_and_back() {
        let a = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(a.path().join("sub/empty")).expect("mkdir");
        std::fs::write(a.path().join("sub/x.txt"), b"hello").expect("write");
        std::fs::write(a.path().join("top"), b"1").expect("write");
        let one = pack(a.path(), &walk(a.path()).expect("walk"), 1 << 20).expect("pack");
        let two = pack(a.path(), &walk(a.path()).expect("walk"), 1 << 20).expect("pack");
        assert_eq!(hash(&one), hash(&two));
        let b = tempfile::tempdir().expect("tempdir");
        let written = unpack(&one, b.path(), 1 << 20).expect("unpack");
        assert_eq!(written, vec!["sub/x.txt".to_owned(), "top".to_owned()]);
        assert_eq!(
            std::fs::read(b.path().join("sub/x.txt")).expect("read"),
            b"hello"
        );
        assert!(b.path().join("sub/empty").is_dir());
        // Over the limit: refused, naming the directory.
        let err = pack(a.path(), &walk(a.path()).expect("walk"), 3).expect_err("too big");
        assert!(err.to_string().contains("more than the 3"), "{err}");
    }

    #[test]
    fn refuses_links_and_paths_that_leave_the_directory() {
        let a = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", a.path().join("link")).expect("symlink");
        let err = walk(a.path()).expect_err("a link");
        assert!(err.to_string().contains("link or special file"), "{err}");

        // An archive naming `../x`, or writing through a link, is refused.
        let mut raw = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        header.set_mode(0o644);
        // `set_path` refuses `..`, as it should; write the name by hand to
        // make the hostile archive.
        header.as_old_mut().name[..4].copy_from_slice(b"../x");
        header.set_cksum();
        raw.append(&header, &b"x"[..]).expect("append");
        let hostile = raw.into_inner().expect("tar");
        let b = tempfile::tempdir().expect("tempdir");
        let err = unpack(&hostile, b.path(), 1 << 20).expect_err("leaves");
        assert!(err.to_string().contains("leaves the directory"), "{err}");

        let mut raw = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        header.set_mode(0o644);
        raw.append_data(&mut header, "link/passwd", &b"x"[..])
            .expect("append");
        let through_link = raw.into_inner().expect("tar");
        let err = unpack(&through_link, a.path(), 1 << 20).expect_err("through a link");
        assert!(err.to_string().contains("leaves the directory"), "{err}");
    }

    #[test]
    fn a_diff_names_changed_and_new_files_new_directories_and_what_was_deleted() {
        let d = tempfile::tempdir().expect("tempdir");
        let at = |rel: &str| d.path().join(rel);
        for dir in ["keep", "gone/deep", "emptied"] {
            std::fs::create_dir_all(at(dir)).expect("mkdir");
        }
        for (rel, text) in [
            ("same", "1"),
            ("changed", "1"),
            ("removed", "1"),
            ("keep/x", "1"),
            ("gone/y", "1"),
            ("gone/deep/z", "1"),
            ("emptied/w", "1"),
        ] {
            std::fs::write(at(rel), text).expect("write");
        }
        let (_, before) = Snapshot::take(d.path()).expect("before");

        std::fs::write(at("changed"), "2").expect("write");
        std::fs::write(at("new"), "1").expect("write");
        std::fs::remove_file(at("removed")).expect("rm");
        std::fs::remove_dir_all(at("gone")).expect("rm -r");
        std::fs::remove_file(at("emptied/w")).expect("rm");
        std::fs::create_dir_all(at("made/inner")).expect("mkdir");
        std::fs::write(at("keep/x2"), "1").expect("write");
        let (tree, after) = Snapshot::take(d.path()).expect("after");

        let (changed, deleted) = diff(&before, &after, tree);
        assert_eq!(
            changed.files.keys().collect::<Vec<_>>(),
            ["changed", "keep/x2", "new"]
        );
        assert_eq!(changed.dirs, ["made", "made/inner"]);
        // `gone` is named once; its contents are not listed again.
        assert_eq!(deleted, ["emptied/w", "gone", "removed"]);
        // Nothing changed: nothing to send.
        let (tree, again) = Snapshot::take(d.path()).expect("again");
        let (changed, deleted) = diff(&after, &again, tree);
        assert!(changed.files.is_empty() && changed.dirs.is_empty() && deleted.is_empty());
    }

    #[test]
    fn a_path_that_changes_between_file_and_directory_is_deleted_and_sent() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("was-file"), "1").expect("write");
        std::fs::create_dir_all(d.path().join("was-dir")).expect("mkdir");
        std::fs::write(d.path().join("was-dir/inner"), "1").expect("write");
        let (_, before) = Snapshot::take(d.path()).expect("before");
        std::fs::remove_file(d.path().join("was-file")).expect("rm");
        std::fs::create_dir(d.path().join("was-file")).expect("mkdir");
        std::fs::remove_dir_all(d.path().join("was-dir")).expect("rm -r");
        std::fs::write(d.path().join("was-dir"), "2").expect("write");
        let (tree, after) = Snapshot::take(d.path()).expect("after");
        let (changed, deleted) = diff(&before, &after, tree);
        // Applied in this order (deletions, then the archive), the other
        // side ends as this one.
        assert_eq!(deleted, ["was-dir", "was-file"]);
        assert_eq!(changed.dirs, ["was-file"]);
        assert_eq!(changed.files.keys().collect::<Vec<_>>(), ["was-dir"]);
    }
}
