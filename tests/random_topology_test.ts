import assert from "node:assert/strict";
import {
  FilterStage,
  OrderedStage,
  OrderedWorker,
  Pipeline,
  type PipelineOptions,
  type Stage,
  StageError,
  type StageOptions,
  UnorderedStage,
} from "../mod.ts";
import { readEnv } from "./support/env.ts";
import { Prng } from "./support/prng.ts";

// Random topologies, in the spirit of a stress campaign: seeded random
// pipelines of chains, forks, joins and FilterStages, ordered and unordered
// stages of one to four workers running one or several tasks at once
// (`concurrency`), some sandboxed (`permissions`), some elastic (workers
// that join and leave as the run goes, `{ min, max }`), on small rings (4 KiB to
// 64 KiB) with records from empty to twice a ring (fragmented past a quarter
// of it), tasks of random lengths, put one by one or fed (`feed()` of an
// array, a generator or an async generator), and faults: tasks that throw,
// reject or are denied by their sandbox under every onError ("fail", "skip",
// a function), workers that call close() under `restart`, tasks that overrun
// `taskTimeout`, `maxBacklog` on random stages, and stages that `retry`, where
// some tasks fail once (throw, reject or close()) and then succeed.
//
// Each task id has at most one fault, at one stage, so the expected output is
// exact: every surviving (path, task, result index) reaches its leaf once, in
// order at a leaf that is ordered relative to the input (every stage on every
// path to it ordered, and no join on the way); each stage's `skipped` counts
// its faulty tasks, once per copy that reached it; a callback stage's
// function gets one StageError per skipped task; a plan with a failing
// stage rejects with a StageError naming that stage; and nothing hangs (a
// run that makes no progress for STALL_MS fails with its seed). One stage may
// be lossy: it runs several tasks at once and loses workers (close() or a
// taskTimeout), so each loss also drops the other tasks its worker held. Such
// a stage is reached by one copy of each task and has no faults after it, so
// what it dropped is exact all the same: the tasks whose results are all
// missing, no more than (concurrency - 1) a loss, each counted in its
// `skipped` and reported once.
//
// Fault families: each family of once-known defects (tests/defects_test.ts,
// all fixed) is behind a flag of FAMILIES below, all on. A flag that is off
// only vetoes what was drawn (a fault becomes a plain throw, a maxBacklog is
// dropped, a payload is cut down), so the rest of each plan stays the same:
// replaying a failing seed with one family off, or with all but one off,
// tells which family made it fail (a test's name lists the families its plan
// contains, which it may or may not hit).
//
// One test per seed, but one for all the seeds whose plan has a sandboxed
// stage: they run in a child `deno test` with --unstable-worker-options.
// The default is a CI-sized run (SEEDS seeds, about 25 s with every flag off
// on a quiet 2-core box; each plan that hangs adds STALL_MS). By hand:
// `MPIPE_SEEDS=5000 deno test --allow-read --allow-run --allow-env
// tests/random_topology_test.ts` (or MPIPE_SEEDS=2001-3000 for a part of a
// long run), and MPIPE_SEED=n to replay seed n alone; both are read only if
// --allow-env grants them. A failure names its seed and prints its plan:
// every stage, its options and its faults (`throw@3,17`: tasks 3 and 17
// throw there).

/**
 * Families of once-known defects (tests/defects_test.ts) the generator may
 * produce: set a flag to false to keep that family out of the runs.
 */
const FAMILIES = {
  /** D1: a task that overruns taskTimeout and then finishes. */
  timeoutOverrun: true,
  /** D2: maxBacklog on a join fed by an ordered stage of two or more workers. */
  joinBacklog: true,
  /** D3: a FilterStage whose tasks and results do not fit the rings together. */
  filterBig: true,
  /** D6: restart with a worker that dies in doInit(). */
  initDeath: true,
  /**
   * N5: check a callback stage's onError calls when the reader sees the end
   * of results; when false, they are checked only once `done` settles.
   */
  lateCallbacks: true,
  /**
   * F1, found by this test (tests/defects_test.ts has its regression test):
   * a task blocked in putResult() by a full ring counts against its
   * taskTimeout, so its worker is replaced mid-write: healthy tasks are
   * dropped (counted in `skipped`) and a fragmented record cut short
   * corrupts the stream. Here: a stage with a short taskTimeout (it has a
   * task that overruns it) and two results per task (one by putResult()).
   */
  timeoutPutResult: true,
  /**
   * Issue 21 (items 1 and 7, tests/concurrency_test.ts): a worker of several
   * tasks at once that is lost (close() with restart, or a taskTimeout)
   * dropped its neighbours' tasks too, and an ordered stage then hung, or
   * dropped tasks uncounted. Here: a lossy stage (see above).
   */
  concurrentLoss: true,
};

/**
 * The dimensions drawn on top of each plan (a second random stream, so a
 * seed's topology and faults are those it had before them): a flag that is
 * off keeps that dimension out (concurrency 1, put one by one, no sandbox).
 */
const DIMENSIONS = {
  concurrency: true,
  feed: true,
  /**
   * Sandboxed stages need Deno's --unstable-worker-options, which a test
   * cannot see without -A: the plans that draw one run in a child
   * `deno test` with the flag (see the end of the file).
   */
  sandbox: true,
  /**
   * Elastic stages (issue 27): a stage's size becomes { min, max: size },
   * with a short idleMs, so that workers come and go during the run; and
   * the pipeline's `threads` budget is drawn too.
   */
  elastic: true,
  /**
   * Payloads on the pipeline's arena (issue 28), in debug mode: they travel
   * by reference, and every result's buffers are freed at the end, when
   * none may be left live (a run that ends by its stop).
   */
  arena: true,
  /**
   * Stages that retry (issue 26): 2 or 3 attempts, where some tasks fail
   * once (`flaky`) and must then come out as if they never failed; the
   * stage's other faults fail every attempt, and are skipped (or fail the
   * pipeline) once, as before.
   */
  retry: true,
};

/** This is that child: it runs the seeds of MPIPE_SEED, sandboxes and all. */
const SANDBOX_CHILD = readEnv("MPIPE_SANDBOX_CHILD") === "1";

/** How many seeds a plain `deno test` runs. */
const SEEDS = 40;
/** A run that makes no progress (no result, put or callback) for this long has hung: a hang guard, not a speed check. */
const STALL_MS = 5_000;
/** The most a run may take in all: a hang guard, not a speed check. */
const RUN_MS = 20_000;
/** The most payload bytes one run's results carry in all. */
const PAYLOAD_BUDGET = 24 * 1024 * 1024;
/** The taskTimeout of a stage whose tasks overrun it: far above what a healthy task takes on a busy 2-core box. */
const TASK_TIMEOUT_MS = 600;
const RING_SIZES = [4096, 8192, 16384, 32768, 65536];

// ---- the task and the worker ----

/** A task, and a result: the stages it went through and which result of each it is. */
interface Task {
  id: number;
  payload: Uint8Array;
  hops: string[];
  trail: number[];
}

type FaultKind =
  /** The task throws. */
  | "throw"
  /** The task's Promise rejects. */
  | "reject"
  /** The worker calls close() mid-task. */
  | "close"
  /** The task busy-waits past its taskTimeout, then finishes (D1). */
  | "overrun"
  /** The task blocks past its taskTimeout until the run ends, then closes. */
  | "hang"
  /** The task reads the environment, which its sandbox denies. */
  | "denied";

/** What a `Hop` worker is told. */
interface HopConfig {
  tag: string;
  /** Results per task. */
  fan: number;
  /** The longest busy wait of a task, in µs (each task waits a share of it). */
  busyUs: number;
  /** Every this many tasks awaits a timer first (0: never). */
  asyncEvery: number;
  /** [task id, fault] pairs. */
  faults: [number, FaultKind][];
  timeoutMs: number;
  /** Word 0 is set when the run ends: "hang" tasks wait for it. */
  release: Int32Array;
  /** doInit() calls close(). */
  initDeath: boolean;
  /** [task id, fault] pairs of tasks that fail their first attempt only. */
  flaky: [number, "throw" | "reject" | "close"][];
  /** Attempts of each (stage, task id): the flaky tasks count theirs here. */
  tries: Int32Array;
  /** Where this stage's counts start in `tries`. */
  triesAt: number;
}

