//! Host functions: services the embedding program owns, which tasks call by
//! name at either isolation level.
//!
//! The embedder registers async closures in a [`HostFunctions`] table and
//! gives it to its runner ([`crate::RunnerConfig::host_functions`]); a task
//! may call the ones its spec grants ([`crate::TaskSpec::host_functions`],
//! none by default) through `isola:task/host.call` (components) or the core
//! import `isola:task` `call` (see `wit/core-abi.md`). Arguments and
//! results are bytes: the guest and the function agree on their encoding
//! (the guest SDK's `call_json` uses JSON).
//!
//! A thread task's call runs the function in its own future, in the host
//! process. A process task's call crosses the pipe to the parent, which
//! checks it against the task's grants again (the worker is not trusted)
//! and runs the function there: the function always runs in the process
//! that registered it, so a crashing worker cannot take the service down.
//!
//! # Limits
//!
//! - A name and arguments larger together than the task's
//!   `Limits::max_message_size` (less the 5 bytes of a frame's header) end
//!   the task with that limit (the guest's fault); a result larger than it
//!   reaches the guest as an error value, and an error message is cut to
//!   it. Names are at most [`MAX_NAME`] bytes.
//! - A task makes one call at a time (a guest waits in its call), so at
//!   most one call of a task is in flight.
//! - A call counts against the task's timeout and is cancelled with it:
//!   the function's future is dropped when the task ends, at both levels
//!   (for a process task, when its parent learns the task ended).
//! - A function's `Err` reaches the guest as an error value; a function
//!   that panics ends its task with [`crate::Outcome::Failed`] naming it,
//!   and the host and other tasks go on.
//!
//! A host function is part of the trusted host: it must check its inputs,
//! which come from the guest.
//!
//! Names that start with `kv.` belong to Isola's own key-value service
//! (`isola:kv`, see the `kv` module), granted by [`crate::TaskSpec::kv`]
//! instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt as _;
use wasmtime::component::Val;
use wasmtime::component::wasm_wave::wasm::WasmType;

use crate::handle::TaskId;
use crate::outcome::HostFault;

/// What a host function returns: result bytes for the guest, or an error
/// message the guest gets as its call's error value.
pub type HostResult = Result<Vec<u8>, String>;

/// One call of a host function.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// The calling task.
    pub task: TaskId,
    /// The calling task's program name: its `argv0`, else its Wasm file's
    /// name.
    pub program: String,
    /// The function called, as registered.
    pub function: String,
    /// The guest's arguments, as it encoded them.
    pub args: Vec<u8>,
}

type BoxedFuture = Pin<Box<dyn Future<Output = HostResult> + Send>>;
type BoxedFn = dyn Fn(HostCall) -> BoxedFuture + Send + Sync;

/// What a typed host function returns: the function's results, or an
/// error message.
pub type TypedResult = Result<Vec<Val>, String>;
type TypedFuture = Pin<Box<dyn Future<Output = TypedResult> + Send>>;
type TypedFn = dyn Fn(HostCall, Vec<Val>) -> TypedFuture + Send + Sync;

/// Param types of a program's typed host imports, by `interface#function`.
pub(crate) type ImportTypes = BTreeMap<String, Vec<wasmtime::component::Type>>;

/// The host functions a runner offers its tasks, by name. Cheap to clone.
///
/// # Examples
///
/// ```
/// let functions = isola::HostFunctions::new().with("greet", |call| async move {
///     let name = String::from_utf8(call.args).map_err(|e| e.to_string())?;
///     Ok(format!("hello, {name}").into_bytes())
/// });
/// assert!(functions.contains("greet"));
/// ```
#[derive(Clone, Default)]
pub struct HostFunctions {
    functions: Arc<BTreeMap<String, Arc<BoxedFn>>>,
    /// Typed functions, by `interface#function`.
    typed: Arc<BTreeMap<String, Arc<TypedFn>>>,
}

impl std::fmt::Debug for HostFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.functions.keys().chain(self.typed.keys()))
            .finish()
    }
}

impl HostFunctions {
    /// An empty table.
    pub fn new() -> HostFunctions {
        HostFunctions::default()
    }

    /// Registers `function` under `name` (replacing one of that name).
    pub fn insert<F, Fut>(&mut self, name: impl Into<String>, function: F)
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HostResult> + Send + 'static,
    {
        let boxed: Arc<BoxedFn> = Arc::new(move |call| Box::pin(function(call)));
        Arc::make_mut(&mut self.functions).insert(name.into(), boxed);
    }

    /// [`HostFunctions::insert`], by value.
    pub fn with<F, Fut>(mut self, name: impl Into<String>, function: F) -> HostFunctions
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HostResult> + Send + 'static,
    {
        self.insert(name, function);
        self
    }

