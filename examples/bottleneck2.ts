/**
 * The bottleneck of `bottleneck1.ts`, relieved by a second worker: two workers
 * at 13 ms per task keep up with a task every 10 ms.
 *
 * Twin of the original's `bottleneck2.py` ("Filtering"). Run with
 * `deno run examples/bottleneck2.ts`; it prints 0, 1, ..., 11, one per line
 * (two workers print, so neighbours may swap), in about 10 ms × 12.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

/** Prints the task, takes 13 ms, and puts the task out as its result. */
async function echo(value: number): Promise<number> {
  console.log(value);
  await new Promise((resolve) => setTimeout(resolve, 13));
  return value;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const pipe = new Pipeline<number, number>(new OrderedStage(echo, 2));
for (let number = 0; number < 12; number++) {
  pipe.put(number);
  await sleep(10);
}

pipe.put(null);
