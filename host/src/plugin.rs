//! A plugin instance kept across calls: opt-in state between `run`s.
//!
//! [`crate::Runner::call`] gives every call a fresh instance, so nothing a
//! call leaves behind can leak into the next. Some plugins are worth
//! keeping warm (a parsed dictionary, a compiled regex, a cache); for them
//! [`crate::Runner::plugin`] instantiates once and [`PluginInstance::call`]
//! calls `run` again on the same instance. Each call gets its own fuel
//! budget and timeout; linear memory and its limit persist. A call that
//! traps, hits a limit or times out leaves the instance in an unknown
//! state, so the instance refuses further calls.
//!
//! This is a façade over the two backends' sessions: an instance in this
//! process's own store ([`crate::thread::plugin`]) or in a worker process
//! of its own ([`crate::process::session`]), where a crash of that process
//! ends the instance as `Crashed`.

use crate::outcome::CallError;
use crate::parts::Parts;
use crate::process::ProcessBackend;
use crate::process::session::PluginWorker;
use crate::program::Program;
use crate::spec::{Isolation, TaskSpec};
use crate::thread::plugin::KeptInstance;

/// One instance of a plugin, called many times, in the host process or in
/// a worker process of its own, as its spec's isolation says.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A counter whose state lives in the instance.
/// let dir = tempfile::tempdir()?;
/// let wasm = dir.path().join("counter.wasm");
/// std::fs::write(&wasm, wat::parse_str(r#"(module
///     (global $n (mut i32) (i32.const 0))
///     (func (export "bump") (result i32)
///         (global.set $n (i32.add (global.get $n) (i32.const 1)))
///         (global.get $n)))"#)?)?;
///
/// let runner = isola::Runner::new()?;
/// // `isolation = Process` would keep it in a worker process of its own.
/// let mut counter = runner.plugin(isola::TaskSpec::new(&wasm)).await?;
/// assert_eq!(counter.invoke("bump()").await?, ["1"]);
/// assert_eq!(counter.invoke("bump()").await?, ["2"]); // same instance, state kept
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PluginInstance {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Thread(Box<KeptInstance>),
    Process(Box<PluginWorker>),
}

/// Instantiates `program` at the isolation `spec` asks for.
pub(crate) async fn instantiate(
    parts: &Parts,
    process: &std::sync::Arc<ProcessBackend>,
    program: Program,
    spec: TaskSpec,
) -> Result<PluginInstance, CallError> {
    let kind = match spec.isolation {
        Isolation::Process => Kind::Process(Box::new(
            crate::process::session::start(parts, process, &program, spec).await?,
        )),
        Isolation::Thread => Kind::Thread(Box::new(
            crate::thread::plugin::instantiate(parts, program, spec, None, None).await?,
        )),
    };
    Ok(PluginInstance { kind })
}

impl PluginInstance {
    /// Calls `run` with `input` on this instance.
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] if `run` returned an error (the instance stays
    /// usable); [`CallError::Ended`] if the call trapped, hit a limit or
    /// timed out, its worker process crashed, or an earlier call ended so
    /// (the instance is then unusable).
    pub async fn call(&mut self, input: impl Into<Vec<u8>>) -> Result<Vec<u8>, CallError> {
        match &mut self.kind {
            Kind::Thread(instance) => instance.call(input.into()).await,
            Kind::Process(worker) => worker.call(input.into()).await,
        }
    }

    /// Calls the function export named in `call` on this same instance
    /// (state kept between calls, as for [`PluginInstance::call`]):
    /// `name(arg, …)` with WAVE arguments, as [`crate::Runner::invoke`]
    /// takes it; returns the results in WAVE. A program kept only for this
    /// (a library: no plugin `run`) is fine.
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] for a call that does not fit the program (the
    /// instance stays usable); otherwise as [`PluginInstance::call`].
    pub async fn invoke(&mut self, call: &str) -> Result<Vec<String>, CallError> {
        let output = match &mut self.kind {
            Kind::Thread(instance) => instance.invoke(call).await?,
            Kind::Process(worker) => worker.invoke(call).await?,
        };
        Ok(String::from_utf8_lossy(&output)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// The pid of the worker process holding the instance (process
    /// isolation); `None` for an instance in this process.
    pub fn process_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Thread(_) => None,
            Kind::Process(worker) => Some(worker.pid()),
        }
    }
}
