/**
 * Worker parameters: a worker class whose constructor takes an argument,
 * given to the stage as `args`.
 *
 * Twin of the original's `test/workparam.py`, where `Stage(Adder, 1,
 * number=5)` passes a keyword argument; here constructor arguments are
 * positional: `{ args: [5] }`. Run with `deno run examples/workparam.ts`; it
 * prints 5, 6, ..., 14, one per line.
 */
import { OrderedWorker, Pipeline, Stage } from "../mod.ts";

/** Adds the number it was constructed with to each task. */
class Adder extends OrderedWorker<number, number> {
  number: number;

  constructor(number: number) {
    super();
    this.number = number;
  }

  doTask(value: number): number {
    return value + this.number;
  }
}

const stage1 = new Stage(Adder, 1, { args: [5] });
const pipe = new Pipeline<number, number>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);

for await (const result of pipe.results()) console.log(result);
