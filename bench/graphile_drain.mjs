// graphile-worker draining a queue of no-op jobs: the same figures weir-bench prints for Weir.
//
//   node bench/graphile_drain.mjs --jobs 100000 \
//       --database-url postgres://root@127.0.0.1:5432/test [--schema graphile_bench_x]
//
// In a PostgreSQL schema of its own (created fresh, dropped at the end) it queues --jobs no-op
// jobs with addJobs (10,000 a call, then VACUUM ANALYZE; not timed), then times a worker
// (graphile's runner, in this process) from its start until every job is done (the task counts
// them, then graphile's jobs table must be empty), twice: batched, with the settings of
// graphile's performance page (local queue of 500, completeJobBatchDelay and
// failJobBatchDelay 0), then unbatched (their defaults). Both use concurrentJobs 24 and a pool
// of 25 connections, as that page does (no-op jobs wait on PostgreSQL, not on a core, so the
// concurrency does not follow the core count). Success logs are off (NO_LOG_SUCCESS); only
// warnings and errors go to stderr. graphile-worker 0.18 asks for Node.js 22.18+ (npm warns);
// given its tasks as a list, as here, it runs on Node.js 20.
//
// Packages come from $WEIR_BENCH_NODE (default ~/.cache/weir/bench-node), which
// scripts/ensure-bench-node.sh fills. Prints `name=value unit` lines only on stdout.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    jobs: { type: 'string', default: '100000' },
    'database-url': { type: 'string', default: process.env.DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/test' },
    schema: { type: 'string', default: `graphile_bench_${Math.random().toString(36).slice(2, 10)}` },
    'timeout-secs': { type: 'string', default: '1200' },
  },
});
const jobs = Number(opt.jobs);
const schema = opt.schema;
const connectionString = opt['database-url'];
const CONCURRENCY = 24;
const POOL = CONCURRENCY + 1;
const BATCHED = { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 };

const fail = (msg) => {
  console.error(`graphile_drain: ${msg}`);
  process.exit(1);
};
if (!Number.isInteger(jobs) || jobs < 1) fail(`--jobs must be a positive integer, not ${opt.jobs}`);
if (!/^[a-z_][a-z0-9_]*$/.test(schema)) fail(`--schema must be a plain lower-case identifier, not ${schema}`);
// Never hang: the whole run, set-up and clean-up included, has a deadline.
setTimeout(() => fail(`gave up after ${opt['timeout-secs']} s (schema ${schema} may be left)`), Number(opt['timeout-secs']) * 1000).unref();

const dir = process.env.WEIR_BENCH_NODE ?? join(homedir(), '.cache/weir/bench-node');
const req = createRequire(join(dir, 'package.json'));
process.env.NO_LOG_SUCCESS = '1'; // read when graphile-worker loads
let gw, pg, version;
try {
  gw = await import(pathToFileURL(req.resolve('graphile-worker')).href);
  pg = req('pg');
  version = JSON.parse(readFileSync(join(dir, 'node_modules/graphile-worker/package.json'), 'utf8')).version;
} catch (e) {
  fail(`cannot load graphile-worker from ${dir} (run scripts/ensure-bench-node.sh): ${e.message}`);
}
const logger = new gw.Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`graphile-worker ${level}: ${message}`);
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const db = new pg.Pool({ connectionString, max: 2 });
const pendingJobs = async () =>
  Number((await db.query(`SELECT count(*) AS n FROM "${schema}"._private_jobs`)).rows[0].n);

async function queue(utils) {
  for (let i = 0; i < jobs; i += 10_000) {
    const n = Math.min(10_000, jobs - i);
    await utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: 'noop', payload: { i: i + k } })));
  }
  if ((await pendingJobs()) !== jobs) throw new Error(`queued ${await pendingJobs()} jobs, not ${jobs}`);
  // Both drains start alike: no dead rows left by the one before, fresh planner statistics.
  await db.query(`VACUUM ANALYZE "${schema}"._private_jobs`);
}

/** Jobs per second for one worker draining `jobs` queued jobs. */
async function drain(utils, preset) {
  await queue(utils);
  let done = 0;
  let allDone;
  const finished = new Promise((r) => (allDone = r));
  const taskList = { noop: async () => void (++done === jobs && allDone()) };
  const t0 = performance.now();
  const runner = await gw.run({
    connectionString, schema, concurrency: CONCURRENCY, maxPoolSize: POOL, taskList, logger,
    noHandleSignals: true, preset: { worker: preset },
  });
  try {
    await finished;
    // Done means gone from the jobs table (batched completions land a little later).
    while ((await pendingJobs()) > 0) await sleep(5);
    return jobs / ((performance.now() - t0) / 1000);
  } finally {
    await runner.stop();
  }
}

let created = false;
try {
  const exists = await db.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
  if (exists.rowCount) throw new Error(`schema ${schema} already exists; give a fresh --schema`);
  created = true;
  const utils = await gw.makeWorkerUtils({ connectionString, schema, logger });
  try {
    await utils.migrate();
    const batched = await drain(utils, BATCHED);
    const unbatched = await drain(utils, {});
    console.log(`graphile_worker_version=${version}`);
    console.log(`graphile_worker_batched_jobs_per_sec=${batched.toFixed(0)} jobs/s`);
    console.log(`graphile_worker_unbatched_jobs_per_sec=${unbatched.toFixed(0)} jobs/s`);
    console.log(`graphile_worker_concurrency=${CONCURRENCY} jobs`);
  } finally {
    await utils.release();
  }
} catch (e) {
  console.error(`graphile_drain: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  if (created) await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch((e) => console.error(`graphile_drain: dropping ${schema}: ${e.message}`));
  await db.end();
}
