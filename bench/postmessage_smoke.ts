// Quick self-check of the postMessage baseline: tiny N, every workload variant, prints items/s.
// Run: deno run bench/postmessage_smoke.ts   (no flags needed; exits by itself)

import {
  type PostMessageOptions,
  PostMessagePipeline,
} from "./postmessage_pipeline.ts";
import * as w from "./workloads.ts";

const SMOKE_N = 2000;
const SMOKE_WARMUP = 200;

type Stages = Parameters<typeof PostMessagePipeline.start>[0];
type MakeChecker = (n: number) => w.Checker<unknown>;

// Wraps an ordered check function as a Checker with nothing to assert at the end.
const ordered =
  (check: (k: number, r: unknown) => void): MakeChecker => () => ({
    check,
    done: () => undefined,
  });

async function throughput(
  name: string,
  stages: Stages,
  options: PostMessageOptions,
  n: number,
  task: (i: number) => unknown,
  makeChecker: MakeChecker,
  bytes = 0,
): Promise<void> {
  const p = await PostMessagePipeline.start(stages, options);
  try {
    const warm = makeChecker(SMOKE_WARMUP);
    await p.run(SMOKE_WARMUP, task, warm.check);
    warm.done();
    const c = makeChecker(n);
    const t0 = performance.now();
    await p.run(n, task, c.check);
    c.done();
    const s = (performance.now() - t0) / 1000;
    const mb = bytes ? `  ${(n * bytes / 1e6 / s).toFixed(0)} MB/s` : "";
    console.log(
      `${name.padEnd(34)} ${
        Math.round(n / s).toLocaleString("en").padStart(10)
      } items/s${mb}`,
    );
  } finally {
    p.close();
  }
}

async function latency(name: string, n: number): Promise<void> {
  const p = await PostMessagePipeline.start([{
    fn: w.w6Increment,
    workers: 1,
  }]);
  try {
    for (let i = 0; i < SMOKE_WARMUP; i++) {
      w.w6Check(i, await p.roundTrip(w.w6Task(i)));
    }
    const us: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      w.w6Check(i, await p.roundTrip(w.w6Task(i)));
      us.push((performance.now() - t0) * 1000);
    }
    us.sort((a, b) => a - b);
    const rank = (q: number) => us[Math.ceil(q * us.length) - 1]!; // nearest rank
    console.log(
      `${name.padEnd(34)} p50 ${rank(0.5).toFixed(0)} µs  p99 ${
        rank(0.99).toFixed(0)
      } µs`,
    );
  } finally {
    p.close();
  }
}

const w1: Stages = [{ fn: w.w1Increment, workers: 1 }, {
  fn: w.w1Double,
  workers: 1,
}];
const w2: Stages = [{ fn: w.w2Increment, workers: 2 }, {
  fn: w.w2Double,
  workers: 2,
}];
const w5: Stages = [
  { fn: w.w5AddA, workers: 1 },
  { fn: w.w5AddB, workers: 1 },
  { fn: w.w5AddC, workers: 1 },
];
const w4: Stages = [{ fn: w.w4Identity, workers: 1 }];
const heavy = { maxInFlight: w.MAX_IN_FLIGHT.W4 };

await throughput("W1", w1, {}, SMOKE_N, w.w1Task, ordered(w.w1Check));
await throughput(
  "W1 batch 256",
  w1,
  { batch: 256 },
  SMOKE_N,
  w.w1Task,
  ordered(w.w1Check),
);
await throughput(
  "W2 unordered",
  w2,
  { ordered: false },
  SMOKE_N,
  w.w2Task,
  w.w2Checker,
);
await throughput(
  "W2 unordered batch 256",
  w2,
  { ordered: false, batch: 256 },
  SMOKE_N,
  w.w2Task,
  w.w2Checker,
);
// W2 pipeline but ordered: with 2 replicas results arrive out of order, exercising the Map.
await throughput(
  "W2 stages, ordered",
  w2,
  {},
  SMOKE_N,
  w.w2Task,
  ordered(w.w1Check),
);
await throughput(
  "W4 copy",
  w4,
  heavy,
  SMOKE_N,
  w.w4Task,
  ordered(w.w4Check),
  w.W4_BYTES,
);
await throughput(
  "W4 transfer",
  w4,
  { ...heavy, transfer: true },
  SMOKE_N,
  w.w4Task,
  ordered(w.w4Check),
  w.W4_BYTES,
);
await throughput("W5", w5, {}, SMOKE_N, w.w5Task, ordered(w.w5Check));
await throughput(
  "W5 batch 256",
  w5,
  { batch: 256 },
  SMOKE_N,
  w.w5Task,
  ordered(w.w5Check),
);
for (const workers of [1, 2]) {
  await throughput(
    `W3 ${workers} worker(s), 40 tasks`,
    [{ fn: w.w3Hash, workers }],
    { ordered: false, maxInFlight: w.MAX_IN_FLIGHT.W3 },
    40,
    w.w3Task,
    w.w3Checker,
  );
}
await latency("W6 round trip", SMOKE_N);
