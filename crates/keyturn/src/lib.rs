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
//! - [`printer`], [`report`]: the one place output is produced;
//! - [`audit`]: the access-key audit rules, sources and output formats;
//! - [`fleet`]: fleet runs: the policy file, the pure fleet planner, the report;
//! - [`usage`]: who uses an access key, from CloudTrail management events;
//! - [`commands`]: one module per subcommand.

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
pub mod model;
pub mod plan;
pub mod printer;
pub mod remote;
pub mod report;
pub mod secret;
pub mod serve;
pub mod sink;
pub mod usage;
pub mod verify;

pub use error::{Error, Result};