/**
 * The target of every stage: waits a little, injects its fault for the task
 * if it has one, and puts `fan` results, each the task annotated with the
 * stage's tag and the result's index. Takes a FilterStage's `[task, results]`
 * as its task. Self-contained: it is shipped to the workers by its source.
 */
class Hop extends OrderedWorker<Task | [Task, Task[]], Task> {
  config: HopConfig;
  faults: Map<number, FaultKind>;
  flaky: Map<number, string>;

  constructor(config: HopConfig) {
    super();
    this.config = config;
    this.faults = new Map(config.faults);
    this.flaky = new Map(config.flaky);
  }

  override doInit(): void {
    if (this.config.initDeath) {
      (globalThis as unknown as { close(): void }).close();
    }
  }

  doTask(input: Task | [Task, Task[]]): Task | null | Promise<Task | null> {
    // A FilterStage's [task, results], perhaps of one fed by another filter.
    let unwrapped: unknown = input;
    while (Array.isArray(unwrapped)) unwrapped = unwrapped[0];
    const task = unwrapped as Task;
    const { tag, fan, busyUs, asyncEvery, timeoutMs, release } = this.config;
    const busy = (ms: number) => {
      const end = performance.now() + ms;
      while (performance.now() < end) {
        // Busy: a task that takes time without yielding.
      }
    };
    const close = () => (globalThis as unknown as { close(): void }).close();
    const flaky = this.flaky.get(task.id);
    if (
      flaky !== undefined &&
      Atomics.add(this.config.tries, this.config.triesAt + task.id, 1) === 0
    ) {
      if (flaky === "close") close();
      const error = new Error(`flaky: ${tag} fails once on task ${task.id}`);
      if (flaky === "throw") throw error;
      return Promise.reject(error);
    }
    switch (this.faults.get(task.id)) {
      case "throw":
        throw new Error(`fault: ${tag} throws on task ${task.id}`);
      case "reject":
        return Promise.resolve().then(() => {
          throw new Error(`fault: ${tag} rejects on task ${task.id}`);
        });
      case "close":
        close();
        return null;
      case "overrun":
        busy(timeoutMs * 2.5);
        break;
      case "hang":
        Atomics.wait(release, 0, 0, 60_000);
        close();
        return null;
      case "denied":
        // NotCapable: the sandbox has no env access.
        Deno.env.get("HOME");
        throw new Error(`fault: ${tag} was not denied on task ${task.id}`);
    }
    busy((busyUs * ((task.id * 7919) % 5)) / 4000);
    const result = (index: number): Task => ({
      id: task.id,
      payload: task.payload,
      hops: [...task.hops, tag],
      trail: [...task.trail, index],
    });
    // Before any await: with concurrency, putResult() works only there.
    for (let i = 0; i < fan - 1; i++) this.putResult(result(i));
    if (asyncEvery > 0 && task.id % asyncEvery === 0) {
      return new Promise((resolve) => setTimeout(resolve, task.id % 3))
        .then(() => result(fan - 1));
    }
    return result(fan - 1);
  }
}

// ---- a random plan ----

type Policy = "fail" | "skip" | "callback";

/** An elastic stage's fewest workers and idleMs (its most is its `size`). */
interface ElasticSpec {
  min: number;
  idleMs: number;
}

interface HopSpec {
  kind: "hop";
  tag: string;
  parents: number[];
  ordered: boolean;
  size: number;
  elastic?: ElasticSpec;
  fan: number;
  busyUs: number;
  asyncEvery: number;
  maxBacklog: number | undefined;
  onError: Policy;
  restart: boolean;
  taskTimeout: number | undefined;
  faults: Map<number, FaultKind>;
  initDeath: boolean;
  /** Tasks each worker runs at once. */
  concurrency: number;
  permissions: StageOptions["permissions"];
  /** Its `retry` attempts (1: none), and the tasks that fail once. */
  retry: number;
  flaky: Map<number, "throw" | "reject" | "close">;
}

/** A stage of a FilterStage's sub-pipeline (a chain, without faults). */
interface SubSpec {
  tag: string;
  ordered: boolean;
  size: number;
  elastic?: ElasticSpec;
  busyUs: number;
}

interface FilterSpec {
  kind: "filter";
  tag: string;
  parents: number[];
  maxTasks: number;
  dropResults: boolean;
  cacheResults: boolean;
  doStopTask: boolean;
  subs: SubSpec[][];
}

type NodeSpec = HopSpec | FilterSpec;

interface Plan {
  seed: number;
  nodes: NodeSpec[];
  options: PipelineOptions & { ringBytes: number };
  /** Each task's payload size. */
  sizes: number[];
  /** The stage expected to fail the pipeline, if any. */
  failing: number | undefined;
  reader: "get" | "results" | "leaves" | "get-timeout";
  /** How the tasks go in: put one by one, or fed. */
  input: "put" | "feed-array" | "feed-generator" | "feed-async";
  /** The lossy stage, if any (see the top of the file). */
  lossy: number | undefined;
  awaitPuts: number;
  pauses: number;
  /** The known-defect families the plan contains. */
  families: (keyof typeof FAMILIES)[];
  /** Whether the payloads are on the arena. */
  arena: boolean;
}

/** Every path from the root to node `to`, as lists of node indices. */
function pathsTo(nodes: NodeSpec[], to: number): number[][] {
  const node = nodes[to]!;
  if (node.parents.length === 0) return [[to]];
  return node.parents.flatMap((parent) =>
    pathsTo(nodes, parent).map((path) => [...path, to])
  );
}

function fanOf(node: NodeSpec): number {
  return node.kind === "hop" ? node.fan : 1;
}

/** How many copies of each task reach node `at` (its paths, times the fan-outs before it). */
function arrivals(nodes: NodeSpec[], at: number): number {
  return pathsTo(nodes, at).reduce(
    (sum, path) =>
      sum + path.slice(0, -1).reduce((p, i) => p * fanOf(nodes[i]!), 1),
    0,
  );
}

function leavesOf(nodes: NodeSpec[]): number[] {
  return nodes.map((_, i) => i).filter((i) =>
    !nodes.some((n) => n.parents.includes(i))
  );
}

/** Whether leaf `leaf` keeps the order of the input: one path, every stage on it ordered. */
function isOrderedLeaf(nodes: NodeSpec[], leaf: number): boolean {
  const paths = pathsTo(nodes, leaf);
  return paths.length === 1 &&
    paths[0]!.every((i) => {
      const node = nodes[i]!;
      return node.kind === "filter" || node.ordered;
    });
}

/** A drawn fault, or "throw" in its place if its family is off. */
function allowed<K extends FaultKind | "initDeath">(kind: K): K | "throw" {
  if (kind === "overrun" && !FAMILIES.timeoutOverrun) return "throw";
  if (kind === "initDeath" && !FAMILIES.initDeath) return "throw";
  return kind;
}

