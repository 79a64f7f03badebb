// BullMQ's side of benchmarks/redis_cost.py: add N no-op jobs to queue "bench",
// run the command line given after "--" (the driver zeroes its counters there),
// then drain them with one BullMQ Worker at concurrency 10.
//
//   node drain_once.mjs --url=redis://127.0.0.1:6391/9 --jobs=3000 --keep=1000 -- cmd args...

import { execFileSync } from 'node:child_process';

import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';

const split = process.argv.indexOf('--');
const args = Object.fromEntries(
  process.argv.slice(2, split < 0 ? undefined : split).map((arg) => arg.replace(/^--/, '').split('=')),
);
const mark = split < 0 ? [] : process.argv.slice(split + 1);
const parsed = new URL(args.url);
const connection = { host: parsed.hostname, port: Number(parsed.port), db: Number(parsed.pathname.slice(1) || 0) };
const jobs = Number(args.jobs);

const redis = new IORedis(connection);
await redis.flushdb();
const queue = new Queue('bench', { connection });
for (let start = 0; start < jobs; start += 1000) {
  const size = Math.min(1000, jobs - start);
  await queue.addBulk(Array.from({ length: size }, () => ({ name: 'noop', data: {} })));
}
if (mark.length) execFileSync(mark[0], mark.slice(1), { stdio: 'ignore' });
let done = 0;
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const options = { connection, concurrency: 10 };
if (args.keep !== 'all') options.removeOnComplete = { count: Number(args.keep) };
const worker = new Worker('bench', async () => null, options);
worker.on('completed', () => { if (++done === jobs) finish(); });
await finished;
await worker.close();
await queue.close();
redis.disconnect();
