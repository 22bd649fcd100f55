//! What the parent and its worker processes share: the framed wire
//! protocol ([`protocol`]) and the OS calls both sides make ([`sys`]:
//! rlimits, parent-death signal, process-group kills).

pub(crate) mod protocol;
pub(crate) mod sandbox;
pub(crate) mod sys;