function makePlan(seed: number): Plan {
  const random = new Prng(seed);
  const families = new Set<keyof typeof FAMILIES>();
  const count = random.int(1, 6);
  const nodes: NodeSpec[] = [];
  for (let i = 0; i < count; i++) {
    const parents: number[] = [];
    if (i > 0) {
      parents.push(random.chance(0.6) ? i - 1 : random.int(0, i - 1));
      if (i >= 2 && random.chance(0.3)) {
        const other = random.int(0, i - 1);
        if (!parents.includes(other)) parents.push(other);
      }
    }
    const tag = `s${i}`;
    if (random.chance(0.15)) {
      const subs = Array.from(
        { length: random.int(1, 2) },
        (_, s) =>
          Array.from({ length: random.int(1, 2) }, (_, k) => ({
            tag: `${tag}.${s}${"ab"[k]}`,
            ordered: random.chance(0.6),
            size: random.int(1, 2),
            busyUs: random.pick([0, 100, 1000]),
          })),
      );
      nodes.push({
        kind: "filter",
        tag,
        parents,
        maxTasks: random.chance(0.8) ? random.int(1, 4) : random.int(8, 64),
        dropResults: random.chance(0.5),
        cacheResults: random.chance(0.3),
        doStopTask: random.chance(0.8),
        subs,
      });
      continue;
    }
    // Copies of each task that reach this stage: fan out only while few do.
    const copies = parents.length === 0 ? 1 : parents.reduce(
      (sum, p) => sum + arrivals(nodes, p) * fanOf(nodes[p]!),
      0,
    );
    nodes.push({
      kind: "hop",
      tag,
      parents,
      ordered: random.chance(0.6),
      size: random.int(1, 4),
      fan: random.chance(0.15) && copies <= 2 ? 2 : 1,
      busyUs: random.pick([0, 0, 50, 200, 1000]),
      asyncEvery: random.chance(0.25) ? random.int(1, 5) : 0,
      maxBacklog: undefined,
      onError: "fail",
      restart: random.chance(0.15),
      taskTimeout: random.chance(0.1) ? 5_000 : undefined,
      faults: new Map(),
      initDeath: false,
      concurrency: 1,
      permissions: undefined,
      retry: 1,
      flaky: new Map(),
    });
  }
  // maxBacklog on random stages; on a join fed by an ordered stage of two or
  // more workers only with FAMILIES.joinBacklog (D2). A flag that is off only
  // vetoes what was drawn, so the rest of the plan stays the same: a seed
  // replayed with a family off shows whether that family made it fail.
  for (const node of nodes) {
    if (node.kind !== "hop") continue;
    const wanted = random.chance(0.2);
    const max = random.int(1, 8);
    if (!wanted) continue;
    const joinBacklog = node.parents.length > 1 &&
      node.parents.some((p) => {
        const parent = nodes[p]!;
        return parent.kind === "hop" && parent.ordered && parent.size > 1;
      });
    if (joinBacklog && !FAMILIES.joinBacklog) continue;
    if (joinBacklog) families.add("joinBacklog");
    node.maxBacklog = max;
  }

  const ringBytes = random.pick(RING_SIZES);
  // Mostly short runs; a few long ones, which some deadlocks need (D2).
  const n = random.chance(0.08) ? random.int(1000, 3000) : random.pick([
    random.int(0, 10),
    random.int(10, 100),
    random.int(100, 300),
  ]);
  // Payloads: mostly small, some past a quarter of a ring (fragmented), a
  // few up to twice a ring. With a filter, tasks and results must fit its
  // rings together (maxTasks of each), unless FAMILIES.filterBig (D3).
  const filters = nodes.filter((n): n is FilterSpec => n.kind === "filter");
  const maxTasks = Math.max(0, ...filters.map((f) => f.maxTasks));
  /** Past this, maxTasks tasks and their results may not fit a ring together. */
  const unfit = filters.length === 0
    ? Infinity
    : Math.floor(ringBytes / (2 * (maxTasks + 1)));
  /** With FAMILIES.filterBig off, payloads stay well below it. */
  const filterCap = FAMILIES.filterBig ? Infinity : Math.floor(unfit / 4) - 64;
  const copies = leavesOf(nodes).reduce(
    (sum, leaf) => sum + arrivals(nodes, leaf) * fanOf(nodes[leaf]!),
    0,
  );
  let bytes = 0;
  const sizes: number[] = [];
  for (let id = 0; id < n; id++) {
    const roll = random.next();
    let size = roll < 0.7
      ? random.int(0, 64)
      : roll < 0.9
      ? random.int(65, ringBytes >> 2)
      : random.int(ringBytes >> 2, 2 * ringBytes);
    if (size > filterCap) size %= Math.max(1, filterCap);
    if ((bytes + size) * copies > PAYLOAD_BUDGET) size %= 17;
    if (size > unfit) families.add("filterBig");
    bytes += size;
    sizes.push(size);
  }

  // Faults: each task id at most once, at one stage. At most one stage fails
  // the pipeline; every other faulty stage skips its faults.
  /** Gives `node` a short taskTimeout, for a task that overruns it. */
  const timed = (node: HopSpec, kind: "overrun" | "hang") => {
    node.taskTimeout = TASK_TIMEOUT_MS;
    if (kind === "overrun") families.add("timeoutOverrun");
    if (node.fan > 1) families.add("timeoutPutResult");
  };
  const free = Array.from({ length: n }, (_, id) => id);
  const takeId = () => free.splice(random.int(0, free.length - 1), 1)[0]!;
  const hops = nodes.map((_, i) => i).filter((i) => nodes[i]!.kind === "hop");
  let failing: number | undefined;
  if (n > 0 && hops.length > 0 && random.chance(0.25)) {
    failing = random.pick(hops);
    const node = nodes[failing] as HopSpec;
    let how = allowed(
      random.pick(
        ["throw", "reject", "close", "hang", "overrun", "initDeath"] as const,
      ),
    );
    if (
      (how === "overrun" || how === "hang") && node.fan > 1 &&
      !FAMILIES.timeoutPutResult
    ) how = "throw";
    node.onError = "fail";
    if (how === "initDeath") {
      node.restart = true;
      node.initDeath = true;
      families.add("initDeath");
    } else {
      node.restart = false;
      node.faults.set(takeId(), how);
      if (how === "overrun" || how === "hang") timed(node, how);
    }
  }
  for (const i of hops) {
    const node = nodes[i] as HopSpec;
    if (i === failing) continue;
    node.onError = random.pick(["fail", "skip", "callback"] as const);
    if (free.length === 0 || !random.chance(0.5)) continue;
    if (node.onError === "fail") {
      node.onError = random.pick(["skip", "callback"]);
    }
    // Tasks past a taskTimeout are slow: one per stage, where few copies arrive.
    const kinds: FaultKind[] = arrivals(nodes, i) <= 2
      ? ["throw", "reject", "close", "hang", "overrun"]
      : ["throw", "reject", "close"];
    const faults = random.int(1, 5);
    for (let f = 0; f < faults && free.length > 0; f++) {
      let kind = allowed(random.pick(kinds));
      const slow = (k: string) => k === "overrun" || k === "hang";
      if (slow(kind) && [...node.faults.values()].some(slow)) kind = "throw";
      if (slow(kind) && node.fan > 1 && !FAMILIES.timeoutPutResult) {
        kind = "throw";
      }
      // Each of these costs the worker: at most two a stage, as when three
      // in a row failed the stage (before issue 26, only workers lost before
      // they are ready count). Every copy of a task that reaches the stage
      // (forks) costs one.
      const losing = (k: string) => k === "close" || slow(k);
      const lost = [...node.faults.values()].filter(losing).length;
      if (losing(kind) && (lost + 1) * arrivals(nodes, i) > 2) kind = "throw";
      const id = takeId();
      if (kind === "overrun" || kind === "hang") timed(node, kind);
      node.faults.set(id, kind);
      if (kind === "close") node.restart = true;
    }
  }

  const options: Plan["options"] = { ringBytes };
  if (random.chance(0.3)) options.spin = 0;
  const reader = random.pick(
    ["get", "results", "leaves", "get-timeout"] as const,
  );
  const { input, lossy, arena } = drawDimensions(
    seed,
    nodes,
    failing,
    families,
  );
  if (arena) options.arenaDebug = true;
  drawElastic(seed, nodes, options);
  drawRetries(seed, nodes, failing, lossy, sizes.length);
  if (
    FAMILIES.lateCallbacks && failing === undefined && reader !== "leaves" &&
    nodes.some((node) =>
      node.kind === "hop" && node.onError === "callback" && node.faults.size > 0
    )
  ) families.add("lateCallbacks");
  return {
    seed,
    nodes,
    options,
    sizes,
    failing,
    reader,
    input,
    lossy,
    awaitPuts: random.pick([0, 0, 0.1, 0.5, 1]),
    pauses: random.pick([0, 0.01, 0.05]),
    families: [...families],
    arena,
  };
}