    /// Registers a typed function for components: `function` of the
    /// embedder's WIT interface `interface` (`package:name/interface`, as
    /// the component imports it, e.g. `my:app/config`), taking and
    /// returning wasmtime's component values. A component that imports the
    /// interface gets it linked; a task calls it when its spec grants
    /// `interface` (all its functions) or `interface#function`.
    ///
    /// Values cross in WAVE, checked against the types of the import the
    /// program declares, so the function sees the arguments its WIT says
    /// and must return results of the WIT's result types. An `Err` reaches
    /// the guest as an error value when the function's WIT result is a
    /// `result<_, string>`; any other function's `Err` traps the guest's
    /// call (put the errors a guest should handle in the WIT). A panic ends
    /// the task, as for byte-level functions.
    ///
    /// # Examples
    ///
    /// ```
    /// use isola::wasmtime::component::Val;
    ///
    /// let functions = isola::HostFunctions::new().with_typed("my:app/math", "scale", |_call, args| async move {
    ///     match args.as_slice() {
    ///         [Val::S64(x)] => Ok(vec![Val::S64(x * 10)]),
    ///         _ => Err("scale takes one s64".into()),
    ///     }
    /// });
    /// assert!(functions.contains("my:app/math#scale"));
    /// assert!(functions.contains("my:app/math")); // the interface, for a grant
    /// ```
    pub fn insert_typed<F, Fut>(&mut self, interface: &str, function: &str, f: F)
    where
        F: Fn(HostCall, Vec<Val>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TypedResult> + Send + 'static,
    {
        let boxed: Arc<TypedFn> = Arc::new(move |call, args| Box::pin(f(call, args)));
        // Imports name a version (`my:app/math@1.0.0`); functions are
        // keyed, granted and called without it.
        let interface = bare_interface(interface);
        Arc::make_mut(&mut self.typed).insert(format!("{interface}#{function}"), boxed);
    }

    /// [`HostFunctions::insert_typed`], in builder style.
    pub fn with_typed<F, Fut>(mut self, interface: &str, function: &str, f: F) -> HostFunctions
    where
        F: Fn(HostCall, Vec<Val>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TypedResult> + Send + 'static,
    {
        self.insert_typed(interface, function, f);
        self
    }

    /// The typed functions' full names (`interface#function`).
    pub(crate) fn typed_names(&self) -> std::collections::BTreeSet<String> {
        self.typed.keys().cloned().collect()
    }

    /// Runs the typed function `call.function` on `args` (WAVE lines)
    /// parsed with `params`; its results as WAVE lines.
    async fn invoke_typed(
        &self,
        call: HostCall,
        params: &[wasmtime::component::Type],
    ) -> Result<HostResult, HostFault> {
        let Some(function) = self.typed.get(&call.function).cloned() else {
            return Ok(Err(format!(
                "no host function `{}` is registered",
                call.function
            )));
        };
        let parsed = typed_lines(&call.args, params, |ty, line| {
            Val::from_wave(ty, line).map_err(|e| e.to_string())
        });
        let args = match parsed {
            Ok(args) => args,
            Err(err) => return Ok(Err(format!("bad arguments for `{}`: {err}", call.function))),
        };
        let name = call.function.clone();
        let panicked = |payload: Box<dyn std::any::Any + Send>| HostFault::Panicked {
            function: name.clone(),
            message: panic_message(&*payload),
        };
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| function(call, args))) {
            Ok(future) => future,
            Err(payload) => return Err(panicked(payload)),
        };
        let results = AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .map_err(panicked)?;
        Ok(match results {
            Ok(values) => {
                let mut texts = Vec::with_capacity(values.len());
                if !values.iter().all(wave_writable_value) {
                    return Ok(Err(format!(
                        "`{name}` returned a value that cannot cross to the guest (a resource, \
                         stream, future or map)"
                    )));
                }
                for value in &values {
                    match value.to_wave() {
                        Ok(text) => texts.push(text),
                        Err(err) => {
                            return Ok(Err(format!(
                                "`{name}` returned a value WAVE cannot write: {err}"
                            )));
                        }
                    }
                }
                Ok(texts.join("\n").into_bytes())
            }
            Err(message) => Err(message),
        })
    }

