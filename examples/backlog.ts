/**
 * Backlogs: `maxBacklog` bounds how many tasks may wait at a stage's input;
 * whoever puts the next one waits (`await pipe.put(...)`, or a worker putting
 * its result) until one of them starts.
 *
 * Twin of the original's `test/backlog.py`. Two stages: an incrementer with
 * three workers and a backlog of 3, then a decrementer with one worker, twice
 * as slow, and a backlog of 1. The main thread prints `i` each time a put
 * returns, the incrementer `+` and the decrementer `-` for each task they do,
 * and a concurrent reader prints each result (x + 1 - 1 = x). The times are a
 * fifth of the original's (20 ms, 40 ms and 2 ms instead of 0.1 s, 0.2 s and
 * 0.01 s). Run with `deno run examples/backlog.ts`; it prints one line such as
 *
 * ```
 * iiiiii+++iii-0+-1+-2+i-3...
 * ```
 *
 * with ten of each of `i`, `+` and `-`, and the digits 0 to 9 in any order.
 * The `i`s stall after about six: the three workers are busy and three tasks
 * wait, so each further put waits for a worker to start a task.
 */
import { Pipeline, UnorderedStage } from "../mod.ts";

/** Writes text to stdout at once, without a newline. */
function write(text: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text));
}

// The stage functions are shipped to their workers by source: each writes
// for itself rather than calling write().
async function inc(x: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, 20));
  Deno.stdout.writeSync(new TextEncoder().encode("+"));
  return x + 1;
}

async function dec(x: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, 40));
  Deno.stdout.writeSync(new TextEncoder().encode("-"));
  return x - 1;
}

/** Prints every result until the stop has drained (the original's print thread). */
async function printResults(pipeline: Pipeline<number, number>): Promise<void> {
  for await (const result of pipeline.results()) write(String(result));
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const stage1 = new UnorderedStage(inc, 3, { maxBacklog: 3 });
const stage2 = new UnorderedStage(dec, 1, { maxBacklog: 1 });
stage1.link(stage2);
const pipeline = new Pipeline<number, number>(stage1);

const printing = printResults(pipeline);

for (let i = 0; i < 10; i++) {
  await sleep(2);
  await pipeline.put(i); // waits while three tasks wait at stage1
  write("i");
}

await pipeline.put(null);
await printing;
write("\n");