/** Whether `kind` costs its worker (it is replaced). */
function losesWorker(kind: FaultKind): boolean {
  return kind === "close" || kind === "hang" || kind === "overrun";
}

/** The stages after node `at`, on every path from it. */
function descendantsOf(nodes: NodeSpec[], at: number): number[] {
  const found = new Set<number>();
  const visit = (i: number) => {
    nodes.forEach((node, child) => {
      if (node.parents.includes(i) && !found.has(child)) {
        found.add(child);
        visit(child);
      }
    });
  };
  visit(at);
  return [...found];
}

/**
 * Draws the dimensions of DIMENSIONS on top of a plan, from a random stream
 * of their own: each stage's concurrency and sandbox (whose "throw" faults
 * may become "denied"), and the input. A stage of several tasks at once
 * that loses workers is lossy; at most one is, and only where what it drops
 * stays exact (see the top of the file): elsewhere it runs one at a time.
 */
function drawDimensions(
  seed: number,
  nodes: NodeSpec[],
  failing: number | undefined,
  families: Set<keyof typeof FAMILIES>,
): { input: Plan["input"]; lossy: number | undefined; arena: boolean } {
  const random = new Prng(seed ^ 0x2c1b3c6d);
  let lossy: number | undefined;
  nodes.forEach((node, i) => {
    if (node.kind !== "hop") return;
    const concurrency = random.chance(0.35) ? random.int(2, 8) : 1;
    const sandbox = random.chance(0.2);
    const permissions = random.pick(
      ["none", { env: false }, {
        read: false,
        env: false,
        net: false,
      }] as const,
    );
    const denials = [...node.faults.keys()].map(() => random.chance(0.5));
    if (DIMENSIONS.concurrency && concurrency > 1) {
      const loses = [...node.faults.values()].some(losesWorker);
      const exact = i !== failing && lossy === undefined &&
        arrivals(nodes, i) === 1 &&
        descendantsOf(nodes, i).every((d) => {
          const after = nodes[d]!;
          return after.kind !== "hop" || after.faults.size === 0;
        });
      if (!loses || (FAMILIES.concurrentLoss && exact)) {
        node.concurrency = concurrency;
        if (loses) {
          lossy = i;
          families.add("concurrentLoss");
        }
      }
    }
    if (DIMENSIONS.sandbox && sandbox) {
      node.permissions = permissions;
      [...node.faults].forEach(([id, kind], f) => {
        if (kind === "throw" && denials[f]) node.faults.set(id, "denied");
      });
    }
  });
  const input = random.pick(
    ["put", "put", "feed-array", "feed-generator", "feed-async"] as const,
  );
  const arena = random.chance(0.5);
  return {
    input: DIMENSIONS.feed ? input : "put",
    lossy,
    arena: DIMENSIONS.arena && arena,
  };
}

/**
 * Draws stages that retry, from a random stream of their own: only where a
 * flaky task's attempts are its own (one copy of each task reaches the
 * stage) and every other fault fails each attempt alike (no overrun or hang,
 * no lossy stage, whose losses drop their neighbours, nor the failing one).
 */
function drawRetries(
  seed: number,
  nodes: NodeSpec[],
  failing: number | undefined,
  lossy: number | undefined,
  tasks: number,
): void {
  const random = new Prng(seed ^ 0x26ea7e11);
  nodes.forEach((node, i) => {
    if (node.kind !== "hop" || !random.chance(0.3)) return;
    const attempts = random.int(2, 3);
    const flaky = Array.from({ length: random.int(1, 4) }, () => ({
      id: random.int(0, Math.max(0, tasks - 1)),
      kind: random.pick(["throw", "reject", "close"] as const),
    }));
    const slow = [...node.faults.values()].some((k) =>
      k === "overrun" || k === "hang"
    );
    if (
      !DIMENSIONS.retry || i === failing || i === lossy || slow ||
      node.initDeath || arrivals(nodes, i) !== 1 || tasks === 0
    ) return;
    node.retry = attempts;
    for (const { id, kind } of flaky) {
      if (!node.faults.has(id)) node.flaky.set(id, kind);
    }
  });
}

/**
 * Makes some stages elastic (a third random stream, so a seed's plan is the
 * one it had before): { min, max: size } with an idleMs short enough that
 * workers leave and join while tasks run, stop and fail; and the budget.
 */
function drawElastic(
  seed: number,
  nodes: NodeSpec[],
  options: Plan["options"],
): void {
  const random = new Prng(seed ^ 0x5e1a571c);
  const draw = (size: number): ElasticSpec | undefined => {
    const elastic = random.chance(0.3);
    const min = random.int(0, size);
    const idleMs = random.pick([1, 5, 50]);
    return DIMENSIONS.elastic && elastic ? { min, idleMs } : undefined;
  };
  for (const node of nodes) {
    if (node.kind === "hop") node.elastic = draw(node.size);
    else {for (const chain of node.subs) {
        for (const sub of chain) sub.elastic = draw(sub.size);
      }}
  }
  const threads = random.int(1, 4);
  if (DIMENSIONS.elastic && random.chance(0.5)) options.threads = threads;
}

/** A stage's size as its constructor takes it. */
function sizeOf(spec: { size: number; elastic?: ElasticSpec }) {
  return spec.elastic === undefined
    ? spec.size
    : { min: spec.elastic.min, max: spec.size };
}

/** How a stage's size reads in a plan. */
function describeSize(spec: { size: number; elastic?: ElasticSpec }): string {
  return spec.elastic === undefined
    ? `x${spec.size}`
    : `x${spec.elastic.min}-${spec.size} idle ${spec.elastic.idleMs}ms`;
}

function describeNode(node: NodeSpec): string {
  const from = node.parents.length === 0
    ? ""
    : `<-${node.parents.map((p) => `s${p}`).join(",")}`;
  if (node.kind === "filter") {
    const subs = node.subs.map((chain) =>
      chain.map((s) =>
        `${s.tag} ${s.ordered ? "ordered" : "unordered"} ${describeSize(s)}${
          s.busyUs ? ` busy ${s.busyUs}µs` : ""
        }`
      ).join(" > ")
    );
    return `${node.tag}${from} filter(maxTasks ${node.maxTasks}${
      node.dropResults ? ", dropResults" : ""
    }${node.cacheResults ? ", cacheResults" : ""}${
      node.doStopTask ? "" : ", doStopTask false"
    }) [${subs.join(" | ")}]`;
  }
  const faults = new Map<FaultKind, number[]>();
  for (const [id, kind] of node.faults) {
    faults.set(kind, [...(faults.get(kind) ?? []), id]);
  }
  const parts = [
    `${node.tag}${from} ${node.ordered ? "ordered" : "unordered"} ${
      describeSize(node)
    }`,
    node.fan > 1 ? `fan ${node.fan}` : "",
    node.busyUs ? `busy ${node.busyUs}µs` : "",
    node.asyncEvery ? `async/${node.asyncEvery}` : "",
    node.maxBacklog === undefined ? "" : `maxBacklog ${node.maxBacklog}`,
    node.concurrency > 1 ? `concurrency ${node.concurrency}` : "",
    node.permissions === undefined
      ? ""
      : `permissions ${JSON.stringify(node.permissions)}`,
    `onError ${node.onError}`,
    node.restart ? "restart" : "",
    node.taskTimeout === undefined ? "" : `taskTimeout ${node.taskTimeout}`,
    node.initDeath ? "dies in doInit" : "",
    node.retry > 1 ? `retry ${node.retry}` : "",
    ...[...faults].map(([kind, ids]) => `${kind}@${ids.join(",")}`),
    ...[...node.flaky].map(([id, kind]) => `once-${kind}@${id}`),
  ];
  return parts.filter((part) => part !== "").join(" ");
}

