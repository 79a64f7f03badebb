// The Node side of conveyor's bullmq:// interop tests, driven by
// tests/interop/test_bullmq_node.py. One JSON argument:
//   {"command": "add" | "get" | "work", "redis": {host, port, db},
//    "prefix": "...", "queue": "...", ...}
// and one JSON line on stdout with the answer.
//   add:  {"jobs": [{"name", "data", "opts"}], "global_concurrency"?: N,
//          "global_rate_limit"?: [max, ms]}  -> {"ids": [...]}
//         (queue.setGlobalConcurrency / setGlobalRateLimit first, when given)
//   get:  {"ids": [...]}                         -> {"jobs": [{id, name, data, returnvalue,
//                                                     failedReason, stacktrace, attemptsMade,
//                                                     state, progress, logs}]}
//   work: {"count": N, "timeout_ms": T, "stop_key"?: K, "ready_key"?: K,
//          "worker_opts"?: {...}}
//         -> {"done": [{id, name, data, result}]}
//         runs a BullMQ Worker until N jobs completed, T ms passed or key K exists;
//         job "add" returns {sum: a + b} (after data.sleep_ms), job "fail" throws,
//         job "hang" reports progress 1 and never ends.
//   listen: {"finished": [ids], "timeout_ms": T}
//         -> {"events": [{event, jobId, ...}]}
//         a QueueEvents reads the queue's events stream from its start (the
//         tests' prefixes are fresh) until each id has a completed or failed
//         event, or T ms passed: what a Node service listening sees.
//   board: serves Bull Board at http://127.0.0.1:<port>/board on a free
//         loopback port, prints {"port": N} and runs until killed.
//   upsert_scheduler: {"id", "repeat", "template"} -> {"id": the first iteration's job id}
//   schedulers: {}                               -> {"schedulers": getJobSchedulers()}
//   remove_scheduler: {"id"}                     -> {"removed": bool}
//   cron_next: {"pattern", "tz", "after_ms"}     -> {"next_ms": cron-parser's next tick}
//   pause: {"set"?: true | false}                -> {"paused": queue.isPaused()}
//         (queue.pause() or queue.resume() first, when "set" is given)
import { CronExpressionParser } from "cron-parser";
import { Queue, QueueEvents, Worker } from "bullmq";
import IORedis from "ioredis";

const spec = JSON.parse(process.argv[2]);
// BullMQ 6 in an ES module takes a client instance, not connection options.
const connection = new IORedis({
  host: spec.redis.host,
  port: spec.redis.port,
  db: spec.redis.db,
  maxRetriesPerRequest: null,
});
const options = { connection, prefix: spec.prefix };

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
}

async function add() {
  const queue = new Queue(spec.queue, options);
  if (spec.global_concurrency) await queue.setGlobalConcurrency(spec.global_concurrency);
  if (spec.global_rate_limit) await queue.setGlobalRateLimit(...spec.global_rate_limit);
  const ids = [];
  for (const job of spec.jobs) {
    const added = await queue.add(job.name, job.data, job.opts || {});
    ids.push(added.id);
  }
  await queue.close();
  print({ ids });
}

async function get() {
  const queue = new Queue(spec.queue, options);
  const jobs = [];
  for (const id of spec.ids) {
    const job = await queue.getJob(id);
    if (!job) {
      jobs.push(null);
      continue;
    }
    jobs.push({
      id: job.id,
      name: job.name,
      data: job.data,
      returnvalue: job.returnvalue,
      failedReason: job.failedReason,
      stacktrace: job.stacktrace,
      attemptsMade: job.attemptsMade,
      progress: job.progress,
      state: await job.getState(),
      logs: (await queue.getJobLogs(id)).logs,
    });
  }
  await queue.close();
  print({ jobs });
}

