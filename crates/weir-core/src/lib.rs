//! Weir's domain, free of I/O: what a job is, when it is valid, and how its tasks move.
//!
//! - [`spec`]: the job spec a client submits (YAML/JSON/protobuf all map onto it).
//! - [`validate`]: turns a spec into a [`validate::ValidJob`] or an error naming the problem.
//! - [`calendar`]: dates from day counts (for the CLI and date partitions).
//! - [`catalog`]: the queues (one per manager) and step kinds Weir knows.
//! - [`dataset`]: a batch step's config (format, schema, quality rules, sinks), sinks'
//!   schemas and their history ([`dataset::schema`]), and the contracts that reconcile an
//!   input with them ([`dataset::contract`]).
//! - [`connection`]: named connections an admin defines per namespace, referenced by jobs.
//! - [`files`]: locations, watches and the file kinds' configs; discovery events.
//! - [`api`]: the api kind's config: a resource, its pagination, records and auth.
//! - [`template`]: the five built-in workflow templates, expanded into DAGs.
//! - [`stream`]: a stream step's config (source, format, sinks, flush, bounds); in progress.
//! - [`retry`]: backoff with deterministic jitter.
//! - [`sandbox`]: what a job's steps touch outside the platform (local paths, remote
//!   endpoints) and the per-namespace policy that allows it, checked at submission.
//! - [`secret`]: one secret (a key, a CA bundle) by reference.
//! - [`quota`]: fleet-wide rate limits divided into shares over the heartbeat.
//! - [`retention`]: how long finished jobs are kept, per namespace, and the purge's sweeps.
//! - [`model`]: job, task and event records, as stored.
//! - [`audit`]: audit records of mutating and refused calls.
//! - [`events`]: the event catalogue: topics, keys, the CloudEvents envelope.
//! - [`text`]: text cut short for messages.
//! - [`json`]: one walk over JSON values that fills placeholders in their strings.
//! - [`trace`]: W3C trace context carried from a submission into every event.
//! - [`trigger`]: rules that turn an incoming event into a job.
//! - [`schedule`]: cron schedules in a time zone, their slots' jobs, overlap and catch-up.
//! - [`watermark`]: incremental collection's high-watermarks, advanced when a job succeeds.
//! - [`engine`]: the state machine the master drives; it takes `now` as an argument and
//!   returns the records it changed, so every rule is tested without a clock or a database.
//!
//! No tokio, no database, no network here: those live in `weir-store` and `weir-master`.

pub mod api;
pub mod audit;
pub mod calendar;
pub mod catalog;
pub mod connection;
pub mod dataset;
pub mod duration;
pub mod engine;
pub mod events;
pub mod files;
pub mod json;
pub mod model;
pub mod quota;
pub mod retention;
pub mod retry;
pub mod sandbox;
pub mod schedule;
pub mod secret;
pub mod spec;
pub mod stream;
pub mod template;
pub mod text;
pub mod trace;
pub mod trigger;
pub mod validate;
pub mod watermark;

/// Milliseconds since the Unix epoch: the one time unit of the engine and the stores.
pub type Millis = i64;
