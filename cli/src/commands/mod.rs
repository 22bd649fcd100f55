//! One module per subcommand.

pub mod call;
pub mod check;
pub mod common;
pub mod run;
pub mod up;
pub mod worker;
