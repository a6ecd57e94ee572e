/**
 * A workload as it warms up: one pipeline, built and warmed up as in the
 * compare table, then timed passes of the workload's full N, printing the
 * figure of each pass. The compare table times 6 passes and quotes the first
 * and the median of the other five; this prints every pass, as many as asked,
 * to show how the same pipeline goes on once V8 has compiled its hot paths.
 *
 * Run with `deno run --allow-read bench/warm.ts [W1|W2|W4|W5] [passes]`
 * (default W1, 4 passes).
 */
import { SPECS, startMPipe, type WorkloadId } from "./mpipe_runner.ts";
import * as w from "./workloads.ts";

const id = (Deno.args[0] ?? "W1") as WorkloadId;
if (!["W1", "W2", "W4", "W5"].includes(id)) {
  throw new RangeError(
    `bench/warm.ts: workload must be W1, W2, W4 or W5, got ${id}`,
  );
}
const passes = Number(Deno.args[1] ?? 4);
const spec = SPECS[id];
const n = w.N[id];
const runner = await startMPipe(id); // includes the BENCHMARKS.md warm-up
const figures: string[] = [];
for (let pass = 0; pass < passes; pass++) {
  const checker = spec.checker(n);
  const began = performance.now();
  await runner.run(n, spec.task, checker.check);
  checker.done();
  const seconds = (performance.now() - began) / 1000;
  figures.push(
    spec.bytes > 0
      ? `${Math.round(n * spec.bytes / 1e6 / seconds)} MB/s`
      : `${(n / seconds / 1e6).toFixed(2)} M items/s`,
  );
}
console.log(`${id}, ${passes} passes of ${n}: ${figures.join(" | ")}`);
await runner.close();
