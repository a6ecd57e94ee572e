/**
 * Memory under many short pipelines in a row, as a service that makes one
 * per request: `cycles` times create a pipeline, feed 3 tasks, drain, await
 * `done`; prints resident memory and the heap every `cycles / 10` cycles and
 * at the end. Run with `deno run bench/short_pipelines.ts [cycles]`.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const cycles = Number(Deno.args[0] ?? 2500);
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const began = performance.now();
let peak = 0;
for (let i = 1; i <= cycles; i++) {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x + 1),
  );
  await pipe.feed([1, 2, 3]);
  const results = await Array.fromAsync(pipe);
  if (results.length !== 3) throw new Error(`cycle ${i}: ${results}`);
  await pipe.done;
  const { rss, heapUsed } = Deno.memoryUsage();
  peak = Math.max(peak, rss);
  if (i % Math.max(1, Math.floor(cycles / 10)) === 0 || i === cycles) {
    console.log(
      `cycle ${i}: rss ${mib(rss)} MiB, heap ${mib(heapUsed)} MiB, ` +
        `peak rss ${mib(peak)} MiB, ${
          ((performance.now() - began) / 1000).toFixed(1)
        } s`,
    );
  }
}
