//! A kept plugin instance in a worker process of its own (the process
//! side of [`crate::PluginInstance`]): the worker instantiates it once and
//! answers `call` frames until the pipe closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::process::{Child, ChildStdout};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::pool::{
    ChildGuard, GRACE, HANDSHAKE_TIMEOUT, ProcessBackend, Worker, Writer, reap, sleep_until,
};
use super::supervisor::{limit_cgroup_memory, os_limits, prepare_for_worker};
use crate::error::Error;
use crate::ipc::cgroup::WorkerGroup;
use crate::ipc::protocol::{self, FollowingData, FromWorker, HostReply, RunRequest, ToWorker};
use crate::ipc::sys;
use crate::outcome::{
    CallError, Outcome, Stop, TaskMetrics, WorkerEnding, abandoned, ended, unusable,
};
use crate::parts::Parts;
use crate::program::Program;
use crate::spec::{Entry, Stdin, TaskSpec};

/// A kept plugin instance in a worker process of its own: the worker
/// instantiates it once and answers calls until the pipe closes.
#[derive(Debug)]
pub(crate) struct PluginWorker {
    /// `None` once reaped (after a crash or a kill).
    child: Option<Child>,
    pid: u32,
    reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    writer: Writer,
    timeout: Option<Duration>,
    /// The worker's kernel memory limit, in bytes (see the supervisor's).
    data_limit: u64,
    /// What the worker said on its stderr that the outcome needs.
    said: std::sync::Arc<super::pool::WorkerSaid>,
    /// The worker's cgroup, if it has one (see the supervisor's).
    cgroup: Option<WorkerGroup>,
    /// Why the instance is unusable, once it is.
    broken: Option<Outcome>,
    /// A call was sent and its answer not read: a caller gave up on it, and
    /// the next answer on the pipe would be that one's.
    in_call: bool,
    /// The host functions the plugin may call, run here for its worker.
    host: crate::host_fn::HostLink,
    /// The plugin's message size limit, which bounds a host call's
    /// arguments (the worker checks it too, but is not trusted).
    max_message_size: u64,
    /// The program, to check calls by name before they are sent.
    program: Program,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Starts a worker that keeps a plugin instance (see
/// [`crate::Runner::plugin`]).
///
/// # Errors
///
/// [`CallError::Start`] as [`crate::Runner::spawn`], or if the worker
/// cannot start; [`CallError::Ended`] if instantiating ran guest code that
/// ended (a trap in a `start` function, a limit) or the worker died.
pub(crate) async fn start(
    parts: &Parts,
    backend: &Arc<ProcessBackend>,
    program: &Program,
    mut spec: TaskSpec,
) -> std::result::Result<PluginWorker, CallError> {
    parts.check(&spec)?;
    // A plugin's `run`, or a library's functions called by name.
    if program.is_plugin() || program.is_command() {
        program.resolve_entry(Entry::Run)?;
    }
    program.host_call_problem(&spec)?;
    let host = parts.host_link(&spec, crate::TaskId::next(), program)?;
    let max_message_size = spec.limits.max_message_size.as_u64();
    if spec.stdin == Stdin::Inherit {
        return Err(CallError::Start(Error::InvalidSpec {
            field: "stdin".into(),
            message: "a kept plugin instance in a worker process cannot read the host's stdin"
                .into(),
        }));
    }
    let cache_dir = prepare_for_worker(parts, backend, program, &mut spec)?;
    let slot = parts.slot().await?;
    let sandbox = spec.sandbox.unwrap_or(backend.sandbox);
    let Worker {
        child,
        pid,
        reader,
        mut writer,
        said,
        sandboxed: _,
        filtered: _,
        mut cgroup,
    } = backend.take_worker(false, sandbox, None).await?;
    // Reaped whatever happens from here.
    let mut guard = ChildGuard::new(child, pid);
    backend.refill_soon();
    let timeout = spec.limits.timeout;
    // Input and stdin bytes follow the plugin frame as raw data frames.
    let (data, data_frames) = FollowingData::take(&mut spec);
    let data_limit = os_limits(&spec).data_bytes;
    limit_cgroup_memory(cgroup.as_mut(), data_limit, sandbox)?;
    let request = RunRequest {
        os_limits: os_limits(&spec),
        program: protocol::ProgramId::of(program),
        spec,
        cache_dir,
        entry: Entry::Run,
        data,
        sandbox,
    };
    for message in std::iter::once(ToWorker::Plugin(Box::new(request))).chain(data_frames) {
        let frame = message.encode().map_err(|e| {
            Error::Internal(format!("cannot describe the plugin to its worker: {e}"))
        })?;
        let sent = writer.send(frame).await;
        sent.map_err(|e| Error::Internal(format!("cannot reach the plugin's worker: {e}")))?;
    }
    let mut worker = PluginWorker {
        child: guard.take(),
        pid,
        reader,
        writer,
        timeout,
        data_limit,
        said,
        cgroup,
        broken: None,
        in_call: false,
        host,
        max_message_size,
        program: program.clone(),
        _slot: slot,
    };
    let ready = async {
        loop {
            let frame = match worker.reader.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Err(failed(format!("bad frame from the worker: {err}"))),
                None => {
                    let outcome = worker.died().await;
                    return Err(ended(outcome, TaskMetrics::default()));
                }
            };
            match FromWorker::decode(&frame) {
                Ok(FromWorker::Started) => return Ok(()),
                // Instantiation ran guest code that ended, or could not
                // happen: the worker says which.
                Ok(FromWorker::Finished(finished)) => {
                    return Err(match finished.outcome {
                        Outcome::Failed { message } => failed(message),
                        outcome => ended(outcome, finished.metrics),
                    });
                }
                Ok(FromWorker::Stdout(_) | FromWorker::Stderr(_)) => {}
                Ok(_) => return Err(failed("unexpected frame from the worker".into())),
                Err(err) => return Err(failed(err.to_string())),
            }
        }
    };
    // Instantiation may run guest code under the call timeout; the
    // handshake bound covers a worker that never answers.
    let bound = timeout
        .and_then(|t| t.checked_add(GRACE))
        .map_or(HANDSHAKE_TIMEOUT, |t| t.max(HANDSHAKE_TIMEOUT));
    match tokio::time::timeout(bound, ready).await {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(err)) => Err(err),
        Err(_) => {
            worker.kill().await;
            Err(failed(
                "the plugin's worker did not get ready in time".into(),
            ))
        }
    }
}

