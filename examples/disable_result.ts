/**
 * Disabling results: stages whose workers return results, with the results
 * turned off by the `disableResult` option, so the pipelines put out nothing.
 *
 * Twin of the original's `test/disable_result0.py` to `disable_result3.py`
 * ("Disabling results"). Run with `deno run examples/disable_result.ts`. The
 * original's four programs print nothing, then a count of 0 three times; this
 * one runs the four pipelines in turn and prints, for each, how many results
 * it read:
 *
 * ```
 * OrderedStage(yes): 0 results
 * OrderedStage(yes, 4): 0 results
 * Stage(Yes, 4), ordered: 0 results
 * Stage(Yes, 4), unordered: 0 results
 * ```
 */
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  Stage,
  UnorderedWorker,
} from "../mod.ts";

/** A worker that would put each task back out as its result. */
function yes(value: number): number {
  return value;
}

class OrderedYes extends OrderedWorker<number, number> {
  doTask(value: number): number {
    return value;
  }
}

class UnorderedYes extends UnorderedWorker<number, number> {
  doTask(value: number): number {
    return value;
  }
}

/** Puts 0 to 9 and the stop request, and counts the results. */
async function countResults(stage: Stage<number, number>): Promise<number> {
  const pipe = new Pipeline<number, number>(stage);
  for (let number = 0; number < 10; number++) pipe.put(number);
  pipe.put(null);
  let count = 0;
  for await (const _result of pipe.results()) count++;
  await pipe.done;
  return count;
}

const stages: [string, Stage<number, number>][] = [
  ["OrderedStage(yes)", new OrderedStage(yes, 1, { disableResult: true })],
  ["OrderedStage(yes, 4)", new OrderedStage(yes, 4, { disableResult: true })],
  ["Stage(Yes, 4), ordered", new Stage(OrderedYes, 4, { disableResult: true })],
  [
    "Stage(Yes, 4), unordered",
    new Stage(UnorderedYes, 4, { disableResult: true }),
  ],
];
for (const [name, stage] of stages) {
  console.log(`${name}: ${await countResults(stage)} results`);
}
