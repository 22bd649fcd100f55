//! Write Isola tasks in Rust.
//!
//! One API whichever way the guest is built:
//!
//! - `wasm32-wasip2` (a component): through the `isola:task` WIT package in
//!   `wit/`, with bindings made by `wit-bindgen`;
//! - `wasm32-wasip1` / `wasm32-wasip1-threads` (a core module): through the
//!   same functions as core imports from the module `isola:task`.
//!
//! # A task that answers messages
//!
//! ```no_run
//! // Like `parentPort.on('message')` in a Node worker: until the host closes.
//! while let Some(message) = isola_guest::recv() {
//!     isola_guest::post(&message);
//! }
//! ```
//!
//! # A plugin
//!
//! Built as a `cdylib`; the host calls `run` with an input
//! (`Runner::call`, `isola call`):
//!
//! ```no_run
//! fn shout(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!     let text = String::from_utf8(input).map_err(|e| e.to_string())?;
//!     Ok(text.to_uppercase().into_bytes())
//! }
//! isola_guest::export_run!(shout);
//! ```
//!
//! Outside Wasm (for example when a workspace is checked natively) the
//! functions exist but panic: they only work inside Isola.

/// What [`try_recv`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryRecv {
    /// The next message.
    Message(Vec<u8>),
    /// No message right now; the channel is open.
    Empty,
    /// The host closed its side and no message is left.
    Closed,
}

/// Posts a message to the host (`postMessage`). Blocks while the host's
/// inbox for this task is full.
pub fn post(message: &[u8]) {
    imp::post(message)
}

/// Posts a UTF-8 message.
pub fn post_str(message: &str) {
    post(message.as_bytes())
}

/// Receives the next message from the host, blocking until one arrives;
/// `None` once the host closed the channel and every message was received.
pub fn recv() -> Option<Vec<u8>> {
    imp::recv()
}

/// Receives the next message if one is waiting, without blocking.
pub fn try_recv() -> TryRecv {
    imp::try_recv()
}

/// The task's start input (`workerData`), if it was started with one.
pub fn input() -> Option<Vec<u8>> {
    imp::input()
}

/// Calls the host function `name` with `args` (a service the host program
/// owns, granted to the task by `TaskSpec::host_functions`): its result, or
/// its error message. Calling a function the task was not granted is an
/// error too. Blocks until the host answers; counts against the task's
/// timeout.
///
/// ```no_run
/// match isola_guest::call("greet", b"world") {
///     Ok(reply) => println!("{}", String::from_utf8_lossy(&reply)),
///     Err(error) => eprintln!("greet failed: {error}"),
/// }
/// ```
pub fn call(name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
    imp::call(name, args)
}

/// [`call`] with JSON: `args` encoded, the result decoded as `R`. An
/// encoding or decoding failure is an error too.
#[cfg(feature = "json")]
pub fn call_json<A, R>(name: &str, args: &A) -> Result<R, String>
where
    A: serde::Serialize + ?Sized,
    R: serde::de::DeserializeOwned,
{
    let args = serde_json::to_vec(args).map_err(|e| format!("cannot encode the arguments: {e}"))?;
    let reply = call(name, &args)?;
    serde_json::from_slice(&reply).map_err(|e| format!("cannot decode `{name}`'s result: {e}"))
}

