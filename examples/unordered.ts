/**
 * Unordered stages: the pipeline-with-output example with two unordered
 * workers per stage, so results may come out in any order.
 *
 * Twin of the original's `test/unordered.py` ("Unordered worker/stage"). Run
 * with `deno run examples/unordered.ts`; it prints 2, 4, ..., 20, one per
 * line, in any order. (With one worker per stage, an unordered stage keeps
 * the order anyway.)
 */
import { Pipeline, UnorderedStage } from "../mod.ts";

function increment(value: number): number {
  return value + 1;
}

function double(value: number): number {
  return value * 2;
}

const stage1 = new UnorderedStage(increment, 2);
const stage2 = new UnorderedStage(double, 2);
stage1.link(stage2);
const pipe = new Pipeline<number, number>(stage1);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);

for await (const result of pipe.results()) console.log(result);
