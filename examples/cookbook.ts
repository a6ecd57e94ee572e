/**
 * The MPipe cookbook in TypeScript: two stages, a function and a worker class.
 * Run with `deno run examples/cookbook.ts`.
 */
import { OrderedStage, OrderedWorker, Pipeline, Stage } from "../mod.ts";

// 1. Define workers: a self-contained function ...
function increment(task: number) {
  return task + 1;
}
// ... or a class; the result is doTask's return value, or what putResult() was given.
class Doubler extends OrderedWorker<number, number> {
  doTask(task: number) {
    this.putResult(task * 2);
  }
}
// 2. Create stages: target, number of workers, options.
const stage1 = new OrderedStage(increment, 3);
const stage2 = new Stage(Doubler, 4);
// 3. Link: link() returns the stage it is called on.
stage1.link(stage2);
// 4. Create the pipeline: it builds and starts every worker.
const pipe = new Pipeline<number, number>(stage1);
// 5. Operate it: put tasks, then the stop request, then read every result.
for (let i = 0; i < 10; i++) pipe.put(i);
pipe.put(null);
for await (const result of pipe.results()) console.log(result);
