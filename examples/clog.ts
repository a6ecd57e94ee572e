/**
 * Handling many tasks: put ten thousand tasks, then read every result.
 *
 * Twin of the original's `test/clog.py` ("Handling many tasks"). Run with
 * `deno run examples/clog.ts`; it prints 1, 2, ..., 10000, one per line.
 *
 * In the original, this program clogs: with sys.maxint tasks, the feed loop
 * fills the system's buffers and never reaches the read loop. Here a `put`
 * that is not awaited never blocks: the tasks that do not fit in the rings
 * wait, in order, in the main thread's memory, so this program ends, but an
 * endless feed would grow memory just the same. Await each `put` to be held
 * back while the pipeline is full, and read results concurrently (see
 * `backlog.ts`), or drain from another pipeline's worker as `drano.ts` does.
 */
import { Pipeline, UnorderedStage } from "../mod.ts";

function increment(value: number): number {
  return value + 1;
}

const stage = new UnorderedStage(increment);
const pipe = new Pipeline<number, number>(stage);

for (let task = 0; task < 10_000; task++) pipe.put(task);

pipe.put(null);

for await (const result of pipe.results()) console.log(result);