    /// Whether a function of this name is registered: a byte-level one, a
    /// typed one (`interface#function`), or an interface with typed ones.
    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
            || self.typed.contains_key(name)
            || self
                .typed
                .keys()
                .any(|full| interface_of(full) == Some(name))
    }

    /// The registered names, in order: the byte-level functions', then
    /// the typed ones' (`interface#function`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.functions
            .keys()
            .chain(self.typed.keys())
            .map(String::as_str)
    }

    /// Runs the function `call` names; a panic (in the call or its future)
    /// is caught and returned as [`HostFault::Panicked`]. An unknown name
    /// is the guest's error value.
    pub(crate) async fn invoke(&self, call: HostCall) -> Result<HostResult, HostFault> {
        let Some(function) = self.functions.get(&call.function).cloned() else {
            return Ok(Err(format!(
                "no host function `{}` is registered",
                call.function
            )));
        };
        let name = call.function.clone();
        let panicked = |payload: Box<dyn std::any::Any + Send>| HostFault::Panicked {
            function: name.clone(),
            message: panic_message(&*payload),
        };
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| function(call))) {
            Ok(future) => future,
            Err(payload) => return Err(panicked(payload)),
        };
        AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .map_err(panicked)
    }
}

/// The text of a panic's payload, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Where the answer to a worker's host call goes.
pub(crate) type ReplyTo = tokio::sync::oneshot::Sender<Result<HostResult, HostFault>>;

/// A request a worker's task makes of its parent: the function, the
/// arguments, and where the answer goes.
#[derive(Debug)]
pub(crate) struct RemoteCall {
    pub(crate) function: String,
    pub(crate) args: Vec<u8>,
    pub(crate) reply: ReplyTo,
}

/// Where a task's host calls go.
#[derive(Clone, Debug, Default)]
pub(crate) enum HostLink {
    /// Nowhere: the task was granted no host function.
    #[default]
    None,
    /// This process's functions (a thread task, or the parent of a worker).
    Local {
        functions: HostFunctions,
        /// The names the task's spec grants.
        granted: Arc<[String]>,
        /// The `isola:kv` store the task's spec grants.
        kv: Option<Arc<crate::kv::KvStore>>,
        task: TaskId,
        program: Arc<str>,
        /// The param types of the program's typed host imports.
        types: Arc<ImportTypes>,
    },
    /// A worker's parent, which checks the grants again and calls.
    Remote(tokio::sync::mpsc::Sender<RemoteCall>),
}

impl HostLink {
    /// A link to `functions` for a task granted `granted`; [`HostLink::None`]
    /// when it is granted nothing.
    pub(crate) fn local(
        functions: &HostFunctions,
        granted: &[String],
        kv: Option<Arc<crate::kv::KvStore>>,
        task: TaskId,
        program: &str,
        types: Arc<ImportTypes>,
    ) -> HostLink {
        if granted.is_empty() && kv.is_none() {
            return HostLink::None;
        }
        HostLink::Local {
            functions: functions.clone(),
            granted: granted.into(),
            kv,
            task,
            program: program.into(),
            types,
        }
    }

    /// Calls `function` with `args`: the function's result (or its error
    /// value) within `max_result` bytes (a larger result, or a longer error
    /// message, becomes an error value saying so), or why there is none.
    pub(crate) async fn call(
        &self,
        function: String,
        args: Vec<u8>,
        max_result: u64,
    ) -> Result<HostResult, HostFault> {
        if function.len() > MAX_NAME {
            return Ok(Err(format!(
                "a host function's name is at most {MAX_NAME} bytes"
            )));
        }
        let result = self.call_unbounded(function, args).await?;
        Ok(bounded(result, max_result))
    }

    async fn call_unbounded(
        &self,
        function: String,
        args: Vec<u8>,
    ) -> Result<HostResult, HostFault> {
        match self {
            HostLink::None => Ok(Err(not_granted(&function))),
            HostLink::Local {
                functions,
                granted,
                kv,
                task,
                program,
                types,
            } => {
                if function.starts_with(crate::kv::PREFIX) {
                    return Ok(match kv {
                        Some(store) => store.call(&function, args).await,
                        None => Err(format!(
                            "`isola:kv` (`{function}`) is not granted to this task (TaskSpec::kv)"
                        )),
                    });
                }
                // An interface grant covers its typed functions only.
                let by_interface = types.contains_key(&function)
                    && interface_of(&function)
                        .is_some_and(|interface| granted.iter().any(|g| g == interface));
                if !granted.contains(&function) && !by_interface {
                    return Ok(Err(not_granted(&function)));
                }
                if let Some(params) = types.get(&function) {
                    let call = HostCall {
                        task: *task,
                        program: program.to_string(),
                        function,
                        args,
                    };
                    return functions.invoke_typed(call, params).await;
                }
                functions
                    .invoke(HostCall {
                        task: *task,
                        program: program.to_string(),
                        function,
                        args,
                    })
                    .await
            }
            HostLink::Remote(requests) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let sent = requests
                    .send(RemoteCall {
                        function,
                        args,
                        reply,
                    })
                    .await;
                if sent.is_err() {
                    return Err(HostFault::Unreachable);
                }
                answer.await.unwrap_or(Err(HostFault::Unreachable))
            }
        }
    }
}

