// graphile-worker's cron against Weir's schedules: the same figures `weir-bench schedules`
// prints for Weir.
//
//   node bench/graphile_cron.mjs --schedules 10000 --minutes 3 \
//       --database-url postgres://root@127.0.0.1:5432/test [--schema graphile_cron_x]
//
// In a PostgreSQL schema of its own (created fresh, dropped at the end) a runner in this
// process gets --schedules crontab items `* * * * *` (one task identifier each, no backfill)
// and a no-op task. For --minutes whole minutes from the next boundary, each job's task
// records its `created_at` minus its `_cron.ts` (the slot): slot-to-job-created p50/p99/max,
// the jobs against the slots, and this process's CPU over those minutes as a share of one
// core. Runner settings as in bench/graphile_drain.mjs (batched, concurrentJobs 24).
//
// Packages come from $WEIR_BENCH_NODE (default ~/.cache/weir/bench-node), which
// scripts/ensure-bench-node.sh fills. Prints `name=value unit` lines only on stdout.
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    schedules: { type: 'string', default: '10000' },
    minutes: { type: 'string', default: '3' },
    'database-url': { type: 'string', default: process.env.DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/test' },
    schema: { type: 'string', default: `graphile_cron_${Math.random().toString(36).slice(2, 10)}` },
  },
});
const schedules = Number(opt.schedules);
const minutes = Number(opt.minutes);
const schema = opt.schema;
const connectionString = opt['database-url'];
const CONCURRENCY = 24;

const fail = (msg) => {
  console.error(`graphile_cron: ${msg}`);
  process.exit(1);
};
if (!Number.isInteger(schedules) || schedules < 1) fail(`--schedules must be a positive integer, not ${opt.schedules}`);
if (!Number.isInteger(minutes) || minutes < 1) fail(`--minutes must be a positive integer, not ${opt.minutes}`);
if (!/^[a-z_][a-z0-9_]*$/.test(schema)) fail(`--schema must be a plain lower-case identifier, not ${schema}`);
setTimeout(() => fail(`gave up (schema ${schema} may be left)`), (minutes + 5) * 60_000).unref();

const dir = process.env.WEIR_BENCH_NODE ?? join(homedir(), '.cache/weir/bench-node');
const req = createRequire(join(dir, 'package.json'));
process.env.NO_LOG_SUCCESS = '1';
let gw, pg;
try {
  gw = await import(pathToFileURL(req.resolve('graphile-worker')).href);
  pg = req('pg');
} catch (e) {
  fail(`cannot load graphile-worker from ${dir} (run scripts/ensure-bench-node.sh): ${e.message}`);
}
const logger = new gw.Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') console.error(`graphile-worker ${level}: ${message}`);
});
const sleepUntil = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms - Date.now())));
const MINUTE = 60_000;
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];

const db = new pg.Pool({ connectionString, max: 2 });
let created = false;
try {
  const exists = await db.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
  if (exists.rowCount) throw new Error(`schema ${schema} already exists; give a fresh --schema`);
  created = true;
  const items = gw.parseCronItems(
    Array.from({ length: schedules }, (_, i) => ({
      task: 'noop', match: '* * * * *', identifier: `s${i}`, options: { backfillPeriod: 0 },
    })),
  );
  const first = (Math.floor(Date.now() / MINUTE) + 1) * MINUTE;
  const last = first + (minutes - 1) * MINUTE;
  const latencies = [];
  const perSlot = new Map();
  const taskList = {
    noop: async (payload, helpers) => {
      const slot = Date.parse(payload._cron.ts);
      if (slot < first || slot > last) return;
      latencies.push(new Date(helpers.job.created_at).getTime() - slot);
      perSlot.set(slot, (perSlot.get(slot) ?? 0) + 1);
    },
  };
  const runner = await gw.run({
    connectionString, schema, concurrency: CONCURRENCY, maxPoolSize: CONCURRENCY + 1, taskList, logger,
    parsedCronItems: items, noHandleSignals: true,
    preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
  });
  try {
    await sleepUntil(first - 1000);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await sleepUntil(last + 30_000);
    const cpu = process.cpuUsage(cpu0);
    const wall = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    const expected = schedules * minutes;
    console.log(`graphile_cron_jobs=${latencies.length} jobs`);
    if (latencies.length !== expected || [...perSlot.values()].some((n) => n !== schedules)) {
      throw new Error(`${latencies.length} jobs for ${expected} slots`);
    }
    console.log(`graphile_cron_slot_to_job_created_p50=${percentile(latencies, 0.5).toFixed(0)} ms`);
    console.log(`graphile_cron_slot_to_job_created_p99=${percentile(latencies, 0.99).toFixed(0)} ms`);
    console.log(`graphile_cron_slot_to_job_created_max=${latencies[latencies.length - 1].toFixed(0)} ms`);
    console.log(`graphile_cron_worker_cpu=${(((cpu.user + cpu.system) / 1e6 / wall) * 100).toFixed(1)} %`);
  } finally {
    await runner.stop();
  }
} catch (e) {
  console.error(`graphile_cron: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  if (created) await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch((e) => console.error(`graphile_cron: dropping ${schema}: ${e.message}`));
  await db.end();
}
