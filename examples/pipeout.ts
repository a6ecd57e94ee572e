/**
 * Pipeline with output: the caller, not a third stage, prints the results.
 *
 * Twin of the original's `test/pipeout.py` ("Pipeline with output"). Run with
 * `deno run examples/pipeout.ts`; it prints 2, 4, ..., 20, one per line.
 *
 * As in the original, the stop request goes in before the results are read:
 * `results()` ends once the stop has drained, and would wait forever without
 * it. Calling `await pipe.get()` ten times would work either way.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

function increment(value: number): number {
  return value + 1;
}

function double(value: number): number {
  return value * 2;
}

const stage1 = new OrderedStage(increment);
const stage2 = new OrderedStage(double);
stage1.link(stage2);
const pipe = new Pipeline<number, number>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);

for await (const result of pipe.results()) console.log(result);
