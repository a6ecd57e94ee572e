import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  type PipelineOptions,
  type Stage,
  UnorderedStage,
} from "../mod.ts";
import { guarded } from "./fixtures/faults/harness.ts";
import { readEnv } from "./support/env.ts";
import { Prng } from "./support/prng.ts";

// Soak: seeded random pipelines (chains and forks of up to five stages of one
// to four workers, ordered and unordered), random tasks (payloads from 0 B to
// 1 MiB, random durations), random producer and consumer speeds. Invariant:
// every task's results arrive exactly once at every leaf, in order where the
// whole path to the leaf keeps order, and every pipeline ends.
//
// The budget is time: SOAK_SECONDS (default 20, for CI; set it higher to soak
// locally, e.g. `SOAK_SECONDS=600 deno test --allow-read --allow-env
// tests/soak_test.ts`). SOAK_SEED replays a failing pipeline: its seed is in
// the failure message. Both are read only if --allow-env grants them.

const DEFAULT_SECONDS = 20;
/** The hang guard of one pipeline: far more than any of them needs. */
const PIPELINE_GUARD_MS = 60_000;
/** The most payload bytes one pipeline's tasks carry in all. */
const PAYLOAD_BUDGET = 12 * 1024 * 1024;

// ---- the task and the stage target ----

/** A task, and (annotated) a result: what to do is encoded in the value. */
interface Task {
  id: number;
  /** Microseconds each stage busy-waits on it (times the stage's speed). */
  spin: number;
  payload: Uint8Array;
  /** The stages it went through, and which of each stage's results it is. */
  hops: string[];
  trail: number[];
}

/**
 * The one target of every stage: busy-waits the task's `spin` µs times the
 * stage's `speed`, sometimes awaits a timer first (every `asyncEvery`-th
 * task), and puts `fan` results, each annotated with the stage's tag and its
 * index. Self-contained: it is shipped to the workers by its source.
 */
class Annotate extends OrderedWorker<Task, Task> {
  tag: string;
  fan: number;
  speed: number;
  asyncEvery: number;

  constructor(tag: string, fan: number, speed: number, asyncEvery: number) {
    super();
    this.tag = tag;
    this.fan = fan;
    this.speed = speed;
    this.asyncEvery = asyncEvery;
  }

  doTask(task: Task): Task | Promise<Task> {
    const end = performance.now() + (task.spin * this.speed) / 1000;
    while (performance.now() < end) {
      // Busy: a task that takes time without yielding.
    }
    const emit = (): Task => {
      const result = (index: number): Task => ({
        id: task.id,
        spin: task.spin,
        payload: task.payload,
        hops: [...task.hops, this.tag],
        trail: [...task.trail, index],
      });
      for (let i = 0; i < this.fan - 1; i++) this.putResult(result(i));
      return result(this.fan - 1);
    };
    if (this.asyncEvery > 0 && task.id % this.asyncEvery === 0) {
      return new Promise((resolve) => setTimeout(resolve, task.id % 2))
        .then(emit);
    }
    return emit();
  }
}

// ---- a random pipeline ----

interface StageSpec {
  tag: string;
  parent: number;
  ordered: boolean;
  size: number;
  fan: number;
  speed: number;
  asyncEvery: number;
  maxBacklog: number | undefined;
}

interface Plan {
  seed: number;
  stages: StageSpec[];
  options: PipelineOptions;
  tasks: { id: number; spin: number; size: number }[];
  /** How the producer and the consumer behave. */
  awaitPuts: number;
  pauses: number;
  reader: "get" | "results" | "leaves" | "get-timeout";
}