/// Longest function name a guest may call with: a name is a short
/// identifier, and the guest's bytes are copied into host memory.
pub(crate) const MAX_NAME: usize = 1024;

/// Whether a call of `function` with `args_len` bytes of arguments fits a
/// task whose message size limit is `max`: together with the 5 bytes of
/// the frame a process task's call travels in.
pub(crate) fn call_fits(function: &str, args_len: usize, max: u64) -> bool {
    (args_len + function.len()).saturating_add(5) as u64 <= max.max(5)
}

/// `result` as the guest may receive it: a result larger than `max` bytes
/// becomes an error value saying so, and an error message is cut to `max`
/// bytes (at a character boundary).
pub(crate) fn bounded(result: HostResult, max: u64) -> HostResult {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    match result {
        Ok(bytes) if bytes.len() > max => Err(truncated(
            format!(
                "the host function's result ({} bytes) is larger than the task's message size \
                 limit ({})",
                bytes.len(),
                bytesize::ByteSize(max as u64)
            ),
            max,
        )),
        Ok(bytes) => Ok(bytes),
        Err(message) => Err(truncated(message, max)),
    }
}

/// `message` cut to at most `max` bytes, at a character boundary.
fn truncated(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// Whether values of `ty` can be written in WAVE: resources, streams,
/// futures, maps, references and fixed-length lists cannot (wasm-wave
/// panics on them), so a call whose types hold one is refused up front.
pub(crate) fn wave_writable_type<T: WasmType>(ty: &T) -> bool {
    use wasmtime::component::wasm_wave::wasm::WasmTypeKind as Kind;
    match ty.kind() {
        Kind::Unsupported | Kind::FixedLengthList => false,
        Kind::List => ty
            .list_element_type()
            .is_some_and(|t| wave_writable_type(&t)),
        Kind::Record => ty.record_fields().all(|(_, t)| wave_writable_type(&t)),
        Kind::Tuple => ty.tuple_element_types().all(|t| wave_writable_type(&t)),
        Kind::Variant => ty
            .variant_cases()
            .all(|(_, t)| t.is_none_or(|t| wave_writable_type(&t))),
        Kind::Option => ty
            .option_some_type()
            .is_some_and(|t| wave_writable_type(&t)),
        Kind::Result => ty.result_types().is_some_and(|(ok, err)| {
            ok.is_none_or(|t| wave_writable_type(&t)) && err.is_none_or(|t| wave_writable_type(&t))
        }),
        _ => true,
    }
}

/// Whether a component value can be written in WAVE (see
/// [`wave_writable_type`]).
pub(crate) fn wave_writable_value(value: &Val) -> bool {
    match value {
        Val::List(items) | Val::Tuple(items) => items.iter().all(wave_writable_value),
        Val::Record(fields) => fields.iter().all(|(_, v)| wave_writable_value(v)),
        Val::Variant(_, payload) | Val::Option(payload) => {
            payload.as_deref().is_none_or(wave_writable_value)
        }
        Val::Result(Ok(payload) | Err(payload)) => {
            payload.as_deref().is_none_or(wave_writable_value)
        }
        Val::Map(_)
        | Val::Resource(_)
        | Val::Future(_)
        | Val::Stream(_)
        | Val::ErrorContext(_)
        | Val::FixedLengthList(_) => false,
        _ => true,
    }
}

/// `interface` without its version (`my:app/math@1.2.0` → `my:app/math`):
/// how typed functions are registered, granted and called.
pub(crate) fn bare_interface(interface: &str) -> &str {
    interface
        .split_once('@')
        .map_or(interface, |(bare, _)| bare)
}

/// One value per line of `text` (WAVE, as calls and results cross), each
/// parsed with its type.
///
/// # Errors
///
/// Text that is not UTF-8, a count of lines other than of `types`, or
/// the first value `parse` refuses.
pub(crate) fn typed_lines<T, V>(
    text: &[u8],
    types: &[T],
    parse: impl Fn(&T, &str) -> Result<V, String>,
) -> Result<Vec<V>, String> {
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != types.len() {
        return Err(format!("{} values for {}", lines.len(), types.len()));
    }
    types
        .iter()
        .zip(lines)
        .map(|(ty, line)| parse(ty, line))
        .collect()
}

/// The interface of a typed function's full name (`interface#function`).
pub(crate) fn interface_of(full: &str) -> Option<&str> {
    full.rsplit_once('#').map(|(interface, _)| interface)
}

/// The error value of a call to a function the task was not granted.
pub(crate) fn not_granted(function: &str) -> String {
    let function = truncated(function.to_owned(), MAX_NAME);
    format!("host function `{function}` is not granted to this task (TaskSpec::host_functions)")
}