function describePlan(plan: Plan): string {
  const largest = Math.max(0, ...plan.sizes);
  return `seed ${plan.seed}: ${plan.sizes.length} tasks (largest ${largest} B), ${
    JSON.stringify(plan.options)
  }, input ${plan.input}, reader ${plan.reader}, awaitPuts ${plan.awaitPuts}, pauses ${plan.pauses}${
    plan.failing === undefined ? "" : `, expect failure of s${plan.failing}`
  }${plan.lossy === undefined ? "" : `, lossy s${plan.lossy}`}${
    plan.arena ? ", payloads on the arena" : ""
  }; [${plan.nodes.map(describeNode).join("; ")}]${
    plan.families.length === 0 ? "" : `; known: ${plan.families.join(", ")}`
  }`;
}

// ---- the expected output ----

/** A result's identity: its path's tags, its task and its result indices. */
function keyOf(hops: readonly string[], id: number, trail: readonly number[]) {
  return `${hops.join(">")}|${id}|${trail.join(".")}`;
}

/** Orders keys of one path as an ordered leaf delivers them: by task, then result index. */
function compareKeys(a: string, b: string): number {
  const [, idA, trailA] = a.split("|");
  const [, idB, trailB] = b.split("|");
  if (idA !== idB) return Number(idA) - Number(idB);
  return trailA! < trailB! ? -1 : trailA! > trailB! ? 1 : 0;
}

interface Expected {
  /** Every leaf's results, as keys: in order for an ordered leaf. */
  byLeaf: Map<number, string[]>;
  /** Each stage's skipped count, and of which fault kinds. */
  skipped: Map<number, Map<FaultKind, number>>;
}

function expectedOf(plan: Plan): Expected {
  const { nodes, sizes } = plan;
  const byLeaf = new Map<number, string[]>();
  for (const leaf of leavesOf(nodes)) {
    const keys: string[] = [];
    for (const path of pathsTo(nodes, leaf)) {
      const tags = path.map((i) => nodes[i]!).filter((n) => n.kind === "hop")
        .map((n) => n.tag);
      for (let id = 0; id < sizes.length; id++) {
        const dropped = path.some((i) => {
          const node = nodes[i]!;
          return node.kind === "hop" && node.faults.has(id);
        });
        if (dropped) continue;
        let trails: number[][] = [[]];
        for (const i of path) {
          const node = nodes[i]!;
          if (node.kind !== "hop") continue;
          trails = trails.flatMap((trail) =>
            Array.from({ length: node.fan }, (_, k) => [...trail, k])
          );
        }
        for (const trail of trails) keys.push(keyOf(tags, id, trail));
      }
    }
    if (isOrderedLeaf(nodes, leaf)) keys.sort(compareKeys);
    byLeaf.set(leaf, keys);
  }
  const skipped = new Map<number, Map<FaultKind, number>>();
  nodes.forEach((node, i) => {
    if (node.kind !== "hop") return;
    const copies = arrivals(nodes, i);
    const kinds = new Map<FaultKind, number>();
    for (const kind of node.faults.values()) {
      kinds.set(kind, (kinds.get(kind) ?? 0) + copies);
    }
    skipped.set(i, kinds);
  });
  return { byLeaf, skipped };
}

// ---- checking what arrived ----

/** A payload whose bytes say which task it belongs to. */
function payloadOf(id: number, size: number): Uint8Array {
  const payload = new Uint8Array(size);
  for (let i = 0; i < size; i++) payload[i] = (id * 31 + i) & 0xff;
  return payload;
}

/** `payload` copied onto `pipe`'s arena (as is when the arena has no room). */
function onArena(
  pipe: Pipeline<Task, unknown>,
  payload: Uint8Array,
): Uint8Array {
  try {
    const view = pipe.allocSync(payload.length);
    view.set(payload);
    return view;
  } catch {
    return payload;
  }
}

/** Frees each arena buffer a result holds: one reference per buffer in it. */
function freeArenaViews(pipe: Pipeline<Task, unknown>, result: unknown): void {
  const freed = new Set<number>();
  const visit = (value: unknown) => {
    if (value instanceof Uint8Array) {
      if (
        value.buffer instanceof SharedArrayBuffer &&
        !freed.has(value.byteOffset)
      ) {
        freed.add(value.byteOffset);
        pipe.free(value);
      }
    } else if (Array.isArray(value)) value.forEach(visit);
    else if (typeof value === "object" && value !== null) {
      Object.values(value).forEach(visit);
    }
  };
  visit(result);
}

/** What is wrong with a result's payload, or "". */
function payloadProblem(task: Task, size: number | undefined): string {
  const { id, payload } = task;
  if (size === undefined) return `task ${id} was never put`;
  if (!(payload instanceof Uint8Array)) return `task ${id}: payload ${payload}`;
  if (payload.length !== size) {
    return `task ${id}: payload of ${payload.length} bytes, expected ${size}`;
  }
  const step = size <= 4096 ? 1 : 997;
  for (let i = 0; i < size; i += step) {
    if (payload[i] !== ((id * 31 + i) & 0xff)) {
      return `task ${id}: payload byte ${i} is ${payload[i]}`;
    }
  }
  if (size > 0 && payload[size - 1] !== ((id * 31 + size - 1) & 0xff)) {
    return `task ${id}: the last payload byte is wrong`;
  }
  return "";
}

function isTask(value: unknown): value is Task {
  const task = value as Task;
  return typeof value === "object" && value !== null &&
    Number.isInteger(task.id) && Array.isArray(task.hops) &&
    Array.isArray(task.trail);
}

/** The sub-pipeline chains' leaf tags of every filter, to check what filters pass on. */
function subLeafTags(plan: Plan): Set<string> {
  return new Set(
    plan.nodes.flatMap((node) =>
      node.kind === "filter" ? node.subs.map((chain) => chain.at(-1)!.tag) : []
    ),
  );
}

/** Names the first few items of a list, and how many there are. */
function some(items: string[], max = 8): string {
  return `${items.length} (${items.slice(0, max).join(", ")}${
    items.length > max ? ", ..." : ""
  })`;
}

/**
 * Compares what arrived with what was expected; returns every problem found,
 * and how many tasks the lossy stage dropped with its lost workers' other
 * tasks (`lost`). `received` holds each leaf's results in the order they
 * arrived, or, with a pipeline-wide reader, all of them under leaf -1.
 */
