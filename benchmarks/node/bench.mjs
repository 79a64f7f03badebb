// BullMQ peer for benchmarks/run.py: the same workload as benchmarks/peers/harness.py,
// writing the same files (result.json, started.json, drain.json, latency.json,
// progress.json) in the same shapes.
//
//   node bench.mjs driver --url=redis://127.0.0.1:6379/8 --workdir=DIR --jobs=20000 \
//        --batch-size=1000 --concurrency=10 --latency-jobs=200 --interval=0.02 \
//        --budget=150 --latency-reserve=20 [--suite=bullmq] [--peer=bullmq_keep1000]
//   node bench.mjs worker --url=... --workdir=DIR --drain=N --latency=M --concurrency=10 \
//        [--keep-completed=1000]
//
// The peer `bullmq` runs BullMQ's defaults; `bullmq_keep1000` (the bullmq suite) sets
// the worker's removeOnComplete to {count: 1000}, the retention conveyor has by default,
// so that every completion also deletes the oldest completed job, as conveyor's do.
//
// Times are seconds as floats from process.hrtime (CLOCK_MONOTONIC), which is one clock
// for every process on the machine, so the driver's and the worker's stamps compare.
// (performance.timeOrigin + performance.now() does not: each process's timeOrigin can
// be a few ms off, which made latencies come out negative.) All the stamps of the Node
// peer come from this clock; run.py only ever subtracts stamps of the same peer.

import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const require = createRequire(import.meta.url);
const QUEUE = 'bench';
const MARKER = 'conveyor-bench:owner';
// completed jobs the `bullmq_keep1000` peer keeps (conveyor's keep_completed default)
const KEEP_PEERS = { bullmq_keep1000: 1000 };

const now = () => Number(process.hrtime.bigint()) / 1e9;
const monotonic = now;

function parseArgs(argv) {
  const args = {};
  for (const arg of argv) {
    const match = /^--([^=]+)=(.*)$/.exec(arg);
    if (!match) throw new Error(`bad argument ${arg} (expected --name=value)`);
    args[match[1]] = match[2];
  }
  return args;
}

function connectionOf(url) {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    db: Number(parsed.pathname.replace('/', '') || 0),
  };
}

function writeJson(path, data) {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(data));
  renameSync(tmp, path);
}

function readJson(path) {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch {
    return null;
  }
}

function versions() {
  const own = (name) => require(`${name}/package.json`).version;
  return { bullmq: own('bullmq'), ioredis: own('ioredis'), node: process.versions.node };
}

function percentile(sorted, q) {
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1];
}

// ------------------------------------------------------------------------------- worker

