// A 64 MiB payload through a 3-stage chain (issue 28): as an ordinary Uint8Array (copied in
// and out of the rings at every hop) and as a buffer on the arena (a handle at every hop),
// with the bytes each thread's codec copied (`Encoder.copiedBytes`; a worker's through the
// global symbol mpipe.copiedBytes) and the time from the put to the result.
//
//   deno run --allow-read bench/arena_chain.ts [--rounds N] [--mib M]
//
// Each round builds a fresh pipeline per mode; the table gives medians over the rounds.

import { OrderedStage, Pipeline } from "../mod.ts";
import { Encoder } from "../lib/shared_memory/codec.ts";
import { median } from "./stats.ts";

/** The task: the payload, and the bytes each stage's codec copied so far. */
interface Counted {
  bytes: Uint8Array;
  copied: number[];
}

/** A stage: counts what its thread's codec copied, and passes the task on. */
function count(task: Counted): Counted {
  const copied = (globalThis as unknown as Record<symbol, () => number>)[
    Symbol.for("mpipe.copiedBytes")
  ]!;
  task.copied.push(copied());
  return task;
}

/** One payload of `size` bytes through a fresh 3-stage chain; the copies and the ms. */
async function once(
  size: number,
  arena: boolean,
): Promise<{ ms: number; main: number; stages: number[] }> {
  const first = new OrderedStage(count);
  first.link(new OrderedStage(count).link(new OrderedStage(count)));
  const pipe = new Pipeline<Counted, Counted>(first, {
    arenaBytes: arena ? 2 * size : 0,
  });
  // Workers up before the clock starts.
  await pipe.put({ bytes: new Uint8Array(0), copied: [] });
  await pipe.get();
  const bytes = arena ? pipe.allocSync(size) : new Uint8Array(size);
  bytes.fill(7);
  const before = Encoder.copiedBytes;
  const t0 = performance.now();
  await pipe.put({ bytes, copied: [] });
  const result = (await pipe.get())!;
  const ms = performance.now() - t0;
  const main = Encoder.copiedBytes - before;
  if (result.bytes.length !== size || result.bytes[size - 1] !== 7) {
    throw new Error("arena_chain: the payload came back wrong");
  }
  if (arena) pipe.free(result.bytes);
  await pipe.close();
  await pipe.done;
  return { ms, main, stages: result.copied };
}

function parse(args: string[]): { rounds: number; mib: number } {
  let rounds = 3;
  let mib = 64;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--rounds") rounds = Number(args[++i]);
    else if (args[i] === "--mib") mib = Number(args[++i]);
    else throw new TypeError(`unknown argument ${args[i]}`);
  }
  return { rounds, mib };
}

if (import.meta.main) {
  const { rounds, mib } = parse(Deno.args);
  const size = mib * 2 ** 20;
  const rows: string[] = [];
  for (const arena of [false, true]) {
    const runs = [];
    for (let r = 0; r < rounds; r++) runs.push(await once(size, arena));
    const mb = (n: number) => (n / 2 ** 20).toFixed(1);
    const last = runs[runs.length - 1]!;
    rows.push(
      `| ${arena ? "on the arena" : "ordinary Uint8Array"} | ${
        median(runs.map((r) => r.ms))!.toFixed(1)
      } | ${mb(last.main)} | ${last.stages.map(mb).join(" / ")} |`,
    );
  }
  console.log(
    `## ${mib} MiB through a 3-stage chain — median of ${rounds} round(s)\n`,
  );
  console.log(
    "Copied: bytes of buffers the codec copied, on the main thread (in and out) and in each stage before it passed the task on (in; its copy out is the next thread's in).\n",
  );
  console.log(
    "| payload | ms, put to result | copied, main MiB | copied, stages 1 / 2 / 3 MiB |",
  );
  console.log("|---|--:|--:|--:|");
  for (const row of rows) console.log(row);
}