function checkResults(
  plan: Plan,
  expected: Expected,
  received: Map<number, unknown[]>,
  complete: boolean,
): { problems: string[]; lost: number } {
  const problems: string[] = [];
  const subLeaves = subLeafTags(plan);
  const leafOfHops = new Map<string, number[]>();
  for (const [leaf, keys] of expected.byLeaf) {
    for (const key of keys) {
      const hops = key.split("|")[0]!;
      const leaves = leafOfHops.get(hops) ?? [];
      if (!leaves.includes(leaf)) leaves.push(leaf);
      leafOfHops.set(hops, leaves);
    }
  }
  // Each result as a key, under the leaf it came from (when that is known).
  const arrived = new Map<number, string[]>(
    [...expected.byLeaf.keys()].map((leaf) => [leaf, []]),
  );
  const all: string[] = [];
  for (const [from, values] of received) {
    for (const value of values) {
      let task = value;
      // A leaf FilterStage's [task, results]: each result is a
      // sub-pipeline's, of an earlier task. Its task is the [task, results]
      // of a FilterStage before it, if one fed it.
      while (Array.isArray(task)) {
        const [first, subResults] = task as [unknown, unknown];
        task = first;
        if (!Array.isArray(subResults)) {
          problems.push(`a filter result's results are ${subResults}`);
        } else {
          for (const sub of subResults) {
            const problem = !isTask(sub)
              ? `a filter's sub-result is ${String(sub)}`
              : !subLeaves.has(sub.hops.at(-1) ?? "")
              ? `a filter's sub-result came through ${sub.hops.join(">")}`
              : payloadProblem(sub, plan.sizes[sub.id]);
            if (problem !== "") problems.push(problem);
          }
        }
      }
      if (!isTask(task)) {
        problems.push(`a result that is not a task: ${String(task)}`);
        continue;
      }
      const problem = payloadProblem(task, plan.sizes[task.id]);
      if (problem !== "") problems.push(problem);
      const key = keyOf(task.hops, task.id, task.trail);
      all.push(key);
      const hops = key.split("|")[0]!;
      if (from >= 0 && !leafOfHops.get(hops)?.includes(from)) {
        problems.push(
          `leaf s${from} gave ${key}, which is not one of its paths`,
        );
      }
      const leaves = from >= 0 ? [from] : leafOfHops.get(hops);
      if (leaves?.length === 1) arrived.get(leaves[0]!)!.push(key);
    }
  }
  // Exactly once: the multiset of keys.
  const want = new Map<string, number>();
  for (const keys of expected.byLeaf.values()) {
    for (const key of keys) want.set(key, (want.get(key) ?? 0) + 1);
  }
  const got = new Map<string, number>();
  for (const key of all) got.set(key, (got.get(key) ?? 0) + 1);
  const extra: string[] = [];
  const missing: string[] = [];
  for (const [key, count] of got) {
    const wanted = want.get(key) ?? 0;
    if (count > wanted) {
      extra.push(wanted === 0 ? key : `${key} ×${count}/${wanted}`);
    }
  }
  // The tasks the lossy stage dropped: all their results through it are
  // missing (a lost worker writes a task's results all or none).
  const lossyTag = plan.lossy === undefined
    ? undefined
    : plan.nodes[plan.lossy]!.tag;
  const through = (key: string) =>
    lossyTag !== undefined && key.split("|")[0]!.split(">").includes(lossyTag);
  const lost = new Set<number>();
  if (complete && lossyTag !== undefined) {
    const counts = new Map<number, { wanted: number; got: number }>();
    for (const [key, count] of want) {
      if (!through(key)) continue;
      const id = Number(key.split("|")[1]);
      const entry = counts.get(id) ?? { wanted: 0, got: 0 };
      entry.wanted += count;
      entry.got += Math.min(got.get(key) ?? 0, count);
      counts.set(id, entry);
    }
    for (const [id, { wanted, got }] of counts) {
      if (got === 0) lost.add(id);
      else if (got < wanted) {
        problems.push(
          `task ${id} gave ${got} of its ${wanted} results through ${lossyTag}`,
        );
      }
    }
  }
  if (complete) {
    for (const [key, count] of want) {
      const id = Number(key.split("|")[1]);
      if (through(key) && lost.has(id)) continue;
      if ((got.get(key) ?? 0) < count) missing.push(key);
    }
  }
  if (extra.length > 0) {
    problems.push(`unexpected or repeated results: ${some(extra)}`);
  }
  if (missing.length > 0) problems.push(`missing results: ${some(missing)}`);
  // Order, at the leaves that promise it.
  for (const [leaf, keys] of arrived) {
    if (!isOrderedLeaf(plan.nodes, leaf)) continue;
    const sorted = [...keys].sort(compareKeys);
    const at = keys.findIndex((key, i) => key !== sorted[i]);
    if (at >= 0) {
      problems.push(
        `leaf s${leaf} is ordered, but result ${at} is ${keys[at]} (expected ${
          sorted[at]
        }; ${keys.slice(Math.max(0, at - 2), at + 3).join(" ")})`,
      );
    }
  }
  // The lossy stage's own faults are dropped anyway; the others it dropped
  // are at most (concurrency - 1) per lost worker.
  if (plan.lossy !== undefined) {
    const node = plan.nodes[plan.lossy] as HopSpec;
    const losses = [...node.faults.values()].filter(losesWorker).length;
    const others = [...lost].filter((id) => !node.faults.has(id)).length;
    if (others > losses * (node.concurrency - 1)) {
      problems.push(
        `${node.tag} dropped ${others} tasks besides its faults with ${losses} lost workers of ${node.concurrency} tasks each`,
      );
    }
    lost.forEach((id) => {
      if (node.faults.has(id)) lost.delete(id);
    });
  }
  return { problems: problems.slice(0, 20), lost: lost.size };
}

/**
 * Checks each stage's skipped count and its callback's calls; returns the
 * problems. The lossy stage dropped `lost` tasks besides its faults.
 */
function checkSkipped(
  plan: Plan,
  expected: Expected,
  stages: Stage<never, unknown>[],
  callbacks: Map<number, StageError[]>,
  when: string,
  lost: number,
): string[] {
  const problems: string[] = [];
  plan.nodes.forEach((node, i) => {
    if (node.kind !== "hop") return;
    const kinds = new Map(expected.skipped.get(i)!);
    if (i === plan.lossy) {
      // A lost worker's other tasks are reported with its loss (a close()
      // or a timeout): count them all as "lost".
      let losses = lost;
      for (const kind of ["close", "hang", "overrun"] as const) {
        losses += kinds.get(kind) ?? 0;
        kinds.delete(kind);
      }
      kinds.set("lost" as FaultKind, losses);
    }
    const total = [...kinds.values()].reduce((a, b) => a + b, 0);
    if (stages[i]!.skipped !== total) {
      problems.push(
        `${node.tag}.skipped is ${
          stages[i]!.skipped
        } ${when}, expected ${total}`,
      );
    }
    if (node.onError !== "callback") return;
    const calls = callbacks.get(i) ?? [];
    const byKind = new Map<string, number>();
    for (const error of calls) {
      let kind = classify(error, node);
      if (i === plan.lossy && (kind === "close" || kind === "timeout")) {
        kind = "lost";
      }
      byKind.set(kind, (byKind.get(kind) ?? 0) + 1);
    }
    const want = new Map<string, number>();
    for (const [kind, count] of kinds) {
      const as = kind === "hang" || kind === "overrun" ? "timeout" : kind;
      if (count > 0) want.set(as, (want.get(as) ?? 0) + count);
    }
    if (i === plan.lossy) {
      // A faulty task that a lost worker held (settled, not yet written) is
      // dropped with the loss, and reported so.
      for (const [kind, count] of want) {
        const seen = byKind.get(kind) ?? 0;
        if (kind === "lost" || seen >= count) continue;
        want.set(kind, seen);
        want.set("lost", want.get("lost")! + count - seen);
        if (seen === 0) want.delete(kind);
      }
    }
    const show = (map: Map<string, number>) =>
      JSON.stringify(Object.fromEntries([...map].sort()));
    if (show(byKind) !== show(want)) {
      problems.push(
        `${node.tag}'s onError calls ${when} were ${show(byKind)}, expected ${
          show(want)
        }`,
      );
    }
  });
  return problems;
}

/** Which fault a callback's StageError reports, or what is wrong with it. */
function classify(error: StageError, node: HopSpec): string {
  if (!(error instanceof StageError)) return `not a StageError: ${error}`;
  if (error.stage !== node.tag) return `a StageError of ${error.stage}`;
  if ((error.cause as Error | undefined)?.name === "NotCapable") {
    return node.permissions === undefined
      ? `denied without a sandbox (${error.message})`
      : "denied";
  }
  const cause = (error.cause as Error | undefined)?.message ?? "";
  const thrown = /^fault: (\S+) (throws|rejects) on task (\d+)$/.exec(cause);
  if (thrown !== null) {
    const kind = thrown[2] === "throws" ? "throw" : "reject";
    return node.faults.get(Number(thrown[3])) === kind
      ? kind
      : `${kind} of a task without that fault (${cause})`;
  }
  if (/close\(\)/.test(error.message)) return "close";
  if (/taskTimeout/.test(error.message)) return "timeout";
  return `unexplained: ${error.message}`;
}

