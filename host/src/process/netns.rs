//! The network namespace a parent's sandboxed workers share.
//!
//! A fresh network namespace costs the kernel about 0.5 ms to make, a
//! fifth of a cold process task's start. So only a runner's first
//! sandboxed worker makes one (inside a user namespace of its own when the
//! parent is not privileged), as it starts; the runner's process backend
//! then keeps descriptors of that worker's namespaces, and every later
//! worker joins them at its start through `/proc/<parent>/fd/N` (two
//! `setns` calls, see `ipc::sandbox::join_network_namespace`). The
//! namespaces live until the runner is dropped, whatever becomes of the
//! worker that made them.
//!
//! Sharing is safe for what the layer is for: the namespace has only a
//! loopback interface, which is down, and the workers that join it hold no
//! capability in it, so none can bring it up. Workers could still reach one
//! another's sockets in it if their seccomp filter let them make sockets,
//! which it does not.

use std::fs::File;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::OnceLock;

use crate::ipc::protocol::NETNS_ENV;

/// The namespaces the first sandboxed worker made.
struct Held {
    /// Its user namespace, if it needed one of its own.
    user: Option<OwnedFd>,
    net: OwnedFd,
}

/// A runner's shared network namespace, once a worker made it.
#[derive(Default)]
pub(crate) struct SharedNamespace {
    held: OnceLock<Held>,
}

impl SharedNamespace {
    /// Tells a sandboxed worker about to start where its network namespace
    /// comes from: [`NETNS_ENV`] is `join:PID:USER:NET` (descriptors of
    /// this process, `USER` empty when there is no user namespace to join)
    /// once a worker made one, else `new`.
    pub(crate) fn name_to(&self, command: &mut tokio::process::Command) {
        let value = match self.held.get() {
            Some(held) => format!(
                "join:{}:{}:{}",
                std::process::id(),
                held.user
                    .as_ref()
                    .map(|fd| fd.as_raw_fd().to_string())
                    .unwrap_or_default(),
                held.net.as_raw_fd()
            ),
            None => "new".to_owned(),
        };
        command.env(NETNS_ENV, value);
    }

    /// After the handshake of a worker that was told `new`: keeps
    /// descriptors of the namespaces it made (it makes them before it
    /// answers), unless another worker's are kept already. A worker whose
    /// namespace is this process's own (it could not make one) is not
    /// adopted.
    pub(crate) fn adopt(&self, worker: u32) {
        if self.held.get().is_some() {
            return;
        }
        let link =
            |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        let pid = worker.to_string();
        let (Some(own_net), Some(its_net)) = (link("self", "net"), link(&pid, "net")) else {
            return;
        };
        if own_net == its_net {
            return;
        }
        let open = |kind: &str| File::open(format!("/proc/{pid}/ns/{kind}")).map(OwnedFd::from);
        let Ok(net) = open("net") else { return };
        let user = if link("self", "user") == link(&pid, "user") {
            None
        } else {
            match open("user") {
                Ok(fd) => Some(fd),
                Err(_) => return,
            }
        };
        // The worker may have ended and its pid been reused between the
        // check and the opens: keep the namespace only if it is still not
        // ours.
        if std::fs::read_link(format!("/proc/self/fd/{}", net.as_raw_fd())).ok() == Some(own_net) {
            return;
        }
        let _ = self.held.set(Held { user, net });
    }
}
