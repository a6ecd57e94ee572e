/**
 * A bottleneck: tasks come every 10 ms to a one-worker stage that takes 13 ms
 * per task, so tasks pile up at its input.
 *
 * Twin of the original's `bottleneck1.py` ("Filtering"). Run with
 * `deno run examples/bottleneck1.ts`; it prints 0, 1, ..., 11, one per line,
 * in about 13 ms × 12. Compare with `bottleneck2.ts` (two workers) and
 * `bottleneck3.ts` (a filter that drops tasks).
 */
import { OrderedStage, Pipeline } from "../mod.ts";

/** Prints the task, takes 13 ms, and puts the task out as its result. */
async function echo(value: number): Promise<number> {
  console.log(value);
  await new Promise((resolve) => setTimeout(resolve, 13));
  return value;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const pipe = new Pipeline<number, number>(new OrderedStage(echo));
for (let number = 0; number < 12; number++) {
  pipe.put(number);
  await sleep(10);
}

pipe.put(null); // the results are never read: the script ends all the same