/// `isola:kv`: a key-value store the host keeps on a SQLite database,
/// shared by every task granted the same file (`TaskSpec::kv`, `kv` in
/// `tasks.toml`, `isola run --kv FILE`), at either isolation level. Each
/// operation is one transaction. Errors are the host's messages (not
/// granted, not an integer, the database failed).
///
/// ```no_run
/// let visits = isola_guest::kv::increment(b"visits", 1).expect("a kv store");
/// println!("visit number {visits}");
/// ```
pub mod kv {
    /// `u32` little-endian length, then the bytes.
    fn sized(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// A byte `0` for none, or `1` and [`sized`] bytes.
    fn optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
        match bytes {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                sized(out, bytes);
            }
        }
    }

    fn flag(reply: Vec<u8>) -> Result<bool, String> {
        match reply.as_slice() {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err("a malformed reply from `isola:kv`".into()),
        }
    }

    /// The value of `key`, if it has one.
    pub fn get(key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let reply = super::call("kv.get", key)?;
        match reply.split_first() {
            Some((0, [])) => Ok(None),
            Some((1, value)) => Ok(Some(value.to_vec())),
            _ => Err("a malformed reply from `isola:kv`".into()),
        }
    }

    /// Sets `key` to `value`.
    pub fn set(key: &[u8], value: &[u8]) -> Result<(), String> {
        let mut args = Vec::with_capacity(4 + key.len() + value.len());
        sized(&mut args, key);
        args.extend_from_slice(value);
        super::call("kv.set", &args).map(drop)
    }

    /// Deletes `key`; whether it was there.
    pub fn delete(key: &[u8]) -> Result<bool, String> {
        flag(super::call("kv.delete", key)?)
    }

    /// Adds `by` to the decimal integer at `key` (0 if absent); the new
    /// value.
    pub fn increment(key: &[u8], by: i64) -> Result<i64, String> {
        let mut args = by.to_le_bytes().to_vec();
        args.extend_from_slice(key);
        let reply = super::call("kv.increment", &args)?;
        let bytes: [u8; 8] = reply
            .try_into()
            .map_err(|_| "a malformed reply from `isola:kv`".to_owned())?;
        Ok(i64::from_le_bytes(bytes))
    }

    /// Sets `key` to `new` (`None`: deletes it) if its value is `expected`
    /// (`None`: it has none); whether it did.
    pub fn compare_and_swap(
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, String> {
        let mut args = Vec::new();
        sized(&mut args, key);
        optional(&mut args, expected);
        optional(&mut args, new);
        flag(super::call("kv.cas", &args)?)
    }

    /// The keys that start with `prefix`, in byte order.
    pub fn list(prefix: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let reply = super::call("kv.list", prefix)?;
        let mut keys = Vec::new();
        let mut rest = reply.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err("a malformed reply from `isola:kv`".into());
            }
            let (key, tail) = tail.split_at(len);
            keys.push(key.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err("a malformed reply from `isola:kv`".into());
        }
        Ok(keys)
    }
}

#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "isola_guest::bindings",
    });
}

#[cfg(all(target_arch = "wasm32", target_env = "p2"))]
mod imp {
    use super::TryRecv;
    use crate::bindings::isola::task::{channel, host, start};

    pub fn call(name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        host::call(name, args)
    }

    pub fn post(message: &[u8]) {
        channel::post(message)
    }

    pub fn recv() -> Option<Vec<u8>> {
        channel::recv()
    }

    pub fn try_recv() -> TryRecv {
        match channel::try_recv() {
            channel::TryRecvResult::Message(m) => TryRecv::Message(m),
            channel::TryRecvResult::Empty => TryRecv::Empty,
            channel::TryRecvResult::Closed => TryRecv::Closed,
        }
    }

    pub fn input() -> Option<Vec<u8>> {
        start::input()
    }
}

#[cfg(all(target_arch = "wasm32", not(target_env = "p2")))]
mod imp {
    use super::TryRecv;

    #[link(wasm_import_module = "isola:task")]
    unsafe extern "C" {
        #[link_name = "post"]
        safe fn host_post(ptr: *const u8, len: usize);
        #[link_name = "recv-next"]
        safe fn recv_next() -> i64;
        #[link_name = "try-recv-next"]
        safe fn try_recv_next() -> i64;
        #[link_name = "read"]
        fn read_pending(ptr: *mut u8);
        #[link_name = "input-len"]
        safe fn input_len() -> i64;
        #[link_name = "input-read"]
        fn input_read(ptr: *mut u8);
        #[link_name = "set-output"]
        safe fn set_output(ptr: *const u8, len: usize);
        #[link_name = "set-error"]
        safe fn set_error(ptr: *const u8, len: usize);
        #[link_name = "call"]
        safe fn host_call(
            name: *const u8,
            name_len: usize,
            args: *const u8,
            args_len: usize,
        ) -> i64;
        #[link_name = "call-read"]
        fn call_read(ptr: *mut u8);
    }

