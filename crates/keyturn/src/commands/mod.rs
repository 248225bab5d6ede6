//! One module per subcommand, each exposing one async function that takes validated
//! settings and a [`crate::printer::Printer`] and returns the process exit code.

pub mod audit;
pub mod config_check;
pub mod history;
pub mod policy;
pub mod resume;
pub mod rollback;
pub mod rotate;
pub mod run;
