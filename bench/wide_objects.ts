/**
 * One ordered identity stage over 8-key objects: two threads on two cores,
 * with the codec at both ends of each hop, so it shows what the codec costs a
 * pipeline. Prints items/s for a cold pass after a 1000-item warm-up, then
 * three more passes of 100 000. Compare two commits by running it at each.
 *
 * Run with `deno run --allow-read bench/wide_objects.ts`.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

interface Item {
  id: number;
  name: string;
  kind: string;
  price: number;
  count: number;
  active: boolean;
  tags: string[];
  owner: string;
}

const item = (i: number): Item => ({
  id: i,
  name: "item-" + i,
  kind: "widget",
  price: i * 0.5,
  count: i & 7,
  active: (i & 1) === 0,
  tags: ["a", "b"],
  owner: "ops",
});

const pipe = new Pipeline<Item, Item>(new OrderedStage((o: Item) => o));

async function pass(n: number): Promise<number> {
  const began = performance.now();
  const producer = (async () => {
    for (let i = 0; i < n; i++) await pipe.put(item(i));
  })();
  let k = 0;
  for await (const result of pipe.results()) {
    if (result.id !== k || result.name !== "item-" + k) {
      throw new Error(`result ${k} is wrong: ${JSON.stringify(result)}`);
    }
    if (++k === n) break;
  }
  await producer;
  return n / ((performance.now() - began) / 1000);
}

await pass(1000);
const rates: string[] = [];
for (let i = 0; i < 4; i++) {
  rates.push(`${Math.round(await pass(100_000) / 1000)}k`);
}
console.log(`8-key objects, 1 stage, items/s per pass: ${rates.join(" | ")}`);
await pipe.close();
for await (const _ of pipe);
await pipe.done;
