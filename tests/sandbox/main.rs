//! The sandbox under attack: the hostile-guest matrix beyond `tests/all`,
//! faults from outside (signals to workers, a broken compile cache, a
//! config file rewritten while read) and fuzzing of the config parser, the
//! spec translation and both IPC decoders.
//!
//! A test binary of its own, so its many worker processes, pipes and
//! temporary runners never overlap with `tests/all`'s checks that count
//! this process's file descriptors and children (cargo runs test binaries
//! one after another). The scenarios live in `isola_tests::{matrix,
//! faults}`, shared with the `make reliability` report.

mod faults;
mod fuzz;
mod matrix;
