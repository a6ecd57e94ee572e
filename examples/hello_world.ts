/**
 * Hello world: a one-stage pipeline that prints each task it gets.
 *
 * Twin of the original's `test/helloworld.py` ("Hello world" in its examples).
 * Run with `deno run examples/hello_world.ts`; it prints 0, 1, 2 and 3.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

/** Prints the task; returns nothing, so the stage has no results. */
function echo(value: number): void {
  console.log(value);
}

const stage = new OrderedStage(echo);
const pipe = new Pipeline<number, never>(stage);

for (const value of [0, 1, 2, 3]) pipe.put(value);

pipe.put(null); // the stop request: the script ends once it has drained
