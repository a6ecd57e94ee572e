// `deno bench --allow-read bench/pipeline_bench.ts`: workloads W1–W6 of
// /work/shared/BENCHMARKS.md, MPipe against the plain postMessage baseline, one group per
// workload with the simple postMessage pipeline as the baseline entry.
//
// Every pipeline is built and warmed up once, at module top level, so worker start-up is
// never timed; each bench iteration pushes a reduced number of tasks (BENCH_N) through the
// long-lived pipeline and checks every result (W6: one round trip per iteration). items/s =
// BENCH_N / time per iteration. The full-size, fresh-process comparison with medians and
// ratios is `deno run --allow-read --allow-run bench/compare.ts`.

import type { PostMessagePipeline } from "./postmessage_pipeline.ts";
import {
  type MPipeRunner,
  type Runner,
  SPECS,
  startMPipe,
  startPostMessage,
  w3Spec,
  type WorkloadId,
  type WorkloadSpec,
} from "./mpipe_runner.ts";
import * as w from "./workloads.ts";

/** Tasks per bench iteration (a tenth of BENCHMARKS.md's N; W3 a fiftieth). */
const BENCH_N = {
  W1: 20_000,
  W2: 20_000,
  W3: 40,
  W4: 2_000,
  W5: 10_000,
} as const;

/** Iterations and warm-up iterations of each throughput bench. */
const ITERATIONS = { n: 10, warmup: 2 };

// Every pipeline, so that the process can end them all when the benchmarks are over.
const baselines: PostMessagePipeline[] = [];
const mpipes: MPipeRunner[] = [];

async function pm(
  id: WorkloadId,
  variant: "simple" | "batch" | "transfer" = "simple",
  w3Workers?: number,
): Promise<PostMessagePipeline> {
  const p = await startPostMessage(id, variant, { w3Workers });
  baselines.push(p);
  return p;
}

// MPipe pipelines that failed to build or warm up are reported and their benches skipped.
async function mp(
  id: WorkloadId,
  w3Workers?: number,
): Promise<MPipeRunner | null> {
  try {
    const r = await startMPipe(id, { w3Workers });
    mpipes.push(r);
    return r;
  } catch (e) {
    console.error(
      `MPipe ${id}${
        w3Workers ? ` (${w3Workers} workers)` : ""
      }: SKIPPED, the pipeline failed to start or warm up: ${
        e instanceof Error ? e.message : e
      }`,
    );
    return null;
  }
}

// Ends every pipeline at once when the bench module unloads; `deno bench` also exits with
// workers alive, so this is only tidiness.
globalThis.addEventListener("unload", () => {
  for (const p of baselines) p.close();
  for (const r of mpipes) r.terminate();
});

/** One throughput bench: `n` tasks of `spec` through `runner`, every result checked. */
function throughput(
  group: string,
  name: string,
  runner: Runner | null,
  spec: WorkloadSpec,
  n: number,
  baseline = false,
): void {
  Deno.bench({
    group,
    name: runner === null ? `${name} (skipped: failed to start)` : name,
    baseline,
    ignore: runner === null,
    ...ITERATIONS,
    async fn(b) {
      const c = spec.checker(n);
      b.start();
      await runner!.run(n, spec.task, c.check);
      c.done();
      b.end();
    },
  });
}

// ---------------------------------------------------------------- build everything

const w1 = {
  pm: await pm("W1"),
  batch: await pm("W1", "batch"),
  mpipe: await mp("W1"),
};
const w2 = {
  pm: await pm("W2"),
  batch: await pm("W2", "batch"),
  mpipe: await mp("W2"),
};
const w3 = {
  pm1: await pm("W3", "simple", 1),
  pm2: await pm("W3", "simple", 2),
  mpipe1: await mp("W3", 1),
  mpipe2: await mp("W3", 2),
};
const w4 = {
  pm: await pm("W4"),
  transfer: await pm("W4", "transfer"),
  mpipe: await mp("W4"),
};
const w5 = {
  pm: await pm("W5"),
  batch: await pm("W5", "batch"),
  mpipe: await mp("W5"),
};
const w6 = { pm: await pm("W6"), mpipe: await mp("W6") };

// ---------------------------------------------------------------- the benches

{
  const g = `W1 2 ordered stages x1, ${BENCH_N.W1} items`;
  throughput(g, "W1 postMessage", w1.pm, SPECS.W1, BENCH_N.W1, true);
  throughput(g, "W1 postMessage batch 256", w1.batch, SPECS.W1, BENCH_N.W1);
  throughput(g, "W1 MPipe", w1.mpipe, SPECS.W1, BENCH_N.W1);
}
{
  const g = `W2 2 unordered stages x2, ${BENCH_N.W2} items`;
  throughput(g, "W2 postMessage", w2.pm, SPECS.W2, BENCH_N.W2, true);
  throughput(g, "W2 postMessage batch 256", w2.batch, SPECS.W2, BENCH_N.W2);
  throughput(g, "W2 MPipe", w2.mpipe, SPECS.W2, BENCH_N.W2);
}
{
  const g = `W3 ~1 ms CPU tasks, unordered, ${BENCH_N.W3} tasks`;
  const [one, two] = [w3Spec(1), w3Spec(2)];
  throughput(g, "W3 postMessage 1 worker", w3.pm1, one, BENCH_N.W3, true);
  throughput(g, "W3 postMessage 2 workers", w3.pm2, two, BENCH_N.W3);
  throughput(g, "W3 MPipe 1 worker", w3.mpipe1, one, BENCH_N.W3);
  throughput(g, "W3 MPipe 2 workers", w3.mpipe2, two, BENCH_N.W3);
}
{
  const g = `W4 64 KiB Uint8Array identity, ${BENCH_N.W4} items (${
    (BENCH_N.W4 * w.W4_BYTES / 1e6).toFixed(0)
  } MB)`;
  throughput(g, "W4 postMessage copy", w4.pm, SPECS.W4, BENCH_N.W4, true);
  throughput(g, "W4 postMessage transfer", w4.transfer, SPECS.W4, BENCH_N.W4);
  throughput(g, "W4 MPipe", w4.mpipe, SPECS.W4, BENCH_N.W4);
}
{
  const g = `W5 3 ordered stages on objects, ${BENCH_N.W5} items`;
  throughput(g, "W5 postMessage", w5.pm, SPECS.W5, BENCH_N.W5, true);
  throughput(g, "W5 postMessage batch 256", w5.batch, SPECS.W5, BENCH_N.W5);
  throughput(g, "W5 MPipe", w5.mpipe, SPECS.W5, BENCH_N.W5);
}
{
  // One round trip per iteration: Deno's time/iter, p75 and p99 are the latency.
  const g = "W6 round trip latency (put one task, await its result)";
  const roundTrip = (
    name: string,
    runner: Runner | null,
    baseline = false,
  ) => {
    let i = 0;
    Deno.bench({
      group: g,
      name: runner === null ? `${name} (skipped: failed to start)` : name,
      baseline,
      ignore: runner === null,
      async fn() {
        w.w6Check(i, await runner!.roundTrip(w.w6Task(i)));
        i++;
      },
    });
  };
  roundTrip("W6 postMessage", w6.pm, true);
  roundTrip("W6 MPipe", w6.mpipe);
}
