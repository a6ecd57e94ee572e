/**
 * The front-page example with worker classes: unordered incrementors and
 * doublers, three of each.
 *
 * Twin of the original's `test/tiny2.py`. Run with `deno run examples/tiny2.ts`;
 * it prints 2, 4, ..., 20, one per line, in any order.
 */
import { Pipeline, Stage, UnorderedWorker } from "../mod.ts";

class Incrementor extends UnorderedWorker<number, number> {
  doTask(value: number): number {
    return value + 1;
  }
}

class Doubler extends UnorderedWorker<number, number> {
  doTask(value: number): number {
    return value * 2;
  }
}

const stage1 = new Stage(Incrementor, 3);
const stage2 = new Stage(Doubler, 3);
stage1.link(stage2);
const pipe = new Pipeline<number, number>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);
pipe.put(null);

for await (const result of pipe.results()) console.log(result);