function makePlan(seed: number): Plan {
  const random = new Prng(seed);
  const count = random.int(1, 5);
  const stages: StageSpec[] = [];
  const fanTo: number[] = [];
  for (let i = 0; i < count; i++) {
    // Mostly chains, sometimes a fork from any earlier stage.
    const parent = i === 0
      ? -1
      : random.chance(0.6)
      ? i - 1
      : random.int(0, i - 1);
    const upstreamFan = parent < 0 ? 1 : fanTo[parent]!;
    const fan = random.chance(0.15) && upstreamFan * 2 <= 4 ? 2 : 1;
    fanTo.push(upstreamFan * fan);
    stages.push({
      tag: `s${i}`,
      parent,
      ordered: random.chance(0.6),
      size: random.int(1, 4),
      fan,
      speed: random.pick([0, 0.5, 1, 1, 2]),
      asyncEvery: random.chance(0.25) ? random.int(1, 5) : 0,
      maxBacklog: random.chance(0.15) ? random.int(1, 8) : undefined,
    });
  }
  const n = random.pick([
    random.int(0, 10),
    random.int(10, 100),
    random.int(100, 400),
  ]);
  let bytes = 0;
  const tasks = [];
  for (let id = 0; id < n; id++) {
    const roll = random.next();
    let size = roll < 0.7
      ? random.int(0, 64)
      : roll < 0.9
      ? random.int(65, 4096)
      : roll < 0.98
      ? random.int(4097, 128 * 1024)
      : random.int(128 * 1024, 1024 * 1024);
    if (bytes + size > PAYLOAD_BUDGET) size = random.int(0, 64);
    bytes += size;
    const spinRoll = random.next();
    const spin = spinRoll < 0.6
      ? 0
      : spinRoll < 0.9
      ? random.int(1, 200)
      : spinRoll < 0.99
      ? random.int(200, 2000)
      : random.int(2000, 10_000);
    tasks.push({ id, spin, size });
  }
  const options: PipelineOptions = {};
  const ring = random.next();
  if (ring < 0.2) options.ringBytes = 4096;
  else if (ring < 0.4) options.ringBytes = 65536;
  if (random.chance(0.2)) options.spin = 0;
  return {
    seed,
    stages,
    options,
    tasks,
    awaitPuts: random.pick([0, 0, 0.1, 0.5, 1]),
    pauses: random.pick([0, 0.01, 0.05]),
    reader: random.pick(["get", "results", "leaves", "get-timeout"] as const),
  };
}

function describePlan(plan: Plan): string {
  const stages = plan.stages.map((s) =>
    `${s.tag}${s.parent < 0 ? "" : `<-s${s.parent}`} ${
      s.ordered ? "ordered" : "unordered"
    } x${s.size}${s.fan > 1 ? ` fan ${s.fan}` : ""}${
      s.maxBacklog === undefined ? "" : ` maxBacklog ${s.maxBacklog}`
    }${s.asyncEvery ? ` async/${s.asyncEvery}` : ""} speed ${s.speed}`
  );
  return `seed ${plan.seed}: ${plan.tasks.length} tasks, [${
    stages.join("; ")
  }], options ${
    JSON.stringify(plan.options)
  }, reader ${plan.reader}, awaitPuts ${plan.awaitPuts}, pauses ${plan.pauses}`;
}

/** A payload whose bytes say which task it belongs to. */
function payloadOf(id: number, size: number): Uint8Array {
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (id * 31 + i) & 0xff;
  return payload;
}

function checkPayload(result: Task, size: number): void {
  const { id, payload } = result;
  assert.ok(payload instanceof Uint8Array, `task ${id}: payload ${payload}`);
  assert.equal(payload.length, size, `task ${id}: payload length`);
  // Every byte of small payloads, a sample of large ones.
  const step = size <= 65536 ? 1 : 4093;
  for (let i = 0; i < size; i += step) {
    if (payload[i] !== ((id * 31 + i) & 0xff)) {
      assert.fail(`task ${id}: payload byte ${i} is ${payload[i]}`);
    }
  }
  if (size > 0 && payload[size - 1] !== ((id * 31 + size - 1) & 0xff)) {
    assert.fail(`task ${id}: last payload byte is wrong`);
  }
}