    pub fn call(name: &str, args: &[u8]) -> Result<Vec<u8>, String> {
        match host_call(name.as_ptr(), name.len(), args.as_ptr(), args.len()) {
            len if len >= 0 => Ok(take(len, call_read)),
            // `-1 - len` of the error message.
            code => {
                let error = take(-1 - code, call_read);
                Err(String::from_utf8_lossy(&error).into_owned())
            }
        }
    }

    /// Copies a message of `len` bytes that the host holds for us.
    fn take(len: i64, fill: unsafe extern "C" fn(*mut u8)) -> Vec<u8> {
        let len = usize::try_from(len).unwrap_or(0);
        let mut buf = Vec::<u8>::with_capacity(len);
        // SAFETY: the host writes exactly `len` bytes (the length it just
        // reported) into the buffer, which has that much capacity; only then
        // is the length set.
        unsafe {
            fill(buf.as_mut_ptr());
            buf.set_len(len);
        }
        buf
    }

    pub fn post(message: &[u8]) {
        host_post(message.as_ptr(), message.len())
    }

    pub fn recv() -> Option<Vec<u8>> {
        match recv_next() {
            len if len >= 0 => Some(take(len, read_pending)),
            _ => None,
        }
    }

    pub fn try_recv() -> TryRecv {
        match try_recv_next() {
            -2 => TryRecv::Empty,
            len if len >= 0 => TryRecv::Message(take(len, read_pending)),
            _ => TryRecv::Closed,
        }
    }

    pub fn input() -> Option<Vec<u8>> {
        match input_len() {
            len if len >= 0 => Some(take(len, input_read)),
            _ => None,
        }
    }

    pub fn output(output: &[u8]) {
        set_output(output.as_ptr(), output.len())
    }

    pub fn error(message: &str) {
        set_error(message.as_ptr(), message.len())
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::TryRecv;

    fn outside() -> ! {
        panic!("isola-guest functions only work inside an Isola task (a wasm32 target)")
    }

    pub fn post(_message: &[u8]) {
        outside()
    }

    pub fn recv() -> Option<Vec<u8>> {
        outside()
    }

    pub fn try_recv() -> TryRecv {
        outside()
    }

    pub fn input() -> Option<Vec<u8>> {
        outside()
    }

    pub fn call(_name: &str, _args: &[u8]) -> Result<Vec<u8>, String> {
        outside()
    }
}

/// Shared memory groups (`wasm32-wasip1-threads` only): tasks that share
/// one linear memory with each other and with the host.
///
/// The group's module has a `main` that prepares shared data, publishes the
/// regions the host may see, and then serves tasks; each task runs `task`
/// on a thread of its own (its own stack and TLS, the same heap and
/// statics):
///
/// ```no_run
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// static DONE: AtomicU32 = AtomicU32::new(0);
///
/// fn task() {
///     // Each task's start input says what to do.
///     let _job = isola_guest::input();
///     DONE.fetch_add(1, Ordering::SeqCst);
/// }
///
/// let data = vec![0u8; 1 << 20].leak();
/// isola_guest::group::publish("data", data);
/// isola_guest::group::serve(task);
/// ```
pub mod group {
    use std::sync::Mutex;

    /// Regions published so far, for [`region`]. A static of the shared
    /// memory, so every task of the group sees the same list.
    static REGIONS: Mutex<Vec<(String, usize, usize)>> = Mutex::new(Vec::new());

    /// Makes `data` visible to the host (and to [`region`]) as the region
    /// `name`.
    pub fn publish<T>(name: &str, data: &[T]) {
        let bytes = std::mem::size_of_val(data);
        super::group_imp::publish(name, data.as_ptr().cast(), bytes);
        REGIONS.lock().unwrap_or_else(|e| e.into_inner()).push((
            name.to_owned(),
            data.as_ptr() as usize,
            data.len(),
        ));
    }

    /// A published region, seen as a slice of `T`.
    #[derive(Debug, Clone, Copy)]
    pub struct Region<T> {
        ptr: *mut T,
        len: usize,
    }