async function runWorker(args) {
  const dir = args.workdir;
  const drainTarget = Number(args.drain);
  const latencyTarget = Number(args.latency);
  let done = 0;
  let firstStart = null;
  const latencies = [];

  const processor = async (job) => {
    const start = now();
    const t = job.data.t;
    if (t === 0) {
      done += 1;
      if (done === 1) firstStart = start;
      if (done === drainTarget) {
        writeJson(join(dir, 'drain.json'), { first_start: firstStart, last: now(), count: done });
      }
      return;
    }
    latencies.push(start - t);
    if (latencies.length === latencyTarget) writeJson(join(dir, 'latency.json'), latencies);
  };

  let reported = '';
  const progress = setInterval(() => {
    const state = `${done}/${latencies.length}`;
    if (state !== reported) {
      reported = state;
      writeJson(join(dir, 'progress.json'), { done, latency: latencies.length, time: now() });
    }
  }, 500);
  progress.unref();

  writeJson(join(dir, 'started.json'), { time: now(), pid: process.pid });
  const options = { connection: connectionOf(args.url), concurrency: Number(args.concurrency) };
  if (args['keep-completed']) options.removeOnComplete = { count: Number(args['keep-completed']) };
  const worker = new Worker(QUEUE, processor, options);
  worker.on('error', (err) => console.error('worker error', err));
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// ------------------------------------------------------------------------------- driver

class Driver {
  constructor(args) {
    this.args = args;
    this.dir = args.workdir;
    this.deadline = monotonic() + Number(args.budget);
    this.peer = args.peer || 'bullmq';
    this.keep = KEEP_PEERS[this.peer];
    this.result = { peer: this.peer, language: 'node', status: 'running', phases: {} };
    this.worker = null;
    this.workerExit = null;
  }

  save() {
    writeJson(join(this.dir, 'result.json'), this.result);
  }

  notes() {
    if (this.args.suite !== 'bullmq') {
      return 'Node.js, not Python: not counted as "the fastest Python peer".';
    }
    if (this.keep === undefined) {
      return "BullMQ's own worker on the layout conveyor's rows use: the base of every ratio.";
    }
    return (
      `Keeps the last ${this.keep} completed jobs, as conveyor does by default: every ` +
      'completion also deletes the oldest one (moveToFinished trims), the same work as ' +
      "conveyor's rows do."
    );
  }

  phase(name, data) {
    this.result.phases[name] = data;
    this.save();
  }

  left() {
    return this.deadline - monotonic();
  }

  atFraction(fraction) {
    return monotonic() + Math.max(5, this.left() * fraction);
  }

  async flush() {
    await this.redis.flushdb();
    await this.redis.set(MARKER, 'benchmarks/run.py');
  }

  async run() {
    const args = this.args;
    Object.assign(this.result, {
      versions: versions(),
      settings:
        this.keep === undefined
          ? '`new Worker(queue, processor, {concurrency: 10})` in one Node process; defaults ' +
            '(removeOnComplete off: completed jobs are kept, drainDelay 5 s, stalledInterval 30 s)'
          : `\`new Worker(queue, processor, {concurrency: 10, removeOnComplete: {count: ${this.keep}}})\`` +
            ' in one Node process; otherwise as the bullmq row',
      batch_call: '`queue.addBulk([...])` (one MULTI per batch)',
      no_batch_reason: '',
      notes: this.notes(),
    });
    this.connection = connectionOf(args.url);
    this.redis = new IORedis(this.connection);
    this.save();
    try {
      await this.flush();
      let queue = new Queue(QUEUE, { connection: this.connection });
      await queue.waitUntilReady();
      await this.enqueuePhase(queue, 'enqueue_single', false, this.atFraction(0.3));
      await queue.close();
      await this.flush();
      queue = new Queue(QUEUE, { connection: this.connection });
      await queue.waitUntilReady();
      const queued = await this.enqueuePhase(queue, 'enqueue_batched', true, this.atFraction(0.45));
      if (queued === 0) {
        this.phase('drain', { skipped: 'nothing was enqueued' });
      } else if (await this.drainPhase(queued)) {
        await this.latencyPhase(queue);
      } else {
        this.phase('latency', { skipped: 'the drain did not finish' });
      }
      await queue.close();
      this.result.status = 'ok';
    } catch (err) {
      this.result.status = `error: ${err && err.message ? err.message : err}`;
      throw err;
    } finally {
      await this.stopWorker();
      await this.flush().catch(() => {});
      await this.redis.quit();
      this.save();
    }
  }

  async enqueuePhase(queue, name, batched, until) {
    const jobs = Number(this.args.jobs);
    const size = Number(this.args['batch-size']);
    let done = 0;
    let timedOut = false;
    const start = monotonic();
    if (batched) {
      const items = Array.from({ length: size }, () => ({ name: 'noop', data: { t: 0 } }));
      while (done < jobs) {
        const count = Math.min(size, jobs - done);
        await queue.addBulk(items.slice(0, count));
        done += count;
        if (monotonic() > until && done < jobs) {
          timedOut = true;
          break;
        }
      }
    } else {
      while (done < jobs) {
        await queue.add('noop', { t: 0 });
        done += 1;
        if (done % 100 === 0 && monotonic() > until && done < jobs) {
          timedOut = true;
          break;
        }
      }
    }
    const seconds = monotonic() - start;
    const data = { count: done, seconds, rate: done / seconds };
    if (batched) data.batch_size = size;
    if (timedOut) data.timeout = true;
    this.phase(name, data);
    return done;
  }

  startWorker(drainTarget) {
    const args = this.args;
    const log = openSync(join(this.dir, 'worker.log'), 'w');
    this.worker = spawn(
      process.execPath,
      [
        fileURLToPath(import.meta.url),
        'worker',
        `--url=${args.url}`,
        `--workdir=${this.dir}`,
        `--drain=${drainTarget}`,
        `--latency=${args['latency-jobs']}`,
        `--concurrency=${args.concurrency}`,
        ...(this.keep === undefined ? [] : [`--keep-completed=${this.keep}`]),
      ],
      { stdio: ['ignore', log, log] },
    );
    closeSync(log);
    this.worker.on('exit', (code, signal) => {
      this.workerExit = `worker exited with ${code ?? signal}`;
    });
  }

  workerFailed() {
    if (this.workerExit === null) return null;
    let tail = '';
    try {
      tail = readFileSync(join(this.dir, 'worker.log'), 'utf8').trim().split('\n').slice(-3).join(' | ');
    } catch {
      // no log
    }
    return `${this.workerExit}: ${tail}`;
  }

  async stopWorker() {
    if (this.worker === null || this.workerExit !== null) return;
    const exited = new Promise((resolve) => this.worker.once('exit', resolve));
    this.worker.kill('SIGTERM');
    const timer = setTimeout(() => this.worker.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
  }

  async drainPhase(queued) {
    const spawned = now();
    this.startWorker(queued);
    const until = this.deadline - Number(this.args['latency-reserve']);
    let done;
    for (;;) {
      done = readJson(join(this.dir, 'drain.json'));
      if (done !== null) break;
      const failure = this.workerFailed();
      if (failure !== null) {
        this.phase('drain', { error: failure });
        return false;
      }
      if (monotonic() > until) {
        const progress = readJson(join(this.dir, 'progress.json')) || {};
        const started = readJson(join(this.dir, 'started.json'));
        this.phase('drain', {
          timeout: true,
          seconds: now() - (started ? started.time : spawned),
          done: progress.done || 0,
          count: queued,
        });
        return false;
      }
      await sleep(100);
    }
    const started = readJson(join(this.dir, 'started.json'));
    const seconds = done.last - started.time;
    this.phase('drain', {
      count: queued,
      seconds,
      rate: queued / seconds,
      startup_s: done.first_start - started.time,
      spawn_to_start_s: started.time - spawned,
    });
    return true;
  }

  async latencyPhase(queue) {
    const count = Number(this.args['latency-jobs']);
    const interval = Number(this.args.interval);
    await sleep(1000); // let the worker go idle
    const base = monotonic();
    for (let i = 0; i < count; i += 1) {
      const pause = base + i * interval - monotonic();
      if (pause > 0) await sleep(pause * 1000);
      await queue.add('noop', { t: now() });
    }
    const sent = monotonic();
    const until = Math.min(sent + 15, this.deadline - 1);
    let samples;
    while ((samples = readJson(join(this.dir, 'latency.json'))) === null) {
      const failure = this.workerFailed();
      if (failure !== null) {
        this.phase('latency', { error: failure });
        return;
      }
      if (monotonic() > until) {
        const progress = readJson(join(this.dir, 'progress.json')) || {};
        this.phase('latency', {
          timeout: true,
          seconds: monotonic() - sent,
          done: progress.latency || 0,
          count,
        });
        return;
      }
      await sleep(100);
    }
    const ms = samples.map((s) => s * 1000).sort((a, b) => a - b);
    this.phase('latency', {
      n: ms.length,
      p50_ms: percentile(ms, 0.5),
      p99_ms: percentile(ms, 0.99),
      min_ms: ms[0],
      max_ms: ms[ms.length - 1],
      mean_ms: ms.reduce((a, b) => a + b, 0) / ms.length,
    });
  }
}

// ------------------------------------------------------------------------------- main

const [mode, ...rest] = process.argv.slice(2);
const args = parseArgs(rest);
if (mode === 'worker') {
  await runWorker(args);
} else if (mode === 'driver') {
  await new Driver(args).run();
  process.exit(0);
} else {
  console.error('usage: node bench.mjs driver|worker --name=value ...');
  process.exit(2);
}
