//! keyturn: safe rotation of AWS IAM user access keys.
//!
//! All of keyturn's logic lives in this library; the `keyturn` CLI and the Lambda
//! handler are thin shims over [`commands`]. The layers, from pure to effectful:
//!
//! - [`model`], [`plan`]: key inventories and the pure rotation planner;
//! - [`verify`], [`engine`]: proving a new key and executing a plan step by step;
//! - [`aws`], [`remote`]: the AWS calls behind a trait, and how to reach AWS;
//! - [`access`]: which accounts to work in and as whom (profiles, roles,
//!   Organizations, refreshing role credentials), shared by audit and fleet runs;
//! - [`journal`]: the durable record that makes rotations resumable;
//! - [`outcome`]: how a run ends (journal status, report, exit code), shared by
//!   `rotate`, `resume` and fleet runs;
//! - [`profile_chain`], [`mfa`]: which profile's key a self-rotation rotates, and
//!   the MFA session it signs IAM calls with;
//! - [`printer`], [`report`]: the one place output is produced;
//! - [`audit`]: the access-key audit rules, sources and output formats;
//! - [`fleet`]: fleet runs: the policy file, the pure fleet planner, the report;
//! - [`privilege`]: the least-privilege IAM policy of a configuration;
//! - [`usage`]: who uses an access key, from CloudTrail management events;
//! - [`validate`]: the local checks of user names, paths, profile names and run ids
//!   made before any AWS call;
//! - [`commands`]: one module per subcommand;
//! - [`lambda`]: the `keyturn-lambda` function's event shapes and handlers.

pub mod access;
pub mod audit;
pub mod aws;
pub mod commands;
pub mod config;
pub mod credfile;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(test)]
pub(crate) mod fake;
pub mod fleet;
pub mod journal;
pub mod lambda;
pub mod mfa;
pub mod model;
pub mod outcome;
pub mod plan;
pub mod printer;
pub mod privilege;
pub mod profile_chain;
pub mod remote;
pub mod report;
pub mod secret;
pub mod serve;
pub mod sink;
pub mod usage;
pub mod validate;
pub mod verify;

pub use error::{Error, Result};
