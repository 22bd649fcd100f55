//! How a [`TaskSpec`] and its paths travel as JSON between processes (the
//! run frame of a worker): paths as bytes when they are not UTF-8, so a
//! spec that runs at thread isolation runs at process isolation too. Data
//! only; the frames themselves are `ipc::protocol`'s.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::{DirGrant, Isolation, Limits, Output, Sandbox, Stdin, TaskSpec};

/// Paths as bytes in a frame: a UTF-8 path as a JSON string (so frames
/// read as before, and stay small), any other as an array of its bytes.
/// Reading accepts either, and bytes given as a byte buffer too.
///
/// For `#[serde(with = "path_bytes")]` on a `PathBuf` or `Cow<Path>` field.
pub(crate) mod path_bytes {
    use std::ffi::OsString;
    use std::fmt;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `path` as a string if it is UTF-8, else as its bytes.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports; JSON does not fail on either form.
    pub(crate) fn serialize<P, S>(path: &P, serializer: S) -> Result<S::Ok, S::Error>
    where
        P: AsRef<Path> + ?Sized,
        S: Serializer,
    {
        let os = path.as_ref().as_os_str();
        match os.to_str() {
            Some(text) => serializer.serialize_str(text),
            None => serializer.serialize_bytes(os.as_bytes()),
        }
    }

    /// Reads a path written by [`serialize`] (or any JSON string).
    ///
    /// # Errors
    ///
    /// A value that is neither a string nor a sequence of bytes.
    pub(crate) fn deserialize<'de, D, P>(deserializer: D) -> Result<P, D::Error>
    where
        D: Deserializer<'de>,
        P: From<PathBuf>,
    {
        deserializer.deserialize_any(PathVisitor).map(P::from)
    }

    /// [`path_bytes`](self) for an optional path
    /// (`#[serde(with = "path_bytes::option")]` on an `Option<Cow<Path>>`).
    pub(crate) mod option {
        use std::borrow::Cow;
        use std::path::{Path, PathBuf};

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// A path to write.
        struct Out<'a>(&'a Path);

        impl Serialize for Out<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize(self.0, serializer)
            }
        }

        /// A path read.
        struct In(PathBuf);

        impl<'de> Deserialize<'de> for In {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                super::deserialize(deserializer).map(In)
            }
        }

        /// Writes `path`, if any, as [`super::serialize`] does.
        ///
        /// # Errors
        ///
        /// Whatever the serializer reports.
        pub(crate) fn serialize<S: Serializer>(
            path: &Option<Cow<'_, Path>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match path {
                Some(path) => serializer.serialize_some(&Out(path)),
                None => serializer.serialize_none(),
            }
        }

        /// Reads what [`serialize`] wrote.
        ///
        /// # Errors
        ///
        /// A value that is neither null, a string nor bytes.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Cow<'static, Path>>, D::Error> {
            Ok(Option::<In>::deserialize(deserializer)?.map(|In(path)| Cow::Owned(path)))
        }
    }

    /// Accepts a path as text or as bytes.
    struct PathVisitor;

    impl<'de> Visitor<'de> for PathVisitor {
        type Value = PathBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a path, as a string or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<PathBuf, E> {
            Ok(PathBuf::from(text))
        }

        fn visit_string<E: de::Error>(self, text: String) -> Result<PathBuf, E> {
            Ok(PathBuf::from(text))
        }

        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<PathBuf, E> {
            Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
        }

        fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<PathBuf, E> {
            Ok(PathBuf::from(OsString::from_vec(bytes)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathBuf, A::Error> {
            // The hint comes from the peer: capped, so a lying one cannot
            // make us reserve much (the frame bounds the real length).
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(PathBuf::from(OsString::from_vec(bytes)))
        }
    }
}

/// A [`TaskSpec`] as a run frame carries it. The same JSON as the spec's
/// own serde form (same fields, same order, same defaults, unknown fields
/// refused), except that its paths go through [`path_bytes`], so a spec
/// whose program, directory or stdin file is not UTF-8 reaches its worker
/// intact. Borrows the spec to write it; owns what it read.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireSpec<'a> {
    /// [`TaskSpec::wasm`].
    #[serde(with = "path_bytes")]
    wasm: Cow<'a, Path>,
    /// [`TaskSpec::argv0`].
    #[serde(default)]
    argv0: Option<Cow<'a, str>>,
    /// [`TaskSpec::args`].
    #[serde(default)]
    args: Cow<'a, [String]>,
    /// [`TaskSpec::env`].
    #[serde(default)]
    env: Cow<'a, BTreeMap<String, String>>,
    /// [`TaskSpec::inherit_env`].
    #[serde(default)]
    inherit_env: Cow<'a, [String]>,
    /// [`TaskSpec::dirs`].
    #[serde(default)]
    dirs: Vec<WireDir<'a>>,
    /// [`TaskSpec::stdin`].
    #[serde(default)]
    stdin: WireStdin<'a>,
    /// [`TaskSpec::stdout`].
    #[serde(default)]
    stdout: Output,
    /// [`TaskSpec::stderr`].
    #[serde(default)]
    stderr: Output,
    /// [`TaskSpec::input`].
    #[serde(default)]
    input: Option<Cow<'a, [u8]>>,
    /// [`TaskSpec::limits`].
    #[serde(default)]
    limits: Cow<'a, Limits>,
    /// [`TaskSpec::isolation`].
    #[serde(default)]
    isolation: Isolation,
    /// [`TaskSpec::shared_group`].
    #[serde(default)]
    shared_group: Option<Cow<'a, str>>,
    /// [`TaskSpec::reuse_worker`].
    #[serde(default)]
    reuse_worker: bool,
    /// [`TaskSpec::sandbox`].
    #[serde(default)]
    sandbox: Option<Sandbox>,
    /// [`TaskSpec::host_functions`].
    #[serde(default)]
    host_functions: Cow<'a, [String]>,
    /// [`TaskSpec::kv`].
    #[serde(default, with = "path_bytes::option")]
    kv: Option<Cow<'a, Path>>,
}

/// A [`DirGrant`] on the wire, its host path as [`path_bytes`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDir<'a> {
    /// [`DirGrant::host`].
    #[serde(with = "path_bytes")]
    host: Cow<'a, Path>,
    /// [`DirGrant::guest`].
    #[serde(default)]
    guest: Option<Cow<'a, str>>,
    /// [`DirGrant::writable`].
    #[serde(default)]
    writable: bool,
}

