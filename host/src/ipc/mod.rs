//! What the parent and its worker processes share: the framed wire
//! protocol ([`protocol`]) and the OS calls both sides make ([`sys`]:
//! rlimits, parent-death signal, process-group kills); the worker's OS
//! sandbox ([`sandbox`]) and the cgroups its parent puts it in
//! ([`cgroup`]).

pub(crate) mod cgroup;
pub(crate) mod protocol;
pub(crate) mod sandbox;
pub(crate) mod sys;
