//! The engine's records of one commit — new and changed jobs, deleted and upserted tasks,
//! events — in one statement: one round trip to PostgreSQL instead of one per table, which
//! is most of a chained step's latency. Each part is an `UNNEST` of arrays (empty arrays
//! write nothing) behind the epoch check, so a deposed master's statement writes nothing and
//! returns the store's epoch for the caller to refuse. Tasks already stored are updated in
//! place and only the others inserted: an `INSERT … ON CONFLICT DO UPDATE` of the same rows
//! costs PostgreSQL about 40 % more (4.0 against 2.9 ms for 200 tasks, measured here). A
//! finished job with a task still leased is marked `lingering` (recovery loads it; see
//! migration 0012). The statement reads `weir_leader` `FOR SHARE`, as a fenced transaction
//! does, so a takeover waits for it.

use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::QueryScalar;
use uuid::Uuid;
use weir_core::engine::Changes;

use super::i;
use crate::codec;

/// The statement (63 parameters: the epoch, then each part's arrays in order).
const RECORDS: &str =
    "WITH leader AS (SELECT epoch FROM weir_leader WHERE id = 1 FOR SHARE), ok AS (SELECT 1 FROM leader \
     WHERE epoch = $1), new_jobs AS (INSERT INTO weir_jobs (id, namespace, name, run_id, priority, \
     labels, spec, state, error, ending, created_ms, updated_ms, finished_ms, deadline_ms, last_seq, \
     tasks_total, tasks_succeeded, tasks_failed, tasks_running, trace_parent) SELECT id, ns, name, run, \
     prio, labels::jsonb, spec::jsonb, state, error, ending, c, u, f, d, seq, tt, ts, tf, tr, tp FROM \
     UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[], $8::text[], \
     $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[], $14::int8[], $15::int8[], \
     $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::text[]) AS t(id, ns, name, \
     run, prio, labels, spec, state, error, ending, c, u, f, d, seq, tt, ts, tf, tr, tp) WHERE EXISTS \
     (SELECT 1 FROM ok)), changed_jobs AS (UPDATE weir_jobs AS j SET state = u.state, error = u.error, \
     ending = u.ending, updated_ms = u.u, finished_ms = u.f, deadline_ms = u.d, last_seq = u.seq, \
     tasks_total = u.tt, tasks_succeeded = u.ts, tasks_failed = u.tf, tasks_running = u.tr, \
     lingering = (u.state NOT IN ('pending', 'running', 'paused', 'compensating') AND u.tr > 0) FROM \
     UNNEST($22::uuid[], $23::text[], $24::text[], $25::text[], $26::int8[], $27::int8[], $28::int8[], \
     $29::int8[], $30::int8[], $31::int8[], $32::int8[], $33::int8[]) AS u(id, state, error, ending, u, \
     f, d, seq, tt, ts, tf, tr) WHERE j.id = u.id AND EXISTS (SELECT 1 FROM ok)), deleted_tasks AS \
     (DELETE FROM weir_tasks WHERE id = ANY($34::uuid[]) AND EXISTS (SELECT 1 FROM ok)), changed_tasks AS \
     (UPDATE weir_tasks AS w SET state = t.state, attempt = t.attempt, fence = t.fence, worker = \
     t.worker, lease_expires_ms = t.lease, ready_ms = t.ready, retry_at_ms = t.retry, started_ms = \
     t.started, finished_ms = t.finished, error_kind = t.ek, error_message = t.em, output = t.output, \
     cancel_requested = t.cancel FROM UNNEST($35::uuid[], $42::text[], $43::int8[], $44::int8[], \
     $45::text[], $46::int8[], $47::int8[], $48::int8[], $49::int8[], $50::int8[], $51::text[], \
     $52::text[], $53::text[], $54::bool[]) AS t(id, state, attempt, fence, worker, lease, ready, retry, \
     started, finished, ek, em, output, cancel) WHERE w.id = t.id AND EXISTS (SELECT 1 FROM ok) \
     RETURNING w.id), new_tasks AS (INSERT INTO weir_tasks (id, job_id, step_id, kind, queue, \
     depends_on, compensates, state, attempt, fence, worker, lease_expires_ms, ready_ms, retry_at_ms, \
     started_ms, finished_ms, error_kind, error_message, output, cancel_requested) SELECT id, job_id, \
     step_id, kind, queue, deps::jsonb, comp, state, attempt, fence, worker, lease, ready, retry, \
     started, finished, ek, em, output, cancel FROM UNNEST($35::uuid[], $36::uuid[], $37::text[], \
     $38::text[], $39::text[], $40::text[], $41::text[], $42::text[], $43::int8[], $44::int8[], \
     $45::text[], $46::int8[], $47::int8[], $48::int8[], $49::int8[], $50::int8[], $51::text[], \
     $52::text[], $53::text[], $54::bool[]) AS t(id, job_id, step_id, kind, queue, deps, comp, state, \
     attempt, fence, worker, lease, ready, retry, started, finished, ek, em, output, cancel) WHERE \
     EXISTS (SELECT 1 FROM ok) AND t.id NOT IN (SELECT id FROM changed_tasks)), events AS (INSERT INTO \
     weir_events (job_id, seq, type, time_ms, task_id, step_id, job_state, task_state, message) SELECT * \
     FROM UNNEST($55::uuid[], $56::int8[], $57::text[], $58::int8[], $59::uuid[], $60::text[], \
     $61::text[], $62::text[], $63::text[]) WHERE EXISTS (SELECT 1 FROM ok)) SELECT epoch FROM leader";