/// A [`Stdin`] on the wire, a file's path as [`path_bytes`].
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireStdin<'a> {
    /// [`Stdin::Closed`].
    #[default]
    Closed,
    /// [`Stdin::Bytes`].
    Bytes(Cow<'a, [u8]>),
    /// [`Stdin::File`].
    File(#[serde(with = "path_bytes")] Cow<'a, Path>),
    /// [`Stdin::Inherit`].
    Inherit,
}

impl<'a> From<&'a TaskSpec> for WireSpec<'a> {
    fn from(spec: &'a TaskSpec) -> WireSpec<'a> {
        // Every field named, no `..`: a field added to `TaskSpec` does not
        // compile until it travels to workers too.
        let TaskSpec {
            wasm,
            argv0,
            args,
            env,
            inherit_env,
            dirs,
            stdin,
            stdout,
            stderr,
            input,
            limits,
            isolation,
            shared_group,
            reuse_worker,
            sandbox,
            host_functions,
            kv,
        } = spec;
        WireSpec {
            wasm: Cow::Borrowed(wasm.as_path()),
            argv0: argv0.as_deref().map(Cow::Borrowed),
            args: Cow::Borrowed(args.as_slice()),
            env: Cow::Borrowed(env),
            inherit_env: Cow::Borrowed(inherit_env.as_slice()),
            dirs: dirs
                .iter()
                .map(|dir| WireDir {
                    host: Cow::Borrowed(dir.host.as_path()),
                    guest: dir.guest.as_deref().map(Cow::Borrowed),
                    writable: dir.writable,
                })
                .collect(),
            stdin: match stdin {
                Stdin::Closed => WireStdin::Closed,
                Stdin::Bytes(bytes) => WireStdin::Bytes(Cow::Borrowed(bytes.as_slice())),
                Stdin::File(path) => WireStdin::File(Cow::Borrowed(path.as_path())),
                Stdin::Inherit => WireStdin::Inherit,
            },
            stdout: *stdout,
            stderr: *stderr,
            input: input.as_deref().map(Cow::Borrowed),
            limits: Cow::Borrowed(limits),
            isolation: *isolation,
            shared_group: shared_group.as_deref().map(Cow::Borrowed),
            reuse_worker: *reuse_worker,
            sandbox: *sandbox,
            host_functions: Cow::Borrowed(host_functions.as_slice()),
            kv: kv.as_deref().map(Cow::Borrowed),
        }
    }
}

impl From<WireSpec<'_>> for TaskSpec {
    fn from(wire: WireSpec<'_>) -> TaskSpec {
        TaskSpec {
            wasm: wire.wasm.into_owned(),
            argv0: wire.argv0.map(Cow::into_owned),
            args: wire.args.into_owned(),
            env: wire.env.into_owned(),
            inherit_env: wire.inherit_env.into_owned(),
            dirs: wire
                .dirs
                .into_iter()
                .map(|dir| DirGrant {
                    host: dir.host.into_owned(),
                    guest: dir.guest.map(Cow::into_owned),
                    writable: dir.writable,
                })
                .collect(),
            stdin: match wire.stdin {
                WireStdin::Closed => Stdin::Closed,
                WireStdin::Bytes(bytes) => Stdin::Bytes(bytes.into_owned()),
                WireStdin::File(path) => Stdin::File(path.into_owned()),
                WireStdin::Inherit => Stdin::Inherit,
            },
            stdout: wire.stdout,
            stderr: wire.stderr,
            input: wire.input.map(Cow::into_owned),
            limits: wire.limits.into_owned(),
            isolation: wire.isolation,
            shared_group: wire.shared_group.map(Cow::into_owned),
            reuse_worker: wire.reuse_worker,
            sandbox: wire.sandbox,
            host_functions: wire.host_functions.into_owned(),
            kv: wire.kv.map(Cow::into_owned),
        }
    }
}

/// Serializes a spec exactly as a run frame carries it: for measuring a
/// spec against the frame limit (`rules`) with the same bytes the frame
/// will hold.
pub(crate) struct SpecOnWire<'a>(pub(crate) &'a TaskSpec);

impl Serialize for SpecOnWire<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireSpec::from(self.0).serialize(serializer)
    }
}

/// `#[serde(with = "spec_wire")]` for the [`TaskSpec`] of a run frame:
/// written and read through [`WireSpec`].
pub(crate) mod spec_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{SpecOnWire, WireSpec};
    use crate::spec::TaskSpec;

    /// Writes `spec` with its paths as [`super::path_bytes`].
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports.
    pub(crate) fn serialize<S: Serializer>(
        spec: &TaskSpec,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        SpecOnWire(spec).serialize(serializer)
    }

    /// Reads a spec written by [`serialize`].
    ///
    /// # Errors
    ///
    /// A body that is not a spec.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<TaskSpec, D::Error> {
        WireSpec::deserialize(deserializer).map(TaskSpec::from)
    }
}
