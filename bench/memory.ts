/**
 * Memory under a long stream: 10 million W1 items through the public API
 * (awaited puts, a concurrent reader), printing the peak growth of resident
 * memory. Goal: within 100 MiB. Run with `deno run bench/memory.ts [count]`.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const count = Number(Deno.args[0] ?? 10_000_000);
const first = new OrderedStage((x: number) => x + 1);
first.link(new OrderedStage((x: number) => x * 2));
const pipe = new Pipeline<number, number>(first);
await pipe.put(0);
await pipe.get();

const start = Deno.memoryUsage().rss;
let peak = start;
const began = performance.now();
const producer = (async () => {
  for (let i = 1; i <= count; i++) await pipe.put(i);
  await pipe.put(null);
})();
let k = 1;
for await (const result of pipe) {
  if (result !== 2 * (k + 1)) throw new Error(`result ${k} is ${result}`);
  if ((++k & 0xfffff) === 0) peak = Math.max(peak, Deno.memoryUsage().rss);
}
await producer;
peak = Math.max(peak, Deno.memoryUsage().rss);
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
console.log(
  `${count} items in ${((performance.now() - began) / 1000).toFixed(1)} s; ` +
    `resident memory grew by ${mib(peak - start)} MiB at most (from ${
      mib(start)
    } MiB)`,
);
await pipe.done;
