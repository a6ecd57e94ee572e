/**
 * Twin of the original MPipe's filter example: a slow stage (13 ms a task)
 * fed a task every 10 ms would fall further and further behind; behind a
 * FilterStage that lets it hold at most 2 tasks, it sees most tasks, skips
 * one now and then, and the stream never backs up.
 *
 * Run with `deno run examples/filter.ts`.
 */
import { FilterStage, OrderedStage, Pipeline } from "../mod.ts";

async function slowIncrement(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, 13));
  return task + 1;
}

const filter = new FilterStage<number, number>(
  [new OrderedStage(slowIncrement)],
  { maxTasks: 2 },
);
const pipe = new Pipeline<number, [number, number[]]>(filter);

const printer = (async () => {
  for await (const [task, results] of pipe) {
    console.log(`task ${task}: latest results ${JSON.stringify(results)}`);
  }
})();
for (let task = 0; task < 30; task++) {
  await pipe.put(task);
  await new Promise((resolve) => setTimeout(resolve, 10));
}
await pipe.put(null);
await printer;
