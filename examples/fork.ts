/**
 * Forked pipeline: the first stage's results go both to a printer and to a
 * doubler, whose results go to a second printer. Workers are classes here.
 *
 * Twin of the original's `test/fork.py` ("Forked pipeline"). Run with
 * `deno run examples/fork.ts`; it prints 1, ..., 10 (from the first printer)
 * and 2, 4, ..., 20 (from the second), the two streams interleaved.
 */
import { OrderedWorker, Pipeline, Stage } from "../mod.ts";

class Incrementor extends OrderedWorker<number, number> {
  doTask(value: number): number {
    return value + 1;
  }
}

class Doubler extends OrderedWorker<number, number> {
  doTask(value: number): number {
    return value * 2;
  }
}

/** Prints each task and puts no result. */
class Printer extends OrderedWorker<number, never> {
  doTask(value: number): void {
    console.log(value);
  }
}

const stage1 = new Stage(Incrementor);
const stage2 = new Stage(Doubler);
const stage3 = new Stage(Printer);
const stage4 = new Stage(Printer);

stage1.link(stage2);
stage1.link(stage3);
stage2.link(stage4);

const pipe = new Pipeline<number, never>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);