    impl<T> Region<T> {
        /// Number of `T`s in the region.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether the region is empty.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// The region as a mutable slice.
        ///
        /// # Safety
        ///
        /// The region is shared with the other tasks and the host: the
        /// caller must make sure nobody writes the part it uses while it
        /// holds the slice (for example, tasks working on disjoint
        /// stripes), or use atomics instead.
        #[allow(
            clippy::mut_from_ref,
            reason = "shared memory: aliasing is the caller's contract"
        )]
        pub unsafe fn as_mut_slice(&self) -> &mut [T] {
            // SAFETY: `ptr`/`len` describe a live `'static` slice that was
            // published; exclusivity is the caller's promise.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
        }
    }

    /// The region published as `name`, as a slice of `T` (the type it was
    /// published with).
    pub fn region<T>(name: &str) -> Option<Region<T>> {
        let regions = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
        let (_, ptr, len) = regions.iter().find(|(n, _, _)| n == name)?;
        Some(Region {
            ptr: *ptr as *mut T,
            len: *len,
        })
    }

    /// Tells the host the group is ready, then runs `task` on a new thread
    /// for every task the host starts in the group, until the group is
    /// closed. Call it last in `main`.
    pub fn serve(task: fn()) {
        super::group_imp::serve(task)
    }
}

#[cfg(isola_threads)]
mod group_imp {
    #[link(wasm_import_module = "isola:task")]
    unsafe extern "C" {
        #[link_name = "group-ready"]
        safe fn group_ready();
        #[link_name = "group-next-task"]
        safe fn group_next_task() -> i32;
        #[link_name = "publish-region"]
        safe fn publish_region(name: *const u8, name_len: usize, offset: usize, len: usize);
    }

    /// Stack of each task's thread. Recursion that keeps its frames in
    /// registers uses the engine's stack instead.
    const TASK_STACK: usize = 1 << 20;

    pub fn publish(name: &str, ptr: *const u8, len: usize) {
        publish_region(name.as_ptr(), name.len(), ptr as usize, len)
    }

    pub fn serve(task: fn()) {
        group_ready();
        while group_next_task() == 1 {
            // The host binds the thread this creates to the task it just
            // handed out; failing to create it fails that task.
            let _ = std::thread::Builder::new()
                .stack_size(TASK_STACK)
                .spawn(task);
        }
    }
}

#[cfg(not(isola_threads))]
mod group_imp {
    fn unsupported() -> ! {
        panic!("shared memory groups need a `wasm32-wasip1-threads` build running in Isola")
    }

    pub fn publish(_name: &str, _ptr: *const u8, _len: usize) {
        unsupported()
    }

    pub fn serve(_task: fn()) {
        unsupported()
    }
}

#[doc(hidden)]
pub mod __private {
    #[cfg(all(target_arch = "wasm32", not(target_env = "p2")))]
    pub use crate::imp::{error, output};
}

/// Exports `f` as the plugin entry `run`.
///
/// `f` takes the input bytes and returns the output bytes or an error
/// (anything `Display`). On a component this implements `run` of the
/// `isola:task/plugin` world; on a core module it exports `isola_run`.
/// Build the crate as a `cdylib`.
#[macro_export]
macro_rules! export_run {
    ($f:path) => {
        #[cfg(all(target_arch = "wasm32", target_env = "p2"))]
        const _: () = {
            struct IsolaPlugin;
            impl $crate::bindings::Guest for IsolaPlugin {
                fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
                    $f(input).map_err(|e| e.to_string())
                }
            }
    $crate::bindings::__export_plugin!(IsolaPlugin with_types_in $crate::bindings);
        };

        #[cfg(all(target_arch = "wasm32", not(target_env = "p2")))]
        #[unsafe(export_name = "isola_run")]
        extern "C" fn __isola_run() -> i32 {
            let input = $crate::input().unwrap_or_default();
            match $f(input) {
                Ok(output) => {
                    $crate::__private::output(&output);
                    0
                }
                Err(error) => {
                    $crate::__private::error(&error.to_string());
                    1
                }
            }
        }

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            // Natively there is nothing to export; keep `f` used.
            let _ = $f;
        };
    };
}
