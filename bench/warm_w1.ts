/**
 * W1 as it warms up: one pipeline of two ordered stages runs passes of
 * 200 000 items, then 10^6, through the public API, printing items/s per
 * pass. The compare table times the first pass after a 1000-item warm-up;
 * this shows what the same pipeline does once V8 has compiled its hot paths.
 * Run with `deno run bench/warm_w1.ts`.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const first = new OrderedStage((x: number) => x + 1);
first.link(new OrderedStage((x: number) => x * 2));
const pipe = new Pipeline<number, number>(first);
let next = 0;

async function pass(count: number): Promise<string> {
  const began = performance.now();
  const base = next;
  const producer = (async () => {
    for (let i = 0; i < count; i++) await pipe.put(base + i);
  })();
  let k = 0;
  for await (const result of pipe.results()) {
    if (result !== 2 * (base + k + 1)) throw new Error(`bad result ${k}`);
    if (++k === count) break;
  }
  await producer;
  next += count;
  const perSecond = count / ((performance.now() - began) / 1000);
  return `${count}: ${(perSecond / 1e6).toFixed(2)} M/s`;
}

const passes = [];
for (const count of [1000, 200_000, 200_000, 200_000, 1_000_000]) {
  passes.push(await pass(count));
}
console.log(passes.join(" | "));
await pipe.close();
for await (const _ of pipe);
await pipe.done;
