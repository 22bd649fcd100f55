//! Isola's integration tests: one binary, one module per area. Tests drive
//! the library and the real `isola` binary on the guests in `guests/`
//! (built by `make guests`).

mod abi;
mod bad_input;
mod cache;
mod cli;
mod cluster;
mod guest_faults;
mod host_functions;
mod hostile;
mod hostile_probe;
mod invoke;
mod library;
mod messages;
mod observe;
mod os_sandbox;
mod pipeline;
mod probe_more;
mod process;
mod runtime_core;
mod shared;
mod taskset;
