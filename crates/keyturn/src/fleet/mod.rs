//! Fleet runs: keep every selected access key of every account within a declared
//! policy, one lifecycle step per run, so running `keyturn run` daily is the schedule.
//!
//! This module holds the pure heart of fleet runs, each part unit-tested on its own:
//!
//! - [`policy`]: the `[policy]`, `[[accounts]]` and `[[rotations]]` tables of the settings
//!   file, validated and resolved into a [`policy::FleetPolicy`] whose
//!   [`policy::EffectiveRotation`]s carry every value already resolved;
//! - [`select`]: which rotation block applies to an IAM user of an account (the first
//!   block that selects it);
//! - [`history`]: what the journal knows about an (account, user): the keys keyturn
//!   created and deactivated, an open run, the first sighting of a new key in use;
//! - [`planner`]: (user facts, effective rotation, now) -> one decision: rotate, retire,
//!   delete, wait, ok, needs-attention or resume;
//! - [`report`]: the fleet run's report (JSON schema version 1), its summary table and
//!   its exit code.
//!
//! The runner that executes the decisions (engine, sinks, concurrency, canary, failure
//! budget) builds on these; `docs/fleet.md` documents the policy file, the lifecycle and
//! the report schema.

pub mod history;
pub mod planner;
pub mod policy;
pub mod report;
pub mod runner;
pub mod select;