// ---- running a plan ----

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Builds the plan's stages; returns them by node index (and the sub-stages). */
function buildStages(
  plan: Plan,
  release: Int32Array,
  tries: Int32Array,
  callbacks: Map<number, StageError[]>,
  progress: () => void,
): Stage<never, unknown>[] {
  const hopConfig = (
    tag: string,
    fields: Partial<HopConfig>,
  ): HopConfig => ({
    tag,
    fan: 1,
    busyUs: 0,
    asyncEvery: 0,
    faults: [],
    timeoutMs: TASK_TIMEOUT_MS,
    release,
    initDeath: false,
    flaky: [],
    tries,
    triesAt: 0,
    ...fields,
  });
  const stages = plan.nodes.map((node, i): Stage<Task, unknown> => {
    if (node.kind === "filter") {
      const subs = node.subs.map((chain) => {
        const subStages = chain.map((sub) => {
          const options: StageOptions = {
            name: sub.tag,
            args: [hopConfig(sub.tag, { busyUs: sub.busyUs })],
          };
          if (sub.elastic) options.idleMs = sub.elastic.idleMs;
          return sub.ordered
            ? new OrderedStage(Hop, sizeOf(sub), options)
            : new UnorderedStage(Hop, sizeOf(sub), options);
        });
        for (let k = 1; k < subStages.length; k++) {
          subStages[k - 1]!.link(subStages[k]!);
        }
        return subStages[0]!;
      });
      return new FilterStage(subs as Stage<Task, Task>[], {
        name: node.tag,
        maxTasks: node.maxTasks,
        dropResults: node.dropResults,
        cacheResults: node.cacheResults,
        doStopTask: node.doStopTask,
      }) as unknown as Stage<Task, unknown>;
    }
    const options: StageOptions = {
      name: node.tag,
      args: [hopConfig(node.tag, {
        fan: node.fan,
        busyUs: node.busyUs,
        asyncEvery: node.asyncEvery,
        faults: [...node.faults],
        initDeath: node.initDeath,
        flaky: [...node.flaky],
        triesAt: i * plan.sizes.length,
      })],
      restart: node.restart,
      concurrency: node.concurrency,
      onError: node.onError === "callback"
        ? (error: StageError) => {
          callbacks.set(i, [...(callbacks.get(i) ?? []), error]);
          progress();
        }
        : node.onError,
    };
    if (node.maxBacklog !== undefined) options.maxBacklog = node.maxBacklog;
    if (node.taskTimeout !== undefined) options.taskTimeout = node.taskTimeout;
    if (node.permissions !== undefined) options.permissions = node.permissions;
    if (node.elastic) options.idleMs = node.elastic.idleMs;
    if (node.retry > 1) options.retry = { attempts: node.retry, delayMs: 5 };
    return node.ordered
      ? new OrderedStage(Hop, sizeOf(node), options)
      : new UnorderedStage(Hop, sizeOf(node), options);
  });
  plan.nodes.forEach((node, i) => {
    for (const parent of node.parents) {
      stages[parent]!.link(stages[i] as Stage<unknown, unknown>);
    }
  });
  return stages as unknown as Stage<never, unknown>[];
}

/** A run that stopped making progress, or ran too long. */
class Stalled extends Error {}

/** Runs one plan and returns every problem found (none: it passed). */
async function runPlan(plan: Plan): Promise<string[]> {
  const random = new Prng(plan.seed ^ 0x5bd1e995);
  const expected = expectedOf(plan);
  const release = new Int32Array(new SharedArrayBuffer(4));
  const tries = new Int32Array(
    new SharedArrayBuffer(
      4 * Math.max(1, plan.nodes.length * plan.sizes.length),
    ),
  );
  const callbacks = new Map<number, StageError[]>();
  let last = Date.now();
  const progress = () => {
    last = Date.now();
  };
  const stages = buildStages(plan, release, tries, callbacks, progress);
  const leaves = leavesOf(plan.nodes);
  const pipe = new Pipeline<Task, unknown>(
    stages[0] as unknown as Stage<Task, unknown>,
    plan.options,
  );
  const expectedTotal = [...expected.byLeaf.values()].reduce(
    (sum, keys) => sum + keys.length,
    0,
  );
  const received = new Map<number, unknown[]>();
  let count = 0;
  /** Ends the run at once with `error` (set once the run starts). */
  let stop: (error: Stalled) => void = () => {};
  const receive = (leaf: number, value: unknown) => {
    progress();
    const list = received.get(leaf) ?? [];
    received.set(leaf, list);
    list.push(value);
    // A stream of duplicates must not run the test out of memory: the run
    // ends at once.
    if (++count > 2 * expectedTotal + 100) {
      const error = new Stalled(
        `more than ${count - 1} results arrived, expected ${expectedTotal}`,
      );
      stop(error);
      throw error;
    }
  };
  const readerErrors: unknown[] = [];
  const putErrors: unknown[] = [];
  const problems: string[] = [];

  // Every put is handled at once: a put that rejects while the producer
  // still puts is no unhandled rejection.
  const put = (task: Task | null) =>
    pipe.put(task).then(progress, (error) => {
      putErrors.push(error);
    });
  const taskOf = (id: number): Task => ({
    id,
    payload: plan.arena
      ? onArena(pipe, payloadOf(id, plan.sizes[id]!))
      : payloadOf(id, plan.sizes[id]!),
    hops: [],
    trail: [],
  });
  const ids = () => plan.sizes.keys();
  const produce = async () => {
    if (plan.input !== "put") {
      const source = plan.input === "feed-array"
        ? [...ids()].map(taskOf)
        : plan.input === "feed-generator"
        ? ids().map(taskOf)
        : (async function* () {
          for (const id of ids()) {
            if (random.chance(plan.pauses)) await sleep(random.int(0, 3));
            yield taskOf(id);
            progress();
          }
        })();
      // It puts the stop at the end.
      return pipe.feed(source).then(progress, (error) => {
        putErrors.push(error);
      });
    }
    const puts: Promise<void>[] = [];
    for (const id of ids()) {
      const putting = put(taskOf(id));
      puts.push(putting);
      if (random.chance(plan.awaitPuts)) await putting;
      if (random.chance(plan.pauses)) await sleep(random.int(0, 3));
    }
    puts.push(put(null));
    await Promise.all(puts);
  };
  const pause = async () => {
    if (random.chance(plan.pauses)) await sleep(random.int(1, 5));
  };
  const readAll = async (
    read: () => Promise<unknown>,
    leaf: number,
    timeouts = false,
  ) => {
    try {
      for (;;) {
        let value: unknown;
        try {
          value = await read();
        } catch (error) {
          if (timeouts && (error as Error).name === "TimeoutError") continue;
          throw error;
        }
        if (value === null) return;
        receive(leaf, value);
        await pause();
      }
    } catch (error) {
      readerErrors.push(error);
    }
  };
  const consume = async () => {
    switch (plan.reader) {
      case "get":
        return readAll(() => pipe.get(), -1);
      case "get-timeout":
        return readAll(() => pipe.get({ timeout: random.int(0, 3) }), -1, true);
      case "results": {
        const iterator = pipe.results();
        return readAll(
          () => iterator.next().then((r) => r.done ? null : r.value),
          -1,
        );
      }
      case "leaves":
        await Promise.all(leaves.map((leaf) => {
          const iterator = stages[leaf]!.results();
          return readAll(
            () => iterator.next().then((r) => r.done ? null : r.value),
            leaf,
          );
        }));
    }
  };

  const started = Date.now();
  let timer: ReturnType<typeof setInterval> | undefined;
  const stalled = new Promise<never>((_, reject) => {
    stop = reject;
    let entered = 0;
    timer = setInterval(() => {
      // A task that entered is progress too (feed() says nothing per task).
      const now = pipe.stats().stages[0]?.received ?? 0;
      if (now !== entered) {
        entered = now;
        progress();
      }
      if (Date.now() - last > STALL_MS) {
        reject(
          new Stalled(
            `hang: no result, put or callback for ${STALL_MS} ms (${count} of ${expectedTotal} results read${
              readerErrors.length === 0
                ? ""
                : `; a reader failed: ${describeError(readerErrors[0])}`
            })`,
          ),
        );
      } else if (Date.now() - started > RUN_MS) {
        reject(new Stalled(`hang: still running after ${RUN_MS} ms`));
      }
    }, 200);
  });
  const failing = plan.failing === undefined
    ? undefined
    : plan.nodes[plan.failing]!.tag;
  const body = async () => {
    await Promise.all([produce(), consume()]);
    progress();
    const complete = failing === undefined;
    const checked = checkResults(plan, expected, received, complete);
    problems.push(...checked.problems);
    if (failing === undefined) {
      for (const error of readerErrors) {
        problems.push(`a reader failed: ${describeError(error)}`);
      }
      // A failed reader says it all: the checks below would repeat it.
      if (readerErrors.length > 0) return;
      if (putErrors.length > 0) {
        problems.push(
          `${putErrors.length} puts rejected, the first with ${
            describeError(putErrors[0])
          }`,
        );
      }
      if (
        FAMILIES.lateCallbacks && plan.reader !== "leaves" &&
        readerErrors.length === 0
      ) {
        problems.push(
          ...checkSkipped(
            plan,
            expected,
            stages,
            callbacks,
            "at the end of results",
            checked.lost,
          ),
        );
      }
      const after = await pipe.get();
      if (after !== null) {
        problems.push(`get() after the end returned ${after}`);
      }
      await pipe.done;
      if (plan.arena) {
        // The results' buffers were checked: free them; none is left.
        for (const values of received.values()) {
          for (const value of values) freeArenaViews(pipe, value);
        }
        const { live } = pipe.stats().arena;
        if (live !== 0) {
          problems.push(
            `${live} arena buffers still live once every result was freed`,
          );
        }
      }
      problems.push(
        ...checkSkipped(
          plan,
          expected,
          stages,
          callbacks,
          "once done",
          checked.lost,
        ),
      );
    } else {
      const isTheFailure = (error: unknown) =>
        error instanceof StageError && error.stage === failing;
      for (const error of readerErrors) {
        if (!isTheFailure(error)) {
          problems.push(
            `a reader failed with ${
              describeError(error)
            }, expected a StageError of ${failing}`,
          );
        }
      }
      const after = await pipe.get().then(
        (value) => `get() after the failure returned ${value}`,
        (error) =>
          isTheFailure(error)
            ? ""
            : `get() after the failure rejected with ${describeError(error)}`,
      );
      if (after !== "") problems.push(after);
      await pipe.done;
    }
  };
  const run = body();
  run.catch(() => {});
  try {
    await Promise.race([run, stalled]);
  } catch (error) {
    problems.push(
      error instanceof Stalled ? error.message : describeError(error),
    );
  } finally {
    clearInterval(timer);
  }
  // What the body finds after a hang is what terminate() did: not news.
  const found = [...problems];
  if (found.length > 0) {
    pipe.terminate();
    await pipe.done.catch(() => {});
    // The body ends once the terminated pipeline wakes its readers.
    if (!(await settlesWithin(run, 5_000))) {
      found.push("the run did not end after terminate()");
    }
  }
  // Tasks blocked past their taskTimeout may end now.
  Atomics.store(release, 0, 1);
  Atomics.notify(release, 0);
  return found;
}

