// Restate running chains of durable steps: the same figures weir-bench prints for Weir's
// chained jobs (`weir-bench limits`).
//
//   node bench/restate_chain.mjs --steps 100 --latency-jobs 5 --concurrency 1,10,1000
//
// It starts the restate-server binary of the npm install on free loopback ports (ingress, admin
// and node-to-node, none of Restate's defaults) with its data in a fresh temp dir, and, in this
// process, an SDK endpoint (HTTP/2, free port) with one service `chain` whose handler runs
// --steps sequential `ctx.run` no-op steps, each returning (so journaling) the time its closure
// ran. The deployment is registered with the admin API; then, through the ingress HTTP API:
//   1. step-to-step latency: --latency-jobs chains one after another, p50/p99 of the gaps
//      between consecutive steps' timestamps;
//   2. throughput: for each C of --concurrency, C chains at once (each its own invocation of
//      the stateless service, so they all run in parallel): steps/s until all have returned,
//      and the server's CPU (utime+stime from /proc/<pid>/stat) over that time.
// Restate keeps its default settings (the same as its --production profile but for
// auto-provisioning): a single node with all roles, 24 partitions, the replicated loglet on the
// local log-server with RocksDB's WAL fsync on, so each ctx.run result is durable before the
// handler goes on. Only telemetry is turned off, and logs go to a file in the temp dir.
//
// Packages come from $WEIR_BENCH_NODE (default ~/.cache/weir/bench-node), which
// scripts/ensure-bench-node.sh fills. Prints `name=value unit` lines only on stdout; anything
// else, and the server's log tail on failure, goes to stderr. Exits non-zero on any failure and
// gives up after --timeout-secs (default 1800).
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { createServer as createHttp2Server } from 'node:http2';
import { createServer as createNetServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    steps: { type: 'string', default: '100' },
    'latency-jobs': { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '1,10,1000' },
    'timeout-secs': { type: 'string', default: '1800' },
  },
});
const steps = Number(opt.steps);
const latencyJobs = Number(opt['latency-jobs']);
const concurrency = opt.concurrency.split(',').map(Number);
const positive = (n) => Number.isInteger(n) && n > 0;
if (!positive(steps) || steps < 2 || !positive(latencyJobs) || !concurrency.every(positive)) {
  console.error('restate_chain: --steps (at least 2), --latency-jobs and --concurrency must be positive integers');
  process.exit(2);
}

// The SDK calls Promise.withResolvers (Node.js 22); Node.js 20 gets the standard one-liner.
Promise.withResolvers ??= function () {
  let resolve, reject;
  const promise = new this((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
};

const dir = process.env.WEIR_BENCH_NODE ?? join(homedir(), '.cache/weir/bench-node');
const req = createRequire(join(dir, 'package.json'));
let restate, binary;
try {
  restate = req('@restatedev/restate-sdk');
  binary = req.resolve(`@restatedev/restate-server-${process.platform}-${process.arch}/bin/restate-server`);
} catch (e) {
  console.error(`restate_chain: cannot load Restate from ${dir} (run scripts/ensure-bench-node.sh): ${e.message}`);
  process.exit(1);
}

const data = mkdtempSync(join(tmpdir(), 'weir-restate-'));
let server; // the restate-server child process
let endpoint; // the SDK's HTTP/2 server
let stopping = false; // set once the server's exit is expected
const sessions = new Set();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let serverExited = Promise.resolve();
const alive = () => server && server.exitCode === null && server.signalCode === null;
/** Stops the server with `signal` (SIGKILL after 15 s), waits for it, removes its data. */
async function stopAll(signal) {
  stopping = true;
  for (const s of sessions) s.destroy();
  endpoint?.close();
  if (alive()) {
    server.kill(signal);
    if ((await Promise.race([serverExited, sleep(15_000).then(() => 'late')])) === 'late') {
      console.error(`restate_chain: restate-server ignored ${signal} for 15 s; killing it`);
      server.kill('SIGKILL');
      await Promise.race([serverExited, sleep(5_000)]);
    }
  }
  rmSync(data, { recursive: true, force: true });
}
process.on('exit', () => {
  if (alive()) server.kill('SIGKILL');
  rmSync(data, { recursive: true, force: true });
});
let dying = false;
async function die(msg) {
  if (dying) return new Promise(() => {}); // the first failure is on its way out
  dying = true;
  console.error(`restate_chain: ${msg}`);
  try {
    const log = readFileSync(join(data, 'server.log'), 'utf8').split('\n').slice(-30).join('\n');
    console.error(`restate-server log (last lines):\n${log}`);
  } catch {}
  await stopAll('SIGKILL');
  process.exit(1);
}
/** Prints one `name=value unit` line (none once a failure is on its way out). */
const print = (line) => dying || console.log(line);
setTimeout(() => die(`gave up after ${opt['timeout-secs']} s`), Number(opt['timeout-secs']) * 1000).unref();
process.on('SIGINT', () => die('interrupted'));
process.on('SIGTERM', () => die('terminated'));

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = createNetServer().once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
const ticksPerSec = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString()) || 100;
  } catch {
    return 100;
  }
})();
/** CPU seconds (user + system) the process has used so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / ticksPerSec;
}
// node:http rather than fetch, whose 300 s header timeout a 1,000-chain run could outlast.
const agent = new Agent({ keepAlive: true, maxSockets: Infinity });
/** POSTs JSON; resolves with the status and body; a timeout of 0 means none. */
const post = (url, body, timeoutMs = 0) =>
  new Promise((resolve, reject) => {
    const r = request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d) => (text += d)).on('end', () => resolve({ status: res.statusCode, body: text }));
    });
    r.on('error', reject);
    if (timeoutMs) r.setTimeout(timeoutMs, () => r.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    r.end(body);
  });
