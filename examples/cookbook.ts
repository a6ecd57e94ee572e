/**
 * The MPipe cookbook in TypeScript: a function stage, a worker-class stage and
 * a module stage, linked into a chain. The README's cookbook is this program.
 *
 * Run with `deno run --allow-read examples/cookbook.ts` (the module target is
 * imported by its workers, which needs read access). It prints
 * `1 3 5 7 9 11 13 15 17 19`: the last stage is unordered, so its results are
 * sorted before they are printed.
 */
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  Stage,
  UnorderedStage,
} from "../mod.ts";

// 1. Define workers: a self-contained function ...
function increment(task: number) {
  return task + 1;
}
// ... or a class; the result is doTask's return value, or what putResult() was given.
class Doubler extends OrderedWorker<number, number> {
  doTask(task: number) {
    this.putResult(task * 2); // may go on working
  }
}
// 2. Create stages: target, number of workers, options.
const stage1 = new OrderedStage(increment, 3);
const stage2 = new Stage(Doubler, 4); // ordered because Doubler is an OrderedWorker
const stage3 = new UnorderedStage<number, number>(
  new URL("./work.ts", import.meta.url), // a module target: its default export
  2,
);
// 3. Link: link() returns the stage it is called on; a stage may fork to several.
stage1.link(stage2.link(stage3));
// 4. Create the pipeline: it builds and starts every worker reachable from the root.
const pipe = new Pipeline<number, number>(stage1);
// 5. Operate it.
for (let i = 0; i < 10; i++) pipe.put(i);
pipe.put(null); // the stop request
// stage3 is unordered: its results come in any order, so sort them to print.
const results = await Array.fromAsync(pipe.results());
console.log(results.sort((a, b) => a - b).join(" ")); // 1 3 5 7 9 11 13 15 17 19