/** Whether `promise` settles within `ms` (a hang guard). */
async function settlesWithin(
  promise: Promise<unknown>,
  ms: number,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const stage = error instanceof StageError ? ` (stage ${error.stage})` : "";
  return `${error.name}${stage}: ${error.message}`;
}

// ---- the tests ----

function seeds(): number[] {
  // "n", or "a,b,c" (the sandboxed seeds, for the child).
  const some = readEnv("MPIPE_SEED");
  if (some !== undefined && some !== "") {
    return some.split(",").map((seed) => Number(seed) >>> 0);
  }
  // "N" runs seeds 1..N; "A-B" runs seeds A..B (a long run in parts).
  const [from, to] = (readEnv("MPIPE_SEEDS") ?? "").split("-").map(Number);
  const range = to === undefined ? [1, from] : [from, to];
  const [first, last] = range.every((n) => Number.isInteger(n) && n! > 0)
    ? range as [number, number]
    : [1, SEEDS];
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

/** Seeds whose plan has a sandboxed stage: the child runs them. */
const sandboxed: number[] = [];
for (const seed of seeds()) {
  const plan = makePlan(seed);
  const hasSandbox = plan.nodes.some((node) =>
    node.kind === "hop" && node.permissions !== undefined
  );
  if (hasSandbox && !SANDBOX_CHILD) {
    sandboxed.push(seed);
    continue;
  }
  const joins = plan.nodes.filter((n) => n.parents.length > 1).length;
  const filters = plan.nodes.filter((n) => n.kind === "filter").length;
  const shape = [
    `${plan.nodes.length} stage${plan.nodes.length > 1 ? "s" : ""}`,
    joins > 0 ? `${joins} join${joins > 1 ? "s" : ""}` : "",
    filters > 0 ? `${filters} filter${filters > 1 ? "s" : ""}` : "",
    plan.failing === undefined ? "" : "fails",
  ].filter((part) => part !== "").join(", ");
  const known = plan.families.length === 0
    ? ""
    : `; fault families: ${plan.families.join(", ")}`;
  const hops = plan.nodes.filter((n): n is HopSpec => n.kind === "hop");
  const drawn = [
    plan.input === "put" ? "" : plan.input,
    hops.some((n) => n.concurrency > 1) ? "concurrency" : "",
    hops.some((n) => n.permissions !== undefined) ? "sandbox" : "",
    plan.nodes.some((n) =>
        n.kind === "hop"
          ? n.elastic !== undefined
          : n.subs.flat().some((sub) => sub.elastic !== undefined)
      )
      ? "elastic"
      : "",
  ].filter((part) => part !== "").join(", ");
  Deno.test(
    `random topology: seed ${seed} (${shape}${
      drawn === "" ? "" : `; ${drawn}`
    }${known}) delivers every result once, in order where promised, counts skips and ends`,
    async () => {
      const problems = await runPlan(plan);
      assert.ok(
        problems.length === 0,
        `random topology failed (replay: MPIPE_SEED=${seed}): ${
          describePlan(plan)
        }\n  - ${problems.join("\n  - ")}`,
      );
    },
  );
}

/** The most a child run may take: a hang guard, not a speed check. */
const CHILD_MS = 60_000;

if (sandboxed.length > 0) {
  const granted = Deno.permissions.querySync({ name: "run" }).state ===
    "granted";
  Deno.test({
    name:
      `random topology: the ${sandboxed.length} seeds with a sandboxed stage (${
        sandboxed.join(", ")
      }) pass in a child deno test with --unstable-worker-options${
        granted ? "" : " (needs --allow-run)"
      }`,
    ignore: !granted,
    fn: async () => {
      const { code, stdout, stderr } = await new Deno.Command(
        Deno.execPath(),
        {
          args: [
            "test",
            "--unstable-worker-options",
            "--allow-read",
            "--allow-env",
            new URL(import.meta.url).pathname,
          ],
          env: {
            NO_COLOR: "1",
            MPIPE_SANDBOX_CHILD: "1",
            MPIPE_SEED: sandboxed.join(","),
          },
          stdout: "piped",
          stderr: "piped",
          signal: AbortSignal.timeout(
            CHILD_MS + sandboxed.length * (RUN_MS + STALL_MS),
          ),
        },
      ).output();
      const text = new TextDecoder();
      const out = text.decode(stdout);
      // The child's failures, with their plans and replay lines.
      const failures = out.slice(Math.max(0, out.indexOf(" ERRORS ")));
      assert.ok(
        code === 0,
        `the child run of seeds ${sandboxed.join(",")} exited with ${code}:\n${
          failures.slice(0, 20_000)
        }\n${text.decode(stderr).slice(0, 2_000)}`,
      );
    },
  });
}