async function work() {
  const done = [];
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const worker = new Worker(
    spec.queue,
    async (job) => {
      if (job.name === "fail") throw new Error("failed on purpose");
      if (job.name === "hang") {
        await job.updateProgress(1); // tells the test it started
        await new Promise(() => {}); // until the process is killed
      }
      if (job.data.sleep_ms) await new Promise((r) => setTimeout(r, job.data.sleep_ms));
      await job.updateProgress(100);
      return { sum: job.data.a + job.data.b, by: "node" };
    },
    { ...options, concurrency: 4, ...(spec.worker_opts || {}) },
  );
  // A test running a mixed pool waits for this key before it enqueues.
  await worker.waitUntilReady();
  if (spec.ready_key) await connection.set(spec.ready_key, "1");
  worker.on("completed", (job, result) => {
    done.push({ id: job.id, name: job.name, data: job.data, result });
    if (done.length >= spec.count) finish();
  });
  const timer = setTimeout(finish, spec.timeout_ms);
  // A test running a mixed pool says when to stop: this key appears.
  const poll = spec.stop_key
    ? setInterval(async () => {
        if (await connection.exists(spec.stop_key)) finish();
      }, 50)
    : null;
  await finished;
  clearTimeout(timer);
  if (poll) clearInterval(poll);
  await worker.close();
  print({ done });
}

async function listen() {
  // QueueEvents blocks its connection on XREAD: one of its own.
  const events = new QueueEvents(spec.queue, {
    connection: connection.duplicate(),
    prefix: spec.prefix,
    lastEventId: "0-0",
  });
  const heard = [];
  const waiting = new Set(spec.finished);
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  const names = ["added", "waiting", "delayed", "active", "progress", "completed", "failed"];
  for (const name of [...names, "retries-exhausted", "stalled", "removed", "duplicated"]) {
    events.on(name, (args) => {
      heard.push({ event: name, ...args });
      if (name === "completed" || name === "failed") waiting.delete(args.jobId);
      if (waiting.size === 0) finish();
    });
  }
  const timer = setTimeout(finish, spec.timeout_ms);
  await finished;
  clearTimeout(timer);
  await events.close();
  print({ events: heard });
}

async function board() {
  const { createBullBoard } = await import("@bull-board/api");
  const { BullMQAdapter } = await import("@bull-board/api/bullMQAdapter");
  const { ExpressAdapter } = await import("@bull-board/express");
  const { default: express } = await import("express");
  const queue = new Queue(spec.queue, options);
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath("/board");
  createBullBoard({ queues: [new BullMQAdapter(queue)], serverAdapter });
  const app = express();
  app.use("/board", serverAdapter.getRouter());
  const server = app.listen(0, "127.0.0.1", () => print({ port: server.address().port }));
  await new Promise(() => {}); // until the test kills the process
}

async function upsert_scheduler() {
  const queue = new Queue(spec.queue, options);
  const job = await queue.upsertJobScheduler(spec.id, spec.repeat, spec.template);
  await queue.close();
  print({ id: job ? job.id : null });
}

async function schedulers() {
  const queue = new Queue(spec.queue, options);
  const found = await queue.getJobSchedulers(0, -1, true);
  await queue.close();
  print({ schedulers: found });
}

async function remove_scheduler() {
  const queue = new Queue(spec.queue, options);
  const removed = await queue.removeJobScheduler(spec.id);
  await queue.close();
  print({ removed });
}

async function cron_next() {
  // What BullMQ's default repeat strategy asks cron-parser for.
  const interval = CronExpressionParser.parse(spec.pattern, {
    tz: spec.tz,
    currentDate: new Date(spec.after_ms),
  });
  print({ next_ms: interval.next().getTime() });
}

async function pause() {
  const queue = new Queue(spec.queue, options);
  if (spec.set === true) await queue.pause();
  if (spec.set === false) await queue.resume();
  const paused = await queue.isPaused();
  await queue.close();
  print({ paused });
}

const commands = {
  pause,
  add,
  get,
  work,
  listen,
  board,
  upsert_scheduler,
  schedulers,
  remove_scheduler,
  cron_next,
};
commands[spec.command]().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
    process.exit(1);
  },
);