/** Sorts keys (task id, then each stage's result index) in the order an ordered path keeps. */
function compareKeys(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return a.length - b.length;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs one random pipeline and checks the invariant; returns its numbers. */
async function soakOne(plan: Plan): Promise<{ results: number }> {
  const random = new Prng(plan.seed ^ 0x5bd1e995);
  const stages: Stage<Task, Task>[] = plan.stages.map((spec) => {
    const options = {
      name: spec.tag,
      args: [spec.tag, spec.fan, spec.speed, spec.asyncEvery],
      ...(spec.maxBacklog === undefined ? {} : { maxBacklog: spec.maxBacklog }),
    };
    return spec.ordered
      ? new OrderedStage(Annotate, spec.size, options)
      : new UnorderedStage(Annotate, spec.size, options);
  });
  plan.stages.forEach((spec, i) => {
    if (spec.parent >= 0) stages[spec.parent]!.link(stages[i]!);
  });
  const leaves = plan.stages
    .map((_, i) => i)
    .filter((i) => !plan.stages.some((s) => s.parent === i));
  // Each leaf's path from the root: its tags, whether all keep order, its fan-outs.
  const paths = new Map(leaves.map((leaf) => {
    const path: StageSpec[] = [];
    for (let at = leaf; at >= 0; at = plan.stages[at]!.parent) {
      path.unshift(plan.stages[at]!);
    }
    return [plan.stages[leaf]!.tag, path];
  }));

  const pipe = new Pipeline<Task, Task>(stages[0]!, plan.options);
  const received = new Map<string, Task[]>(
    leaves.map((leaf) => [plan.stages[leaf]!.tag, []]),
  );
  const receive = (result: Task) => {
    const leaf = result.hops.at(-1) ?? "(none)";
    const list = received.get(leaf);
    assert.ok(list !== undefined, `a result from ${leaf}, which is not a leaf`);
    list.push(result);
  };

  const produce = async () => {
    const puts: Promise<void>[] = [];
    for (const { id, spin, size } of plan.tasks) {
      const task: Task = {
        id,
        spin,
        payload: payloadOf(id, size),
        hops: [],
        trail: [],
      };
      const put = pipe.put(task);
      if (random.chance(plan.awaitPuts)) await put;
      else puts.push(put);
      if (random.chance(plan.pauses)) await sleep(random.int(0, 3));
    }
    puts.push(pipe.put(null));
    await Promise.all(puts);
  };

  const pause = async () => {
    if (random.chance(plan.pauses)) await sleep(random.int(1, 5));
  };
  const consume = async () => {
    switch (plan.reader) {
      case "get":
        for (let result; (result = await pipe.get()) !== null;) {
          receive(result);
          await pause();
        }
        break;
      case "get-timeout":
        for (;;) {
          let result: Task | null;
          try {
            result = await pipe.get({ timeout: random.int(0, 3) });
          } catch (error) {
            assert.equal((error as Error).name, "TimeoutError");
            continue;
          }
          if (result === null) break;
          receive(result);
          await pause();
        }
        break;
      case "results":
        for await (const result of pipe.results()) {
          receive(result);
          await pause();
        }
        break;
      case "leaves":
        await Promise.all(leaves.map(async (leaf) => {
          for await (const result of stages[leaf]!.results()) {
            receive(result);
            await pause();
          }
        }));
        break;
    }
  };

  await guarded(
    pipe,
    () => Promise.all([produce(), consume()]),
    PIPELINE_GUARD_MS,
    describePlan(plan),
  );

  let total = 0;
  const sizes = new Map(plan.tasks.map((t) => [t.id, t.size]));
  for (const [leaf, results] of received) {
    const path = paths.get(leaf)!;
    const tags = path.map((s) => s.tag);
    // Every result index combination of every task, once.
    let expected: number[][] = plan.tasks.map((t) => [t.id]);
    for (const stage of path) {
      expected = expected.flatMap((key) =>
        Array.from({ length: stage.fan }, (_, i) => [...key, i])
      );
    }
    const got = results.map((r) => [r.id, ...r.trail]);
    for (const result of results) {
      assert.deepEqual(result.hops, tags, `leaf ${leaf}: hops`);
      checkPayload(result, sizes.get(result.id)!);
    }
    const where = `leaf ${leaf}`;
    if (path.every((s) => s.ordered)) {
      assert.deepEqual(got, expected, `${where}: ordered results`);
    } else {
      assert.deepEqual(
        got.sort(compareKeys),
        expected,
        `${where}: every result exactly once`,
      );
    }
    total += results.length;
  }
  return { results: total };
}

// ---- the soak ----

Deno.test("soak: random chains and forks deliver every result exactly once at every leaf, in order on ordered paths, and end", async () => {
  const fromEnv = Number(readEnv("SOAK_SECONDS"));
  const seconds = fromEnv > 0 ? fromEnv : DEFAULT_SECONDS;
  const seedText = readEnv("SOAK_SEED");
  const base = seedText !== undefined && seedText !== ""
    ? Number(seedText) >>> 0
    : crypto.getRandomValues(new Uint32Array(1))[0]!;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  let pipelines = 0;
  let tasks = 0;
  let results = 0;
  let stages = 0;
  let slowest = 0;
  while (pipelines === 0 || performance.now() < deadline) {
    const seed = (base + Math.imul(pipelines, 0x9e3779b9)) >>> 0;
    const plan = makePlan(seed);
    const start = performance.now();
    try {
      results += (await soakOne(plan)).results;
      slowest = Math.max(slowest, performance.now() - start);
    } catch (error) {
      throw new Error(
        `Soak failed on pipeline ${
          pipelines + 1
        } (replay: SOAK_SEED=${seed}): ${describePlan(plan)}`,
        { cause: error },
      );
    }
    pipelines++;
    tasks += plan.tasks.length;
    stages += plan.stages.length;
  }
  const elapsed = (performance.now() - started) / 1000;
  console.log(
    `soak: ${pipelines} pipelines (${stages} stages), ${tasks} tasks, ${results} results in ${
      elapsed.toFixed(1)
    } s, the slowest ${
      (slowest / 1000).toFixed(1)
    } s (budget ${seconds} s, base seed ${base})`,
  );
});
