/**
 * The front-page example: increment, then double, three ordered workers per
 * stage, and print the pipeline's results.
 *
 * Twin of the original's `test/tiny.py`. Run with `deno run examples/tiny.ts`;
 * it prints 2, 4, ..., 20 in this order, one per line.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

function increment(value: number): number {
  return value + 1;
}

function double(value: number): number {
  return value * 2;
}

const stage1 = new OrderedStage(increment, 3);
const stage2 = new OrderedStage(double, 3);
// link() returns the stage it is called on: the pipeline's root.
const pipe = new Pipeline<number, number>(stage1.link(stage2));

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);

for await (const result of pipe.results()) console.log(result);
