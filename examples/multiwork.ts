/**
 * Multiple workers per stage: five busy tasks shared by two workers.
 *
 * Twin of the original's `test/multiwork.py` ("Multiple workers per stage").
 * Each task is a number of turns of an empty loop (the first command-line
 * argument, default 10). Like the original, it prints nothing: time it, with
 * an argument from `count_nullops.ts` so that each task takes about a second:
 *
 * ```sh
 * deno run examples/count_nullops.ts | xargs time deno run examples/multiwork.ts
 * ```
 *
 * Two workers run five one-second tasks in about three seconds: two, two,
 * then one.
 */
import { Pipeline, UnorderedStage } from "../mod.ts";

/** Busy-waits for `amount` turns of an empty loop. */
function forLoop(amount: number): void {
  for (let i = 0; i < amount; i++) {
    // A null operation.
  }
}

const stage = new UnorderedStage(forLoop, 2);
const pipe = new Pipeline<number, never>(stage);

const amount = Deno.args.length >= 1 ? Number.parseInt(Deno.args[0]!, 10) : 10;
for (let task = 0; task < 5; task++) pipe.put(amount);

pipe.put(null);
