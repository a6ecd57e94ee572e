/**
 * The bottleneck of `bottleneck1.ts`, kept to one worker but behind a filter:
 * a task enters the slow stage only while it holds fewer than two tasks, and
 * the others are dropped, so the stream never backs up.
 *
 * Twin of the original's `bottleneck3.py` ("Filtering"). Run with
 * `deno run examples/bottleneck3.ts`; it prints the tasks that got through,
 * in order, one per line: 0, 1, 2, ... with one missing now and then (which
 * ones depends on timing), in about 10 ms × 12.
 */
import { FilterStage, OrderedStage, Pipeline } from "../mod.ts";

/** Prints the task, takes 13 ms, and puts the task out as its result. */
async function echo(value: number): Promise<number> {
  console.log(value);
  await new Promise((resolve) => setTimeout(resolve, 13));
  return value;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const stage = new FilterStage<number, number>([new OrderedStage(echo)], {
  maxTasks: 2,
});
const pipe = new Pipeline<number, [number, number[]]>(stage);
for (let number = 0; number < 12; number++) {
  pipe.put(number);
  await sleep(10);
}

pipe.put(null);
