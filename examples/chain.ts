/**
 * Chaining stages: increment, then double, then print, one worker each.
 *
 * Twin of the original's `test/chain.py` ("Chaining stages"). Run with
 * `deno run examples/chain.ts`; it prints 2, 4, ..., 20, one per line.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

function increment(value: number): number {
  return value + 1;
}

function double(value: number): number {
  return value * 2;
}

/** The last stage prints each task and puts no result. */
function echo(value: number): void {
  console.log(value);
}

const stage1 = new OrderedStage(increment);
const stage2 = new OrderedStage(double);
const stage3 = new OrderedStage(echo);
stage1.link(stage2);
stage2.link(stage3);
const pipe = new Pipeline<number, never>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);
