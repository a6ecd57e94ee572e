/**
 * A "skip" storm (defect D9 of the stress campaign): the same stage and the
 * same number of tasks, once with every task succeeding and once with every
 * task throwing under `onError: "skip"` (no callback), alternately, printing
 * items/s of each and their ratio. A skipped task costs a message to the main
 * thread today; once it does not, the ratio should be near 1.
 *
 * Run with `deno run bench/skip_storm.ts [count] [rounds]` (default 100000, 3).
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const count = Number(Deno.args[0] ?? 100_000);
const rounds = Number(Deno.args[1] ?? 3);

/** Returns its task, or throws if the task is negative. */
function maybeThrow(task: number): number {
  if (task < 0) throw new Error("skipped");
  return task;
}

/** Items/s of `count` tasks through a 2-worker ordered stage under "skip". */
async function pass(fail: boolean): Promise<number> {
  const stage = new OrderedStage(maybeThrow, 2, { onError: "skip" });
  const pipe = new Pipeline<number, number>(stage);
  // Warm up with tasks that succeed, so both passes start alike.
  for (let i = 0; i < 1000; i++) pipe.put(i);
  for (let i = 0; i < 1000; i++) await pipe.get();
  const began = performance.now();
  const producer = (async () => {
    for (let i = 0; i < count; i++) await pipe.put(fail ? -1 - i : i);
    await pipe.put(null);
  })();
  let results = 0;
  for await (const _ of pipe) results++;
  await producer;
  const seconds = (performance.now() - began) / 1000;
  await pipe.done;
  const expected = fail ? 0 : count;
  if (results !== expected || stage.skipped !== count - expected) {
    throw new Error(
      `got ${results} results and ${stage.skipped} skipped, expected ${expected} and ${
        count - expected
      }`,
    );
  }
  return count / seconds;
}

const figure = (perSecond: number) => `${Math.round(perSecond)} items/s`;
for (let round = 1; round <= rounds; round++) {
  const succeed = await pass(false);
  const skip = await pass(true);
  console.log(
    `round ${round}: all succeed ${figure(succeed)}, all throw ("skip") ${
      figure(skip)
    }: skipping is ${(succeed / skip).toFixed(1)}× slower`,
  );
}