/// The statement with `c`'s records bound; it returns the store's current epoch.
pub(super) fn records<'q>(epoch: i64, c: &'q Changes) -> QueryScalar<'q, Postgres, i64, PgArguments> {
    sqlx::query_scalar(RECORDS)
        .bind(epoch)
        .bind(c.new_jobs.iter().map(|j| j.id).collect::<Vec<Uuid>>())
        .bind(c.new_jobs.iter().map(|j| j.spec.namespace.clone()).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.spec.name.clone()).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.spec.run_id.clone()).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i64::from(j.spec.priority)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(codec::labels_json).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(codec::spec_json).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.state.as_str()).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.error.clone()).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.ending.map(|e| e.as_str())).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.created_ms).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.updated_ms).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.finished_ms).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.deadline_ms).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i(j.last_seq)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i64::from(j.counts.total)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i64::from(j.counts.succeeded)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i64::from(j.counts.failed)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| i64::from(j.counts.running)).collect::<Vec<_>>())
        .bind(c.new_jobs.iter().map(|j| j.trace_parent.clone()).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.id).collect::<Vec<Uuid>>())
        .bind(c.jobs.iter().map(|j| j.state.as_str()).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.error.clone()).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.ending.map(|e| e.as_str())).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.updated_ms).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.finished_ms).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| j.deadline_ms).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| i(j.last_seq)).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| i64::from(j.counts.total)).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| i64::from(j.counts.succeeded)).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| i64::from(j.counts.failed)).collect::<Vec<_>>())
        .bind(c.jobs.iter().map(|j| i64::from(j.counts.running)).collect::<Vec<_>>())
        .bind(&c.deleted_tasks)
        .bind(c.tasks.iter().map(|t| t.id).collect::<Vec<Uuid>>())
        .bind(c.tasks.iter().map(|t| t.job_id).collect::<Vec<Uuid>>())
        .bind(c.tasks.iter().map(|t| t.step_id.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.kind.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.queue.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(codec::deps_json).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.compensates.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.state.as_str()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| i64::from(t.attempt)).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| i(t.fence)).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.worker.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.lease_expires_ms).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.ready_ms).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.retry_at_ms).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.started_ms).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.finished_ms).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.error_kind.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.error_message.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.output.clone()).collect::<Vec<_>>())
        .bind(c.tasks.iter().map(|t| t.cancel_requested).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.job_id).collect::<Vec<Uuid>>())
        .bind(c.events.iter().map(|e| i(e.seq)).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.time_ms).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.task_id).collect::<Vec<Option<Uuid>>>())
        .bind(c.events.iter().map(|e| e.step_id.clone()).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.job_state.as_str()).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.task_state.map(|s| s.as_str())).collect::<Vec<_>>())
        .bind(c.events.iter().map(|e| e.message.clone()).collect::<Vec<_>>())
}