/// A kept instance that could not be set up for a reason of Isola's.
fn failed(why: String) -> CallError {
    CallError::Start(Error::Internal(format!(
        "cannot instantiate the plugin: {why}"
    )))
}

impl PluginWorker {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) async fn call(&mut self, input: Vec<u8>) -> std::result::Result<Vec<u8>, CallError> {
        self.exchange(ToWorker::Call(input.into())).await
    }

    /// Calls an export of the kept instance by name (`name(arg, …)`,
    /// WAVE): checked here against the program first, so a wrong call
    /// leaves the instance usable.
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] for a call that does not fit the program;
    /// otherwise as [`PluginWorker::call`].
    pub(crate) async fn invoke(&mut self, call: &str) -> std::result::Result<Vec<u8>, CallError> {
        crate::invoke::check(&self.program, call).map_err(CallError::Start)?;
        self.exchange(ToWorker::Invoke(call.to_owned())).await
    }

    /// Sends a call frame and waits for its answer, serving the host calls
    /// the guest makes meanwhile.
    async fn exchange(&mut self, request: ToWorker) -> std::result::Result<Vec<u8>, CallError> {
        if self.in_call && self.broken.is_none() {
            // The caller dropped the last call while it ran: its answer
            // would come next, and the instance stopped mid-`run`.
            self.broken = Some(abandoned());
            self.kill().await;
        }
        if let Some(outcome) = &self.broken {
            return Err(unusable(outcome));
        }
        self.in_call = true;
        let started = Instant::now();
        let metrics = |started: Instant| TaskMetrics {
            run_time: started.elapsed(),
            ..Default::default()
        };
        // A call frame carries raw bytes or text: encoding it cannot fail.
        let sent = match request.encode() {
            Ok(frame) => self.writer.send(frame).await.is_ok(),
            Err(_) => false,
        };
        if !sent {
            let outcome = self.died().await;
            return Err(ended(outcome, metrics(started)));
        }
        // The worker enforces the timeout; this backstop covers one that
        // cannot (stopped, wedged).
        let backstop = self
            .timeout
            .and_then(|t| t.checked_add(GRACE))
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        // A frame read while a host call ran, handled as the next one.
        let mut carried = None;
        loop {
            let frame = match carried.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    frame = self.reader.next() => frame,
                    () = sleep_until(backstop) => {
                        return Err(self.timed_out(metrics(started)).await);
                    }
                },
            };
            let decoded = match frame {
                Some(Ok(frame)) => FromWorker::decode(&frame).map_err(|e| e.to_string()),
                Some(Err(err)) => Err(err.to_string()),
                None => {
                    let outcome = self.died().await;
                    return Err(ended(outcome, metrics(started)));
                }
            };
            match decoded {
                Ok(FromWorker::CallOutput(output)) => {
                    self.in_call = false;
                    return Ok(output.to_vec());
                }
                Ok(FromWorker::CallFailed(failure)) => {
                    self.in_call = false;
                    return Err(match *failure {
                        protocol::CallFailure::Rejected { error } => CallError::Rejected(error),
                        protocol::CallFailure::Ended { outcome, metrics } => {
                            self.broken = Some(outcome.clone());
                            ended(outcome, metrics)
                        }
                    });
                }
                Ok(FromWorker::Stdout(_) | FromWorker::Stderr(_)) => {}
                Ok(FromWorker::HostCall { function, args })
                    if crate::host_fn::call_fits(&function, args.len(), self.max_message_size) =>
                {
                    // The grants are checked here again; the worker waits,
                    // unless it ends meanwhile: then the call is dropped and
                    // its end handled.
                    let link = self.host.clone();
                    let call = link.call(function, args.to_vec(), self.max_message_size);
                    let mut call = std::pin::pin!(call);
                    let reply = loop {
                        tokio::select! {
                            result = &mut call => break Some(HostReply::of(result)),
                            () = sleep_until(backstop) => {
                                return Err(self.timed_out(metrics(started)).await);
                            }
                            frame = self.reader.next() => {
                                let output = matches!(
                                    &frame,
                                    Some(Ok(f)) if matches!(
                                        FromWorker::decode(f),
                                        Ok(FromWorker::Stdout(_) | FromWorker::Stderr(_))
                                    )
                                );
                                if !output {
                                    carried = Some(frame);
                                    break None;
                                }
                            }
                        }
                    };
                    let Some(reply) = reply else { continue };
                    let sent = match ToWorker::HostReply(reply).encode() {
                        Ok(frame) => self.writer.send(frame).await.is_ok(),
                        Err(_) => false,
                    };
                    if !sent {
                        let outcome = self.died().await;
                        return Err(ended(outcome, metrics(started)));
                    }
                }
                Ok(_) | Err(_) => {
                    self.kill().await;
                    let outcome = WorkerEnding {
                        reported: None,
                        data_limit: Some(self.data_limit),
                        protocol_error: Some("bad frame from the plugin's worker".into()),
                        stop: None,
                        status: None,
                        forbidden_syscall: None,
                        cgroup: None,
                    }
                    .into_outcome();
                    self.broken = Some(outcome.clone());
                    return Err(ended(outcome, metrics(started)));
                }
            }
        }
    }

    /// The call ran past its timeout and the worker did not stop it: kills
    /// the worker; the instance is unusable.
    async fn timed_out(&mut self, metrics: TaskMetrics) -> CallError {
        self.kill().await;
        let outcome = WorkerEnding {
            reported: None,
            data_limit: Some(self.data_limit),
            protocol_error: None,
            stop: Some(Stop::TimedOut(self.timeout.unwrap_or_default())),
            status: None,
            forbidden_syscall: None,
            cgroup: None,
        }
        .into_outcome();
        self.broken = Some(outcome.clone());
        ended(outcome, metrics)
    }

    /// The worker's pipe closed: reaps it and says how it ended.
    async fn died(&mut self) -> Outcome {
        let status = match self.child.as_mut() {
            Some(child) => reap(child, self.pid, true).await,
            None => None,
        };
        self.child = None;
        let forbidden_syscall = self.said.forbidden_syscall(status).await;
        let outcome = WorkerEnding {
            reported: None,
            data_limit: Some(self.data_limit),
            protocol_error: None,
            stop: None,
            status,
            forbidden_syscall,
            cgroup: self.cgroup.as_ref().map(WorkerGroup::events),
        }
        .into_outcome();
        self.broken = Some(outcome.clone());
        outcome
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = sys::signal_group(self.pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Drop for PluginWorker {
    fn drop(&mut self) {
        // The writer closes after this returns: end of input is the
        // worker's cue to exit. It is reaped in the background on a
        // runtime; without one, the guard reaps it here and now, so no
        // zombie is left either way.
        let cgroup = self.cgroup.take();
        let Some(child) = self.child.take() else {
            return;
        };
        let pid = self.pid;
        let mut guard = ChildGuard::new(child, pid);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(child) = guard.get_mut() {
                    reap(child, pid, false).await;
                }
                // Its cgroup goes once it is reaped.
                drop(guard);
                drop(cgroup);
            });
        }
    }
}