const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * p))];

async function main() {
  const [ingressPort, adminPort, nodePort] = [await freePort(), await freePort(), await freePort()];
  const ingress = `http://127.0.0.1:${ingressPort}`;
  const admin = `http://127.0.0.1:${adminPort}`;

  // The service: sequential durable steps, each returning the time its closure ran.
  const chain = restate.service({
    name: 'chain',
    handlers: {
      run: async (ctx, n) => {
        const times = [];
        for (let i = 0; i < n; i++) times.push(await ctx.run(`s${i}`, () => performance.now()));
        return times;
      },
    },
  });
  // The SDK logs each invocation at INFO on stdout: only its warnings and errors, on stderr.
  const logger = (meta, message, ...rest) => {
    if (meta.level === 'warn' || meta.level === 'error') console.error(`[restate-sdk ${meta.level}]`, message, ...rest);
  };
  endpoint = createHttp2Server(restate.createEndpointHandler({ services: [chain], logger }));
  endpoint.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  await new Promise((resolve, reject) => endpoint.once('error', reject).listen(0, '127.0.0.1', resolve));
  const endpointUrl = `http://127.0.0.1:${endpoint.address().port}`;

  const log = openSync(join(data, 'server.log'), 'a');
  server = spawn(binary, ['--base-dir', data, '--node-name', 'bench', '--no-logo', '--listen-mode', 'tcp', '--log-disable-ansi-codes', 'true'], {
    env: {
      ...process.env,
      RESTATE_BIND_ADDRESS: `127.0.0.1:${nodePort}`,
      RESTATE_ADVERTISED_ADDRESS: `http://127.0.0.1:${nodePort}/`,
      RESTATE_INGRESS__BIND_ADDRESS: `127.0.0.1:${ingressPort}`,
      RESTATE_ADMIN__BIND_ADDRESS: `127.0.0.1:${adminPort}`,
      RESTATE_DISABLE_TELEMETRY: 'true',
    },
    stdio: ['ignore', log, log],
  });
  serverExited = new Promise((r) => server.once('exit', r));
  server.on('exit', (code, signal) => {
    if (!stopping) die(`restate-server exited early (${signal ?? `code ${code}`})`);
  });

  // Healthy: the admin API and the ingress both answer.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ok = await Promise.all([`${admin}/health`, `${ingress}/restate/health`].map((u) => fetch(u, { signal: AbortSignal.timeout(2_000) }).then((r) => r.ok, () => false)));
    if (ok.every(Boolean)) break;
    if (Date.now() > deadline) throw new Error('restate-server not healthy within 60 s');
    await sleep(100);
  }
  const { version } = await (await fetch(`${admin}/version`, { signal: AbortSignal.timeout(10_000) })).json();
  print(`restate_version=${version}`);

  const reg = await post(`${admin}/deployments`, JSON.stringify({ uri: endpointUrl }), 30_000);
  if (reg.status !== 201 && reg.status !== 200) throw new Error(`registering ${endpointUrl}: HTTP ${reg.status} ${reg.body}`);

  /** One chain of `n` steps through the ingress, waiting for its result: the step times. */
  const invoke = async (n, timeoutMs) => {
    const { status, body } = await post(`${ingress}/chain/run`, JSON.stringify(n), timeoutMs);
    if (status !== 200) throw new Error(`invoking chain/run: HTTP ${status} ${body}`);
    const times = JSON.parse(body);
    if (!Array.isArray(times) || times.length !== n) throw new Error(`chain/run returned ${body.slice(0, 200)}`);
    return times;
  };
  // Until the ingress knows the new service (not measured).
  for (let warm = Date.now() + 30_000; ; await sleep(200)) {
    try {
      await invoke(2, 5_000);
      break;
    } catch (e) {
      if (Date.now() > warm) throw new Error(`the chain service did not answer within 30 s: ${e.message}`);
    }
  }

  const gaps = [];
  for (let j = 0; j < latencyJobs; j++) {
    const times = await invoke(steps);
    for (let i = 1; i < times.length; i++) gaps.push(times[i] - times[i - 1]);
  }
  gaps.sort((a, b) => a - b);
  print(`restate_step_to_step_p50=${percentile(gaps, 0.5).toFixed(2)} ms`);
  print(`restate_step_to_step_p99=${percentile(gaps, 0.99).toFixed(2)} ms`);

  for (const c of concurrency) {
    const cpu0 = cpuSeconds(server.pid);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: c }, () => invoke(steps)));
    const secs = (performance.now() - t0) / 1000;
    const cpu = cpuSeconds(server.pid) - cpu0;
    print(`restate_chain_${c}_jobs_steps_per_sec=${((c * steps) / secs).toFixed(0)} steps/s`);
    print(`restate_server_cpu_${c}_jobs=${((cpu / secs) * 100).toFixed(0)} % of a core`);
  }
}

try {
  await main();
} catch (e) {
  await die(e.stack ?? String(e));
}
if (!dying) {
  // A graceful stop (the server flushes and exits in well under a second), then the temp dir.
  await stopAll('SIGTERM');
  process.exit(0); // idle keep-alive connections would hold the loop a while
}
