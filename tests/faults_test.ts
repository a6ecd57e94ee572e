import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  PipelineClosedError,
  Stage,
  StageError,
  type StageOptions,
  UnorderedStage,
} from "../mod.ts";
import {
  changesWithin,
  collect,
  type Collected,
  guarded,
  Handshake,
  isPending,
  range,
  sortNumbers,
  waitForWord,
} from "./fixtures/faults/harness.ts";

// Fault injection: every way a task, a worker or a target can fail, at every
// place in a pipeline. Each test asserts the error and its content, that the
// pipeline ends (`guarded` fails a test that hangs, and always cleans up) and
// that no worker is left behind (`pipe.done`, and Deno's sanitizers).
//
// Task functions and worker classes are shipped to the workers by their
// source, so each target below is self-contained: it uses only globals, its
// parameters and `this`. A worker is put exactly mid-task with a shared-memory
// handshake (see `Handshake`), never with a sleep.

// ---- targets ----

/** The faults `Faulty` injects. */
type Fault =
  /** The task throws. */
  | "throw"
  /** The task's Promise rejects. */
  | "reject"
  /** The worker calls `self.close()` mid-task. */
  | "close"
  /** The worker calls `Deno.exit(7)` mid-task. */
  | "exit"
  /** A timer throws while the task waits. */
  | "timer"
  /** The task returns a value that cannot be cloned. */
  | "uncloneable"
  /**
   * The task waits for the test until its worker is stopped (by a
   * taskTimeout, a failure or terminate()). A worker blocked in Atomics.wait
   * may run on when its wait ends (see `StuckInWait`): this one then ends
   * itself, so that it disturbs no other test.
   */
  | "hang"
  /** doInit() throws. */
  | "init-throw"
  /** doInit() returns a Promise that rejects. */
  | "init-reject"
  /** No fault: the task waits for the test, then returns its task. */
  | "hold";

/** Where and how `Faulty` fails; `words` are a `Handshake`'s. */
interface FaultPlan {
  fault: Fault;
  at: number;
  words: Int32Array<SharedArrayBuffer>;
}

/**
 * Returns each task, except task `plan.at`: there it counts itself on word 2,
 * sets word 0 (REACHED) and waits for word 1 (GO), then injects the fault.
 * The wait is bounded so that a broken test cannot hang a worker for good.
 */
class Faulty extends OrderedWorker<number, unknown> {
  plan: FaultPlan;

  constructor(plan: FaultPlan) {
    super();
    this.plan = plan;
  }

  override doInit(): void | Promise<void> {
    if (this.plan.fault === "init-throw") {
      throw new Error("fault: doInit() throws");
    }
    if (this.plan.fault === "init-reject") {
      return Promise.reject(new Error("fault: doInit() rejects"));
    }
  }

  doTask(task: number): unknown {
    const { fault, at, words } = this.plan;
    if (task !== at) return task;
    function thrownInWorker(): never {
      throw new Error(`fault: task ${task} throws`);
    }
    async function rejectedInWorker(): Promise<never> {
      await null;
      throw new Error(`fault: task ${task} throws`);
    }
    Atomics.add(words, 2, 1);
    Atomics.store(words, 0, 1);
    Atomics.notify(words, 0);
    const released = Atomics.wait(words, 1, 0, 10_000) !== "timed-out";
    if (fault === "hang") {
      // Its worker should have been stopped while it waited: a worker that
      // runs on would share its rings with the one that replaced it.
      Atomics.store(words, 3, 1);
      Atomics.notify(words, 3);
      (globalThis as unknown as { close(): void }).close();
      return "the hung task ran on after its worker was stopped";
    }
    if (!released) return "the test never released the task";
    switch (fault) {
      case "throw":
        return thrownInWorker();
      case "reject":
        return rejectedInWorker();
      case "close":
        (globalThis as unknown as { close(): void }).close();
        return "the worker went on after close()";
      case "exit":
        return Deno.exit(7);
      case "timer":
        setTimeout(() => {
          throw new Error(`fault: a timer throws during task ${task}`);
        }, 0);
        return new Promise(() => {});
      case "uncloneable":
        return { task, callback: () => task };
    }
    return task;
  }
}

/** Returns its task unchanged (the healthy stages around the faulty one). */
function echo(task: number): number {
  return task;
}

// ---- building the pipelines under test ----

type Position = "first" | "middle" | "last" | "fork";

/** A pipeline with the faulty stage at `position`, and what to expect of it. */
interface Rig {
  pipe: Pipeline<number, unknown>;
  faulty: Stage<number, unknown>;
  /** The leaves whose results pass through the faulty stage. */
  affected: Stage<never, unknown>[];
  /** The other leaves (a fork's healthy branch). */
  healthy: Stage<never, unknown>[];
  /** Whether every stage from the root to an affected leaf keeps order. */
  orderedPath: boolean;
}

const WORKERS = 2;

function makeStage(
  ordered: boolean,
  target: typeof Faulty | typeof echo,
  options: StageOptions,
): Stage<number, unknown> {
  return ordered
    ? new OrderedStage<number, unknown>(target, WORKERS, options)
    : new UnorderedStage<number, unknown>(target, WORKERS, options);
}

/**
 * Builds a pipeline whose stages are ordered echo stages of two workers,
 * except the faulty one (also two workers): first, middle or last of a chain
 * of three, or one branch of a fork. Upstream stages keep order, so the
 * faulty stage numbers its tasks as they were put.
 */
function rig(
  position: Position,
  ordered: boolean,
  faulty: Stage<number, unknown>,
): Rig {
  const healthy = (name: string) =>
    new OrderedStage<number, number>(echo, WORKERS, { name });
  const leaf = (stage: Stage<number, unknown>) =>
    stage as unknown as Stage<never, unknown>;
  let root: Stage<number, unknown>;
  let affected: Stage<number, unknown>;
  let others: Stage<number, unknown>[] = [];
  switch (position) {
    case "first": {
      affected = healthy("after-2");
      faulty.link(healthy("after-1").link(affected));
      root = faulty;
      break;
    }
    case "middle": {
      affected = healthy("after");
      root = healthy("before");
      root.link(faulty.link(affected));
      break;
    }
    case "last": {
      affected = faulty;
      root = healthy("before-1");
      root.link(healthy("before-2").link(faulty));
      break;
    }
    case "fork": {
      affected = faulty;
      const sibling = healthy("sibling");
      others = [sibling];
      root = healthy("before");
      root.link(faulty).link(sibling);
      break;
    }
  }
  return {
    pipe: new Pipeline<number, unknown>(root),
    faulty,
    affected: [leaf(affected)],
    healthy: others.map(leaf),
    orderedPath: ordered,
  };
}

/** Reads every leaf of `rig` alone (or the pipeline, if it has one leaf). */
function readLeaves(
  { pipe, affected, healthy }: Rig,
): Promise<{ affected: Collected<unknown>[]; healthy: Collected<unknown>[] }> {
  if (healthy.length === 0) {
    return collect(pipe.results()).then((all) => ({
      affected: [all],
      healthy: [],
    }));
  }
  return Promise.all([
    Promise.all(affected.map((leaf) => collect(leaf.results()))),
    Promise.all(healthy.map((leaf) => collect(leaf.results()))),
  ]).then(([affected, healthy]) => ({ affected, healthy }));
}

// ---- checking errors ----

const TASK_FAULTS = ["throw", "reject", "uncloneable"] as const;
const LOST_FAULTS = ["close", "exit", "timer", "hang"] as const;
type TaskFault = (typeof TASK_FAULTS)[number];
type LostFault = (typeof LOST_FAULTS)[number];

/** Asserts `error` is the StageError of faulty task `task` of stage `stage`. */
function assertTaskError(
  error: unknown,
  fault: TaskFault,
  stage: string,
  task: number,
): asserts error is StageError {
  assert.ok(
    error instanceof StageError,
    `expected a StageError, got ${String(error)}`,
  );
  assert.equal(error.name, "StageError");
  assert.equal(error.stage, stage);
  assert.equal(error.task, task);
  assert.ok(
    error.worker !== undefined && error.worker >= 0 && error.worker < WORKERS,
    `worker ${error.worker}`,
  );
  assert.ok(error.message.includes(`stage '${stage}'`), error.message);
  assert.ok(error.message.includes(`worker ${error.worker}`), error.message);
  assert.ok(error.message.includes(`task ${task}`), error.message);
  const cause = error.cause as Error;
  switch (fault) {
    case "throw":
    case "reject": {
      // The original error, with its message and its stack in the worker.
      assert.ok(cause instanceof Error, `cause ${String(cause)}`);
      assert.equal(cause.message, `fault: task ${task} throws`);
      const frame = fault === "throw" ? "thrownInWorker" : "rejectedInWorker";
      assert.ok(cause.stack?.includes(frame), `stack: ${cause.stack}`);
      assert.ok(error.message.includes(cause.message), error.message);
      break;
    }
    case "uncloneable":
      assert.equal(cause.name, "DataCloneError", `cause ${String(cause)}`);
      break;
  }
}

const LOST_REASONS: Record<LostFault, RegExp> = {
  close: /close\(\)/,
  exit: /Deno\.exit\(7\)/,
  timer: /fault: a timer throws during task \d+/,
  hang: /ran longer than its taskTimeout of \d+ ms/,
};

/**
 * Asserts `error` is the StageError of a lost worker of stage `stage` that
 * held task `task` (it may have held earlier tasks too, whose results were
 * not yet published: the error names the first one and the range).
 */
function assertLostError(
  error: unknown,
  fault: LostFault,
  stage: string,
  task: number,
): asserts error is StageError {
  assert.ok(
    error instanceof StageError,
    `expected a StageError, got ${String(error)}`,
  );
  assert.equal(error.stage, stage);
  assert.ok(
    error.worker !== undefined && error.worker >= 0 && error.worker < WORKERS,
    `worker ${error.worker}`,
  );
  assert.ok(error.message.includes(`stage '${stage}'`), error.message);
  assert.ok(error.message.includes(`worker ${error.worker}`), error.message);
  assert.match(error.message, LOST_REASONS[fault]);
  const held = /held tasks? (\d+)(?: to (\d+))?/.exec(error.message);
  assert.ok(held !== null, `the error names no held task: ${error.message}`);
  const from = Number(held[1]);
  const to = held[2] === undefined ? from : Number(held[2]);
  assert.equal(error.task, from);
  assert.ok(
    from <= task && task <= to,
    `task ${task} is not among the held tasks: ${error.message}`,
  );
}

// ---- the fault table ----

const TASKS = 6;
/** The faulty task: first, middle or last of the six. */
const AT = [0, 3, 5];
const POSITIONS: Position[] = ["first", "middle", "last", "fork"];
const TASK_TIMEOUT_MS = 250;

/** What the faulty stage is told to do about the fault. */
type Policy = "fail" | "skip" | "callback";

interface Case {
  fault: TaskFault | LostFault;
  policy: Policy;
  position: Position;
  ordered: boolean;
  at: number;
}

/** Whether `fault` loses the worker (rather than failing the task alone). */
function losesWorker(fault: Case["fault"]): fault is LostFault {
  return (LOST_FAULTS as readonly string[]).includes(fault);
}

/**
 * The faulty stage's options for `policy`. A worker lost by close(), exit()
 * or a timer is replaced under `restart`, its task dropped under a skipping
 * onError; a task past its taskTimeout is dropped under onError "skip".
 */
function policyOptions(
  fault: Case["fault"],
  policy: Policy,
  errors: StageError[],
): StageOptions {
  const callback = (error: StageError) => {
    errors.push(error);
  };
  const timeout = fault === "hang" ? { taskTimeout: TASK_TIMEOUT_MS } : {};
  if (policy === "fail") return timeout;
  if (losesWorker(fault) && fault !== "hang") {
    return policy === "skip"
      ? { restart: true, onError: "skip" }
      : { restart: true, onError: callback };
  }
  return { ...timeout, onError: policy === "skip" ? "skip" : callback };
}

function describePolicy(fault: Case["fault"], policy: Policy): string {
  const options = policyOptions(fault, policy, []);
  const parts = [];
  if (options.taskTimeout !== undefined) parts.push("taskTimeout");
  if (options.restart) parts.push("restart");
  const onError = options.onError ?? "fail";
  parts.push(
    typeof onError === "function" ? "onError function" : `onError "${onError}"`,
  );
  return parts.join(", ");
}

const FAULT_TEXT: Record<Case["fault"], string> = {
  throw: "task throws",
  reject: "task's Promise rejects",
  uncloneable: "task's result cannot be cloned",
  close: "worker calls close() mid-task",
  exit: "worker calls Deno.exit() mid-task",
  timer: "timer throws mid-task",
  hang: "task runs past its taskTimeout",
};

const CASES: Case[] = [];
for (const fault of [...TASK_FAULTS, ...LOST_FAULTS]) {
  (["fail", "skip", "callback"] as const).forEach((policy, p) => {
    let i = p;
    for (const position of POSITIONS) {
      for (const ordered of [true, false]) {
        CASES.push({ fault, policy, position, ordered, at: AT[i++ % 3]! });
      }
    }
  });
}

for (const { fault, policy, position, ordered, at } of CASES) {
  const kind = ordered ? "ordered" : "unordered";
  const where = position === "fork" ? "a fork branch" : `the ${position} stage`;
  Deno.test(
    `fault: ${
      FAULT_TEXT[fault]
    } at task ${at} of ${TASKS}, ${kind}, at ${where}, ${
      describePolicy(fault, policy)
    }`,
    async () => {
      const handshake = new Handshake();
      const errors: StageError[] = [];
      const faulty = makeStage(ordered, Faulty, {
        name: "faulty",
        args: [{ fault, at, words: handshake.words }],
        ...policyOptions(fault, policy, errors),
      });
      const setup = rig(position, ordered, faulty);
      const { pipe } = setup;
      await guarded(pipe, async () => {
        const puts = Promise.allSettled(
          [...range(TASKS), null].map((task) => pipe.put(task)),
        );
        const reading = readLeaves(setup);
        await handshake.reached();
        // The worker is held exactly in the middle of task `at`.
        if (fault !== "hang") handshake.go();
        const read = await reading;
        if (policy === "fail") {
          const error = await assertFailed(setup, read);
          if (losesWorker(fault)) assertLostError(error, fault, "faulty", at);
          else assertTaskError(error, fault, "faulty", at);
          // What was read before the failure is right, if incomplete.
          for (const { values } of read.affected) {
            assertNoneWrong(values, at, setup.orderedPath);
          }
          for (const { values } of read.healthy) {
            assertNoneWrong(values, TASKS, true);
          }
          return;
        }
        for (const settled of await puts) {
          assert.equal(settled.status, "fulfilled");
        }
        const expected = range(TASKS).filter((task) => task !== at);
        for (const { values, error } of read.affected) {
          assert.equal(error, undefined, `the pipeline failed: ${error}`);
          assert.deepEqual(
            setup.orderedPath ? values : sortNumbers(values as number[]),
            expected,
          );
        }
        for (const { values, error } of read.healthy) {
          assert.equal(error, undefined, `the pipeline failed: ${error}`);
          assert.deepEqual(values, range(TASKS));
        }
        assert.equal(await pipe.get(), null);
        await pipe.done;
        assert.equal(faulty.skipped, 1);
        assert.equal(
          Atomics.load(handshake.words, Handshake.COUNT),
          1,
          "the faulty task ran more than once",
        );
        if (policy === "callback") {
          // Called on the main thread, once, with the StageError of the task.
          assert.equal(errors.length, 1, `onError calls: ${errors}`);
          if (losesWorker(fault)) {
            assertLostError(errors[0], fault, "faulty", at);
          } else assertTaskError(errors[0], fault, "faulty", at);
        }
      });
    },
  );
}

/**
 * Asserts that every reader of an affected leaf got the same error, that a
 * healthy leaf's reader got it too unless it had read everything before the
 * failure, and that every later get(), results() and put() gets it; the
 * pipeline is over (`done`). Returns the error.
 */
async function assertFailed(
  setup: Rig,
  read: { affected: Collected<unknown>[]; healthy: Collected<unknown>[] },
  readLeavesToo = true,
): Promise<unknown> {
  const { pipe } = setup;
  const error = read.affected[0]!.error;
  assert.ok(error !== undefined, "the pipeline did not fail");
  for (const other of read.affected) assert.equal(other.error, error);
  for (const other of read.healthy) {
    if (other.error === undefined) assert.deepEqual(other.values, range(TASKS));
    else assert.equal(other.error, error);
  }
  const same = (got: unknown) => got === error;
  await assert.rejects(pipe.get(), same);
  await assert.rejects(pipe.get({ timeout: 0 }), same);
  assert.equal((await collect(pipe.results())).error, error);
  for (
    const leaf of readLeavesToo ? [...setup.affected, ...setup.healthy] : []
  ) {
    await assert.rejects(leaf.get(), same);
    assert.equal((await collect(leaf.results())).error, error);
  }
  await assert.rejects(pipe.put(1), same);
  await assert.rejects(pipe.close(), same);
  await pipe.done;
  return error;
}

/**
 * Asserts `values`, read before a failure at task `at`, hold no task twice and
 * none that is wrong: only tasks before `at` on an ordered path, in order.
 */
function assertNoneWrong(values: unknown[], at: number, ordered: boolean) {
  if (ordered) {
    assert.deepEqual(values, range(values.length));
    assert.ok(values.length <= at, `read ${values} past task ${at}`);
    return;
  }
  const seen = new Set(values);
  assert.equal(seen.size, values.length, `a task came twice: ${values}`);
  for (const value of values) {
    assert.ok(
      typeof value === "number" && value >= 0 && value < TASKS &&
        value !== at,
      `unexpected ${value}`,
    );
  }
}

// ---- doInit fails ----

for (const fault of ["init-throw", "init-reject"] as const) {
  for (const position of POSITIONS) {
    for (const ordered of [true, false]) {
      const how = fault === "init-throw" ? "throws" : "rejects";
      const kind = ordered ? "ordered" : "unordered";
      const where = position === "fork"
        ? "a fork branch"
        : `the ${position} stage`;
      Deno.test(`fault: doInit() ${how}, ${kind}, at ${where}: get() rejects at once with a StageError`, async () => {
        const handshake = new Handshake();
        const faulty = makeStage(ordered, Faulty, {
          name: "faulty",
          args: [{ fault, at: -1, words: handshake.words }],
        });
        const setup = rig(position, ordered, faulty);
        const { pipe } = setup;
        await guarded(pipe, async () => {
          // No task at all: the failure alone must reach the reader.
          const error = await pipe.get().then(
            (value) => assert.fail(`get() returned ${value}`),
            (error: unknown) => error,
          );
          assert.ok(error instanceof StageError, `got ${String(error)}`);
          assert.equal(error.stage, "faulty");
          assert.equal(error.task, undefined);
          assert.ok(
            error.worker !== undefined && error.worker >= 0 &&
              error.worker < WORKERS,
            `worker ${error.worker}`,
          );
          assert.match(error.message, /^stage 'faulty', worker \d: /);
          assert.match(error.message, /doInit/);
          assert.ok(error.cause instanceof Error);
          assert.equal(
            error.cause.message,
            `fault: doInit() ${fault === "init-throw" ? "throws" : "rejects"}`,
          );
          await assertFailed(setup, {
            affected: [{ values: [], error }],
            healthy: [],
          });
        });
      });
    }
  }
}

// ---- unloadable targets ----

const fixture = (name: string) =>
  new URL(`./fixtures/faults/${name}`, import.meta.url);

/** A value a function target refers to but cannot take to its worker. */
const outerFactor = 3;

interface Unloadable {
  what: string;
  make: (ordered: boolean, options: StageOptions) => Stage<number, unknown>;
  /** What the error's message must say. */
  says: RegExp[];
  /**
   * Whether the error names a task: the target loads but every task fails,
   * and the error names whichever failure came first.
   */
  failsTasks?: boolean;
  /**
   * The target is a `Stage`'s module, imported first (in a worker) to learn its ordering; its
   * leaves are read through the pipeline (see the test of `Stage.get()` on a
   * leaf of such a pipeline, below).
   */
  inspected?: boolean;
}

const UNLOADABLE: Unloadable[] = [
  {
    what: "a module path that does not exist",
    make: (ordered, options) =>
      makeModuleStage(ordered, fixture("no_such_module.ts"), options),
    says: [/cannot load the target/, /no_such_module\.ts/],
  },
  {
    what: "a module without the export",
    make: (ordered, options) =>
      makeModuleStage(
        ordered,
        { module: fixture("echo_worker.ts"), export: "missing" },
        options,
      ),
    says: [/cannot load the target/, /'missing'/],
  },
  {
    what: "a module with a syntax error",
    make: (ordered, options) =>
      makeModuleStage(
        ordered,
        "data:application/javascript,export default function (task) { return task +; }",
        options,
      ),
    says: [/cannot load the target/, /SyntaxError|Unexpected token/i],
  },
  {
    what: "a module that throws when it is evaluated",
    make: (ordered, options) =>
      makeModuleStage(ordered, fixture("throws_on_import.ts"), options),
    says: [/cannot load the target/, /throws_on_import\.ts refuses to load/],
  },
  {
    what:
      "a Stage of a module path that does not exist (inspected on the main thread)",
    make: (_ordered, options) =>
      new Stage<number, unknown>(
        fixture("no_such_module.ts"),
        WORKERS,
        options,
      ),
    says: [/cannot load the target/, /no_such_module\.ts/],
    inspected: true,
  },
  {
    what: "a function that captured an outer variable",
    make: (ordered, options) =>
      ordered
        ? new OrderedStage(
          (task: number) => task * outerFactor,
          WORKERS,
          options,
        )
        : new UnorderedStage(
          (task: number) => task * outerFactor,
          WORKERS,
          options,
        ),
    says: [/\bouterFactor\b/, /module target/],
    failsTasks: true,
  },
];

function makeModuleStage(
  ordered: boolean,
  target: URL | string | { module: URL; export: string },
  options: StageOptions,
): Stage<number, unknown> {
  return ordered
    ? new OrderedStage<number, unknown>(target, WORKERS, options)
    : new UnorderedStage<number, unknown>(target, WORKERS, options);
}

UNLOADABLE.forEach(({ what, make, says, failsTasks, inspected }, i) => {
  POSITIONS.forEach((position, j) => {
    const ordered = (i + j) % 2 === 0;
    const where = position === "fork"
      ? "a fork branch"
      : `the ${position} stage`;
    Deno.test(`fault: unloadable target, ${what}, ${ordered ? "ordered" : "unordered"}, at ${where}: StageError naming the stage`, async () => {
      const faulty = make(ordered, { name: "faulty" });
      const setup = rig(position, ordered, faulty);
      const { pipe } = setup;
      await guarded(pipe, async () => {
        const puts = Promise.allSettled(
          [...range(TASKS), null].map((task) => pipe.put(task)),
        );
        const read = inspected
          ? { affected: [await collect(pipe.results())], healthy: [] }
          : await readLeaves(setup);
        const error = await assertFailed(setup, read, !inspected);
        assert.ok(error instanceof StageError, `got ${String(error)}`);
        assert.equal(error.stage, "faulty");
        assert.ok(error.message.startsWith("stage 'faulty'"), error.message);
        for (const pattern of says) assert.match(error.message, pattern);
        if (failsTasks) {
          assert.ok(
            error.task !== undefined && error.task >= 0 && error.task < TASKS,
            `task ${error.task}`,
          );
        } else assert.equal(error.task, undefined);
        assert.ok(error.cause !== undefined, "the error has no cause");
        for (const { values } of read.affected) assert.deepEqual(values, []);
        await puts;
      });
    });
  });
});

Deno.test("fault: a module target without --allow-read fails with a StageError that says to grant read access", async () => {
  // No --allow-read: the workers cannot import the module target.
  const { code, stdout, stderr } = await runScript(fixture("no_read_main.ts"), {
    flags: ["--no-prompt"],
  });
  assert.equal(code, 0, stderr);
  const reports = stdout.trimEnd().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(
    reports.map((report) => report.stage),
    ["unreadable-ordered", "unreadable-unordered", "unreadable-class"],
  );
  for (const report of reports) {
    assert.equal(report.name, "StageError", JSON.stringify(report));
    assert.match(report.message, new RegExp(`^stage '${report.stage}'`));
    assert.match(report.message, /cannot load the target/);
    assert.match(report.message, /read access/);
    assert.match(report.message, /echo_worker\.ts/);
    assert.match(report.causeMessage, /--allow-read/);
  }
});

Deno.test("Stage.get() and results() on a leaf wait while a Stage's module target is imported, then return its results or its StageError", async () => {
  for (const module of ["echo_worker.ts", "no_such_module.ts"]) {
    const root = new Stage<number, number>(fixture(module), 1, {
      name: "root",
    });
    const leaf = new OrderedStage(echo, 1, { name: "leaf" });
    root.link(leaf);
    const pipe = new Pipeline<number, number>(root);
    await guarded(pipe, async () => {
      const puts = Promise.allSettled([pipe.put(1), pipe.put(null)]);
      // Called at once, before the module target was imported.
      const got = leaf.get().then(
        (value) => ({ value }),
        (error) => ({ error }),
      );
      const all = collect(leaf.results());
      if (module === "echo_worker.ts") {
        assert.deepEqual(await got, { value: 1 });
        assert.deepEqual(await all, { values: [], error: undefined });
      } else {
        const { error } = await got as { error: unknown };
        assert.ok(error instanceof StageError, `got ${String(error)}`);
        assert.equal(error.stage, "root");
        assert.equal((await all).error, error);
      }
      await puts;
    });
  }
});

// ---- bad arguments ----

/** Asserts `call` throws `type` at once, naming the argument and its value. */
function assertBadArgument(
  call: () => unknown,
  type: typeof TypeError | typeof RangeError,
  ...says: (string | RegExp)[]
): void {
  assert.throws(call, (error: unknown) => {
    assert.ok(
      error instanceof type,
      `expected a ${type.name}, got ${String(error)}`,
    );
    for (const what of says) {
      if (typeof what === "string") {
        assert.ok(
          error.message.includes(what),
          `"${error.message}" lacks ${what}`,
        );
      } else assert.match(error.message, what);
    }
    return true;
  });
}

const STAGE_KINDS = [
  [
    "OrderedStage",
    (...args: unknown[]) => new OrderedStage(echo, ...(args as [number])),
  ],
  [
    "UnorderedStage",
    (...args: unknown[]) => new UnorderedStage(echo, ...(args as [number])),
  ],
  ["Stage", (...args: unknown[]) => new Stage(Faulty, ...(args as [number]))],
] as const;

for (const [kind, make] of STAGE_KINDS) {
  Deno.test(`${kind} constructor: a size that is not a positive integer is a RangeError naming 'size' and its value`, () => {
    const sizes: [unknown, string][] = [
      [0, "0"],
      [-1, "-1"],
      [1.5, "1.5"],
      [NaN, "NaN"],
      [Infinity, "Infinity"],
      ["2", '"2"'],
      [null, "null"],
    ];
    for (const [size, shown] of sizes) {
      assertBadArgument(
        () => make(size),
        RangeError,
        `'size'`,
        `got ${shown}`,
        kind,
      );
    }
  });

  Deno.test(`${kind} constructor: options of the wrong type or unknown are a TypeError (or RangeError) naming the option and its value`, () => {
    const cases: [unknown, typeof TypeError | typeof RangeError, string[]][] = [
      [5, TypeError, ["'options'", "got 5"]],
      [null, TypeError, ["'options'", "got null"]],
      ["fast", TypeError, ["'options'", '"fast"']],
      [{ nmae: "x" }, TypeError, ["'options.nmae'", "not a stage option"]],
      [{ retries: 3 }, TypeError, ["'options.retries'", "not a stage option"]],
      [{ retry: true }, TypeError, ["'options.retry'", "got true"]],
      [{ retry: 0 }, RangeError, ["'options.retry'", "got 0"]],
      [{ crashBudget: 0 }, RangeError, ["'options.crashBudget'", "got 0"]],
      [{ name: 5 }, TypeError, ["'options.name'", "got 5"]],
      [{ name: "" }, TypeError, ["'options.name'", 'got ""']],
      [{ restart: "yes" }, TypeError, ["'options.restart'", '"yes"']],
      [{ disableResult: 1 }, TypeError, ["'options.disableResult'", "got 1"]],
      [{ onError: "ignore" }, TypeError, ["'options.onError'", '"ignore"']],
      [{ onError: 5 }, TypeError, ["'options.onError'", "got 5"]],
      [{ args: "a" }, TypeError, ["'options.args'", '"a"']],
      [{ taskTimeout: "5" }, TypeError, ["'options.taskTimeout'", '"5"']],
      [{ taskTimeout: -1 }, RangeError, ["'options.taskTimeout'", "got -1"]],
      [{ taskTimeout: 0 }, RangeError, ["'options.taskTimeout'", "got 0"]],
      [{ taskTimeout: NaN }, RangeError, ["'options.taskTimeout'", "got NaN"]],
      [{ maxBacklog: 0 }, RangeError, ["'options.maxBacklog'", "got 0"]],
      [{ maxBacklog: 2.5 }, RangeError, ["'options.maxBacklog'", "got 2.5"]],
    ];
    for (const [options, type, says] of cases) {
      assertBadArgument(() => make(1, options), type, kind, ...says);
    }
  });
}

Deno.test("Stage.link() to itself, into a cycle, to a non-stage or after the build throws a TypeError naming the stages", async () => {
  const a = new OrderedStage(echo, 1, { name: "a" });
  const b = new OrderedStage(echo, 1, { name: "b" });
  const c = new OrderedStage(echo, 1, { name: "c" });
  assertBadArgument(() => a.link(a), TypeError, "'a'", "itself");
  a.link(b.link(c));
  assertBadArgument(() => c.link(a), TypeError, "'c'", "'a'", "cycle");
  assertBadArgument(() => b.link(a), TypeError, "'b'", "'a'", "cycle");
  assertBadArgument(() => a.link(5 as never), TypeError, "'next'", "got 5");
  const pipe = new Pipeline<number, number>(a);
  await guarded(pipe, async () => {
    const late = new OrderedStage(echo, 1, { name: "late" });
    assertBadArgument(
      () => c.link(late),
      TypeError,
      "'c'",
      "'late'",
      "Pipeline",
    );
    assertBadArgument(
      () => late.link(a),
      TypeError,
      "'late'",
      "'a'",
      "Pipeline",
    );
    // A second Pipeline on a stage that already belongs to one.
    for (const stage of [a, b, c]) {
      assertBadArgument(
        () => new Pipeline<number, number>(stage),
        TypeError,
        `'${stage.name}'`,
        "already belongs",
      );
    }
    await pipe.put(1);
    await pipe.close();
    assert.deepEqual(await Array.fromAsync(pipe), [1]);
  });
  // Still refused once that pipeline is over.
  assertBadArgument(() => new Pipeline<number, number>(b), TypeError, "'b'");
});

Deno.test("Pipeline constructor: a root that is not a stage, bad or unknown options throw naming them and their value", () => {
  assertBadArgument(
    () => new Pipeline(5 as never),
    TypeError,
    "'root'",
    "got 5",
  );
  const cases: [unknown, typeof TypeError | typeof RangeError, string[]][] = [
    [7, TypeError, ["'options'", "got 7"]],
    [{ ringBytes: 1000 }, RangeError, ["'options.ringBytes'", "got 1000"]],
    [{ ringBytes: "big" }, RangeError, ["'options.ringBytes'", '"big"']],
    [{ spin: -1 }, RangeError, ["'options.spin'", "got -1"]],
    [{ rignBytes: 4096 }, TypeError, [
      "'options.rignBytes'",
      "not a pipeline option",
    ]],
  ];
  for (const [options, type, says] of cases) {
    // A stage of its own each time: a failed build must not keep it.
    const stage = new OrderedStage(echo, 1);
    assertBadArgument(
      () => new Pipeline(stage, options as never),
      type,
      "Pipeline",
      ...says,
    );
  }
});

const BAD_GET_OPTIONS: [
  unknown,
  typeof TypeError | typeof RangeError,
  string[],
][] = [
  [5, TypeError, ["'options'", "got 5"]],
  [{ timeout: -1 }, RangeError, ["'options.timeout'", "got -1"]],
  [{ timeout: "5" }, RangeError, ["'options.timeout'", '"5"']],
  [{ timeout: NaN }, RangeError, ["'options.timeout'", "got NaN"]],
  [{ signal: 5 }, TypeError, ["'options.signal'", "got 5"]],
  [{ signal: { aborted: false } }, TypeError, ["'options.signal'"]],
];
/** Unknown names (a typo) must not be ignored: the caller would wait forever. */
const UNKNOWN_GET_OPTIONS: [unknown, typeof TypeError, string[]][] = [
  [{ timout: 5 }, TypeError, ["'options.timout'"]],
  [{ timeout: 5, singal: AbortSignal.abort() }, TypeError, [
    "'options.singal'",
  ]],
];

for (
  const [title, cases] of [
    ["options of the wrong type", BAD_GET_OPTIONS],
    ["unknown option names", UNKNOWN_GET_OPTIONS],
  ] as const
) {
  Deno.test(`Pipeline.get() rejects ${title}, naming them and their value`, async () => {
    const pipe = new Pipeline<number, number>(new OrderedStage(echo, 1));
    await guarded(pipe, async () => {
      // Over, so that a get() that took bad options would return at once.
      await pipe.close();
      assert.deepEqual(await Array.fromAsync(pipe), []);
      for (const [options, type, says] of cases) {
        await assert.rejects(
          async () => await pipe.get(options as never),
          (error: unknown) => {
            assert.ok(
              error instanceof type,
              `get(${JSON.stringify(options)}): ${String(error)}`,
            );
            for (const what of says) {
              assert.ok(error.message.includes(what), error.message);
            }
            return true;
          },
        );
      }
    });
  });
}

Deno.test("Pipeline.results() throws at the call for bad or unknown options, naming them", async () => {
  const pipe = new Pipeline<number, number>(new OrderedStage(echo, 1));
  await guarded(pipe, async () => {
    for (
      const [options, type, says] of [
        ...BAD_GET_OPTIONS,
        ...UNKNOWN_GET_OPTIONS,
      ]
    ) {
      // A synchronous call: it throws there, not at the first next().
      assertBadArgument(() => pipe.results(options as never), type, ...says);
    }
    await pipe.close();
    assert.deepEqual(await Array.fromAsync(pipe), []);
  });
});

Deno.test("Pipeline.put(): bad or unknown options are refused naming them, and the task is not put", async () => {
  const pipe = new Pipeline<number, number>(new OrderedStage(echo, 1));
  await guarded(pipe, async () => {
    const cases: [unknown, string][] = [
      [5, "'options'"],
      [{ signal: 5 }, "'options.signal'"],
      [{ sginal: AbortSignal.timeout(1000) }, "'options.sginal'"],
    ];
    for (const [options, says] of cases) {
      await assert.rejects(
        async () => await pipe.put(99, options as never),
        (error: unknown) => {
          assert.ok(
            error instanceof TypeError,
            `put(99, ${String(options)}): ${String(error)}`,
          );
          assert.ok(error.message.includes(says), error.message);
          return true;
        },
      );
    }
    await pipe.put(1);
    await pipe.close();
    assert.deepEqual(await Array.fromAsync(pipe), [1]);
  });
});

// ---- bad values ----

/** Values `structuredClone` refuses, as `put` must. */
const UNCLONEABLE: [string, () => unknown][] = [
  ["a function", () => () => 1],
  ["a symbol", () => Symbol("task")],
  ["an object holding a function", () => ({ id: 1, run: () => 1 })],
  ["an array holding a symbol", () => [1, Symbol("inside")]],
  ["a Map holding a function", () => new Map([["run", () => 1]])],
  ["a deeply nested function", () => ({ a: [{ b: { c: [() => 1] } }] })],
  ["a WeakMap", () => new WeakMap()],
  ["a Promise", () => Promise.resolve(1)],
];

Deno.test("Pipeline.put() refuses values that cannot be cloned with a DataCloneError, and every other task's result arrives in order", async () => {
  const first = new OrderedStage(echo, 2, { name: "first" });
  const second = new UnorderedStage(echo, 1, { name: "second" });
  const third = new OrderedStage(echo, 2, { name: "third" });
  first.link(second.link(third));
  const pipe = new Pipeline<unknown, unknown>(first);
  await guarded(pipe, async () => {
    const big = new Uint8Array(600 * 1024).fill(9);
    const expected: unknown[] = [];
    const refused: Promise<void>[] = [];
    let n = 0;
    for (const [what, make] of UNCLONEABLE) {
      const value = make();
      refused.push(
        pipe.put(value).then(
          () => assert.fail(`put() took ${what}`),
          (error: unknown) => {
            assert.ok(
              error instanceof DOMException,
              `${what}: ${String(error)}`,
            );
            assert.equal(error.name, "DataCloneError", what);
          },
        ),
      );
      // Good tasks around each refused one, some larger than a ring's quarter.
      for (const task of [n++, { n: n++, what }, n % 3 === 0 ? big : n++]) {
        pipe.put(task);
        expected.push(task);
      }
    }
    pipe.put(null);
    await Promise.all(refused);
    const results = await Array.fromAsync(pipe);
    // One worker in the middle keeps the order an ordered stage gave it.
    assert.deepEqual(results, expected);
  });
});

Deno.test("Pipeline.put() refuses a value that cannot be cloned while other tasks wait for room, losing none of them", async () => {
  const handshake = new Handshake();
  // Tasks typed `unknown`: the test puts a function, which the stage refuses.
  const pipe = new Pipeline<unknown, unknown>(
    new Stage(Faulty, 1, {
      name: "held",
      maxBacklog: 1,
      args: [{ fault: "hold", at: 0, words: handshake.words }],
    }),
  );
  await guarded(pipe, async () => {
    const puts = range(5).map((task) => pipe.put(task));
    await handshake.reached();
    assert.ok(await isPending(puts[4]!), "the last puts should wait for room");
    await assert.rejects(pipe.put(() => 1), { name: "DataCloneError" });
    const more = [5, 6].map((task) => pipe.put(task));
    pipe.put(null);
    handshake.go();
    assert.deepEqual(await Array.fromAsync(pipe), range(7));
    await Promise.all([...puts, ...more]);
  });
});

Deno.test("Pipeline.put() reads a Proxy through as the object it shows (a documented difference from structuredClone)", async () => {
  // structuredClone refuses a Proxy; JavaScript cannot tell one from its target.
  const value = new Proxy({ a: 1 }, {});
  const pipe = new Pipeline<unknown, unknown>(new OrderedStage(echo, 1));
  await guarded(pipe, async () => {
    await pipe.put(value);
    await pipe.put(2);
    await pipe.close();
    assert.deepEqual(await Array.fromAsync(pipe), [{ a: 1 }, 2]);
  });
});

/** Puts a result that cannot be cloned for task 2, with putResult(). */
class PutsUncloneable extends OrderedWorker<number, unknown> {
  doTask(task: number): void {
    this.putResult(task === 2 ? { task, run: () => task } : task);
  }
}

for (const ordered of [true, false]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`${kind}: putResult() of a value that cannot be cloned fails the task under onError "fail", and is skipped under "skip"`, async () => {
    for (const onError of ["fail", "skip"] as const) {
      const stage = ordered
        ? new OrderedStage(PutsUncloneable, 2, { name: "puts", onError })
        : new UnorderedStage(PutsUncloneable, 2, { name: "puts", onError });
      const pipe = new Pipeline<number, unknown>(stage);
      await guarded(pipe, async () => {
        const puts = Promise.allSettled(
          [...range(5), null].map((task) => pipe.put(task)),
        );
        const { values, error } = await collect(pipe.results());
        if (onError === "fail") {
          assert.ok(error instanceof StageError, `got ${String(error)}`);
          assert.equal(error.stage, "puts");
          assert.equal(error.task, 2);
          assert.equal((error.cause as Error).name, "DataCloneError");
          return;
        }
        assert.equal(error, undefined);
        assert.deepEqual(
          ordered ? values : sortNumbers(values as number[]),
          [0, 1, 3, 4],
        );
        await puts;
        await pipe.done;
        assert.equal(stage.skipped, 1);
      });
    }
  });
}

// ---- more than one fault ----

/** Fails every 7th task by throwing and every 11th by rejecting, after uneven pauses. */
async function flaky(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 3));
  if (task % 7 === 6) throw new Error(`flaky: task ${task} throws`);
  if (task % 11 === 10) {
    return Promise.reject(new Error(`flaky: task ${task} rejects`));
  }
  return task;
}

function isFlaky(task: number): boolean {
  return task % 7 === 6 || task % 11 === 10;
}

for (const ordered of [true, false]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`${kind} onError "skip" and a function drop every failing task in a middle stage of four workers${ordered ? ", keeping the order of the rest" : ""}`, async () => {
    for (const policy of ["skip", "callback"] as const) {
      const errors: StageError[] = [];
      const onError = policy === "skip"
        ? "skip" as const
        : (error: StageError) => {
          errors.push(error);
        };
      const middle = ordered
        ? new OrderedStage(flaky, 4, { name: "flaky", onError })
        : new UnorderedStage(flaky, 4, { name: "flaky", onError });
      const first = new OrderedStage(echo, 2);
      const last = new OrderedStage(echo, 2);
      first.link(middle.link(last));
      const pipe = new Pipeline<number, number>(first);
      await guarded(pipe, async () => {
        for (let task = 0; task < 40; task++) pipe.put(task);
        pipe.put(null);
        const results = await Array.fromAsync(pipe);
        const expected = range(40).filter((task) => !isFlaky(task));
        assert.deepEqual(ordered ? results : sortNumbers(results), expected);
        await pipe.done;
        const failed = range(40).filter(isFlaky);
        assert.equal(middle.skipped, failed.length);
        if (policy === "callback") {
          assert.deepEqual(
            sortNumbers(errors.map((error) => error.task!)),
            failed,
          );
          for (const error of errors) {
            assert.ok(error instanceof StageError);
            assert.equal(error.stage, "flaky");
            assert.match(
              (error.cause as Error).message,
              new RegExp(`^flaky: task ${error.task} (throws|rejects)$`),
            );
          }
        }
      });
    }
  });

  Deno.test(`${kind} restart replaces every lost worker (close() and Deno.exit()) and reports each lost task once`, async () => {
    const errors: StageError[] = [];
    const options: StageOptions = {
      name: "mortal",
      restart: true,
      onError: (error) => {
        errors.push(error);
      },
    };
    const mortal = (task: number) => {
      if (task % 5 === 4) {
        if (task % 10 === 4) {
          (globalThis as unknown as { close(): void }).close();
        } else Deno.exit(1);
      }
      return task;
    };
    const stage = ordered
      ? new OrderedStage(mortal, 3, options)
      : new UnorderedStage(mortal, 3, options);
    const last = new OrderedStage(echo, 2);
    stage.link(last);
    const pipe = new Pipeline<number, number>(stage);
    await guarded(pipe, async () => {
      for (let task = 0; task < 30; task++) pipe.put(task);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      const expected = range(30).filter((task) => task % 5 !== 4);
      assert.deepEqual(ordered ? results : sortNumbers(results), expected);
      await pipe.done;
      const lost = range(30).filter((task) => task % 5 === 4);
      assert.equal(stage.skipped, lost.length);
      assert.deepEqual(sortNumbers(errors.map((error) => error.task!)), lost);
      for (const error of errors) {
        assert.match(
          error.message,
          error.task! % 10 === 4 ? /close\(\)/ : /Deno\.exit\(1\)/,
        );
      }
    });
  });
}

Deno.test("StageError: every pending get() and results() rejects with the same error, and so does everything later", async () => {
  const handshake = new Handshake();
  const stage = new OrderedStage(Faulty, 2, {
    name: "faulty",
    args: [{ fault: "throw", at: 0, words: handshake.words }],
  });
  const pipe = new Pipeline<number, unknown>(stage);
  await guarded(pipe, async () => {
    const puts = Promise.allSettled(
      [...range(4), null].map((task) => pipe.put(task)),
    );
    await handshake.reached();
    // Task 0 is held, so in an ordered stage nothing can be read yet.
    const getters = [pipe.get(), pipe.get({ timeout: 10_000 }), stage.get()];
    const iterators = [collect(pipe.results()), collect(stage.results())];
    for (const getter of getters) assert.ok(await isPending(getter));
    handshake.go();
    const errors = await Promise.all([
      ...getters.map((getter) =>
        getter.then(() => undefined, (error) => error)
      ),
      ...(await Promise.all(iterators)).map(({ error }) => error),
    ]);
    assertTaskError(errors[0], "throw", "faulty", 0);
    for (const error of errors) assert.equal(error, errors[0]);
    await assert.rejects(pipe.put(9), (error) => error === errors[0]);
    await pipe.done;
    // terminate() after the failure changes nothing.
    pipe.terminate();
    await assert.rejects(pipe.get(), (error) => error === errors[0]);
    await puts;
  });
});

// ---- stop and cancel ----

Deno.test("Pipeline.terminate() mid-task stops everything at once: waiting puts reject, get() returns null, done settles", async () => {
  const handshake = new Handshake();
  const first = new Stage(Faulty, 1, {
    name: "held",
    maxBacklog: 1,
    args: [{ fault: "hang", at: 0, words: handshake.words }],
  });
  const last = new OrderedStage(echo, 2);
  first.link(last);
  const pipe = new Pipeline<number, unknown>(first);
  await guarded(pipe, async () => {
    const puts = range(10).map((task) => pipe.put(task));
    const settling = Promise.allSettled(puts);
    await handshake.reached();
    const waiting = pipe.get();
    const iterating = collect(pipe.results());
    assert.ok(await isPending(puts[9]!), "the last put should wait for room");
    assert.ok(await isPending(waiting));
    pipe.terminate();
    assert.equal(
      await isPending(pipe.done),
      false,
      "done did not settle at once",
    );
    // Task 0 runs, task 1 waits in the backlog of one, the rest wait for
    // room. Put 1 is fulfilled if the worker took task 0 before it was made;
    // otherwise it waited with the later puts and settles with them: its
    // task entered, and was dropped with them (see Pipeline.put).
    const settled = await settling;
    assert.deepEqual(
      settled.map((result, i) => i === 1 ? "either" : result.status),
      ["fulfilled", "either", ...range(8).map(() => "rejected")],
    );
    for (const result of settled.slice(2)) {
      assert.ok(
        (result as PromiseRejectedResult).reason instanceof PipelineClosedError,
      );
    }
    assert.equal(await waiting, null);
    assert.deepEqual(await iterating, { values: [], error: undefined });
    assert.equal(await pipe.get(), null);
    assert.equal(await last.get(), null);
    await assert.rejects(pipe.put(1), PipelineClosedError);
    await assert.rejects(pipe.close(), PipelineClosedError);
    pipe.terminate();
  });
});

/** A stage of one worker that holds task 0 until the test lets it go. */
function heldPipeline(handshake: Handshake, maxBacklog = Infinity) {
  return new Pipeline<number, unknown>(
    new Stage(Faulty, 1, {
      name: "held",
      maxBacklog,
      args: [{ fault: "hold", at: 0, words: handshake.words }],
    }),
  );
}

Deno.test("Pipeline.put() signal withdraws a task still waiting for room, and only that task", async () => {
  const handshake = new Handshake();
  const pipe = heldPipeline(handshake, 1);
  await guarded(pipe, async () => {
    pipe.put(0);
    await handshake.reached();
    pipe.put(1);
    const controller = new AbortController();
    const reason = new Error("withdrawn");
    const withdrawn = pipe.put(2, { signal: controller.signal });
    const kept = pipe.put(3, { signal: new AbortController().signal });
    assert.ok(await isPending(withdrawn));
    controller.abort(reason);
    await assert.rejects(withdrawn, (error) => error === reason);
    pipe.put(null);
    handshake.go();
    assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 3]);
    await kept;
  });
});

Deno.test("Pipeline.put() signal: a put that entered after waiting takes its abort listener off the signal", async () => {
  const handshake = new Handshake();
  const pipe = heldPipeline(handshake, 1);
  await guarded(pipe, async () => {
    const signal = new AbortController().signal;
    let listeners = 0;
    const add = signal.addEventListener.bind(signal);
    const remove = signal.removeEventListener.bind(signal);
    signal.addEventListener = (...args: Parameters<typeof add>) => {
      listeners++;
      add(...args);
    };
    signal.removeEventListener = (...args: Parameters<typeof remove>) => {
      listeners--;
      remove(...args);
    };
    pipe.put(0);
    await handshake.reached();
    pipe.put(1);
    // No room: these wait, with one listener on their one signal.
    const waiting = [2, 3, 4].map((task) => pipe.put(task, { signal }));
    assert.equal(listeners, 1);
    pipe.put(null);
    handshake.go();
    assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 2, 3, 4]);
    await Promise.all(waiting);
    assert.equal(listeners, 0);
  });
});

Deno.test("Pipeline.put() with an already aborted signal rejects with its reason and puts nothing", async () => {
  const handshake = new Handshake();
  const pipe = heldPipeline(handshake, 1);
  await guarded(pipe, async () => {
    const reason = new Error("too late");
    // Room in the ring: the task would go straight in.
    await assert.rejects(
      pipe.put(5, { signal: AbortSignal.abort(reason) }),
      (error) => error === reason,
    );
    pipe.put(0);
    await handshake.reached();
    pipe.put(1);
    // No room: the task would wait.
    await assert.rejects(
      pipe.put(6, { signal: AbortSignal.abort(reason) }),
      (error) => error === reason,
    );
    pipe.put(null);
    handshake.go();
    assert.deepEqual(await Array.fromAsync(pipe), [0, 1]);
  });
});

Deno.test("Pipeline.get() signal and timeout give up without losing a result", async () => {
  const handshake = new Handshake();
  const pipe = heldPipeline(handshake);
  await guarded(pipe, async () => {
    pipe.put(0);
    pipe.put(1);
    await handshake.reached();
    const controller = new AbortController();
    const reason = new Error("stop waiting");
    const waiting = pipe.get({ signal: controller.signal });
    assert.ok(await isPending(waiting));
    controller.abort(reason);
    await assert.rejects(waiting, (error) => error === reason);
    await assert.rejects(
      pipe.get({ signal: controller.signal }),
      (error) => error === reason,
    );
    await assert.rejects(pipe.get({ timeout: 20 }), (error: unknown) => {
      assert.ok(error instanceof DOMException);
      assert.equal(error.name, "TimeoutError");
      return true;
    });
    await assert.rejects(pipe.get({ timeout: 0 }), { name: "TimeoutError" });
    handshake.go();
    assert.equal(await pipe.get({ timeout: 10_000 }), 0);
    assert.equal(await pipe.get({ signal: new AbortController().signal }), 1);
    pipe.put(null);
    assert.equal(await pipe.get(), null);
  });
});

Deno.test("Pipeline.results() signal and timeout give up mid-iteration without losing a result", async () => {
  const handshake = new Handshake();
  const stage = new Stage(Faulty, 1, {
    name: "held",
    args: [{ fault: "hold", at: 2, words: handshake.words }],
  });
  const pipe = new Pipeline<number, unknown>(stage);
  await guarded(pipe, async () => {
    for (const task of [...range(5), null]) pipe.put(task);
    await handshake.reached();
    const controller = new AbortController();
    const reason = new Error("enough");
    const seen: unknown[] = [];
    await assert.rejects(async () => {
      for await (const result of pipe.results({ signal: controller.signal })) {
        seen.push(result);
        if (seen.length === 2) setTimeout(() => controller.abort(reason), 5);
      }
    }, (error) => error === reason);
    assert.deepEqual(seen, [0, 1]);
    await assert.rejects(
      Array.fromAsync(stage.results({ timeout: 20 })),
      { name: "TimeoutError" },
    );
    handshake.go();
    assert.deepEqual(await Array.fromAsync(pipe.results({ timeout: 10_000 })), [
      2,
      3,
      4,
    ]);
  });
});

/** Returns its task after a pause of 0 to 2 ms. */
async function pause(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, task % 3));
  return task;
}

Deno.test("Pipeline.get() timeout of 0 ms, called again and again, loses and repeats nothing", async () => {
  const first = new OrderedStage(pause, 3);
  const second = new OrderedStage(pause, 3);
  first.link(second);
  const pipe = new Pipeline<number, number>(first);
  await guarded(pipe, async () => {
    for (let task = 0; task < 200; task++) pipe.put(task);
    pipe.put(null);
    const results: number[] = [];
    let timeouts = 0;
    for (;;) {
      try {
        const result = await pipe.get({ timeout: 0 });
        if (result === null) break;
        results.push(result);
      } catch (error) {
        assert.equal((error as Error).name, "TimeoutError");
        timeouts++;
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    }
    assert.deepEqual(results, range(200));
    assert.ok(timeouts > 0, "no get() timed out: the test proved nothing");
  });
});

// ---- taskTimeout ----

/** Busy for 40 ms: slow, but well within the taskTimeout below. */
function slow(task: number): number {
  const end = performance.now() + 40;
  while (performance.now() < end) {
    // Busy: the clock of a queued task must not run meanwhile.
  }
  return task;
}

/**
 * Task 0 blocks in Atomics.wait until the test lets it go (word 1), then sets
 * word 3 and returns. Task 11 sets word 7, waits for word 3, and runs on for
 * 20 ms more: it holds a replacement worker mid-task while the stopped one
 * wakes. Every task counts itself (word 2) and, if it runs in the worker that
 * ran task 0, counts that too (word 6): that worker was stopped while task 0
 * waited, and must run nothing more. Other tasks are busy for 1 ms.
 *
 * `Worker.terminate()` does not stop a worker blocked in `Atomics.wait`: when
 * the wait ends, its code runs on. The stage must see to it that such a
 * worker then does nothing: no result, no write to a ring, no further task.
 */
class StuckInWait extends OrderedWorker<number, unknown> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number): unknown {
    const words = this.words;
    const scope = globalThis as unknown as { stuckWorkerId?: number };
    scope.stuckWorkerId ??= Atomics.add(words, 4, 1) + 1;
    Atomics.add(words, 2, 1);
    Atomics.notify(words, 2);
    if (task === 0) {
      Atomics.store(words, 5, scope.stuckWorkerId);
      Atomics.store(words, 0, 1);
      Atomics.notify(words, 0);
      Atomics.wait(words, 1, 0, 10_000);
      Atomics.store(words, 3, 1);
      Atomics.notify(words, 3);
      return "the result of task 0, from a worker that was stopped";
    }
    if (Atomics.load(words, 5) === scope.stuckWorkerId) {
      Atomics.add(words, 6, 1);
      Atomics.notify(words, 6);
    }
    let busy = 1;
    if (task === 11) {
      Atomics.store(words, 7, 1);
      Atomics.notify(words, 7);
      Atomics.wait(words, 3, 0, 2_000);
      busy = 20;
    }
    const end = performance.now() + busy;
    while (performance.now() < end) {
      // Busy: the worker is mid-task all along.
    }
    return task;
  }
}

const CALLS = 2;
const STOPPED_WORKER_TASKS = 6;
const REPLACEMENT_MID_TASK = 7;

for (const onError of ["fail", "skip"] as const) {
  Deno.test(`Stage taskTimeout (onError "${onError}"): a worker stopped while its task blocks in Atomics.wait does nothing more when the wait ends`, async () => {
    const handshake = new Handshake();
    const { words } = handshake;
    const pipe = new Pipeline<number, unknown>(
      new OrderedStage(StuckInWait, 1, {
        name: "stuck",
        taskTimeout: TASK_TIMEOUT_MS,
        onError,
        args: [words],
      }),
    );
    await guarded(pipe, async () => {
      const n = 40;
      const puts = Promise.allSettled(range(n).map((task) => pipe.put(task)));
      await handshake.reached();
      if (onError === "fail") {
        await assert.rejects(pipe.get(), (error: unknown) => {
          assertLostError(error, "hang", "stuck", 0);
          return true;
        });
        await pipe.done;
        const calls = Atomics.load(words, CALLS);
        handshake.go();
        assert.equal(
          await changesWithin(words, CALLS, calls, 300),
          false,
          "a task ran after the pipeline failed",
        );
      } else {
        // The replacement runs the next tasks; wake the stopped worker while
        // the replacement is in the middle of task 11, then finish.
        const results: unknown[] = [];
        for (let i = 0; i < 10; i++) results.push(await pipe.get());
        await waitForWord(words, REPLACEMENT_MID_TASK);
        handshake.go();
        await changesWithin(words, STOPPED_WORKER_TASKS, 0, 100);
        pipe.put(null);
        for await (const result of pipe) results.push(result);
        assert.deepEqual(results, range(n).slice(1));
        await pipe.done;
        assert.equal(Atomics.load(words, CALLS), n);
      }
      assert.equal(
        Atomics.load(words, STOPPED_WORKER_TASKS),
        0,
        "the stopped worker ran more tasks",
      );
      await puts;
    });
  });
}

Deno.test("Pipeline.terminate(): a worker whose task blocks in Atomics.wait does nothing more when the wait ends", async () => {
  const handshake = new Handshake();
  const { words } = handshake;
  const pipe = new Pipeline<number, unknown>(
    new OrderedStage(StuckInWait, 1, { name: "stuck", args: [words] }),
  );
  await guarded(pipe, async () => {
    const puts = Promise.allSettled(range(10).map((task) => pipe.put(task)));
    await handshake.reached();
    pipe.terminate();
    await pipe.done;
    const calls = Atomics.load(words, CALLS);
    handshake.go();
    assert.equal(
      await changesWithin(words, CALLS, calls, 300),
      false,
      "the terminated worker ran more tasks",
    );
    await puts;
  });
});

Deno.test("Stage taskTimeout counts from the task's start: queued tasks do not time out while earlier ones run", async () => {
  const stage = new OrderedStage(slow, 1, { name: "slow", taskTimeout: 250 });
  const pipe = new Pipeline<number, number>(stage);
  await guarded(pipe, async () => {
    // Ten tasks of 40 ms in one worker: the last starts ~360 ms after it was put.
    for (let task = 0; task < 10; task++) pipe.put(task);
    pipe.put(null);
    assert.deepEqual(await Array.fromAsync(pipe), range(10));
    assert.equal(stage.skipped, 0);
  });
});

// ---- a worker that fails the pipeline and ends before its error is sent ----

// The failing worker raises the failure word first (see `Dismissal.fail`):
// every other worker stops, and the reader waits for its error. If the
// worker's thread ends before that error can be sent, its loss must fail the
// pipeline instead: neither a wait for ever, nor a replacement (which the
// word would stop at once).

/** Throws at task 5 after queueing a Deno.exit() that runs before the error is sent. */
function exitsWhileFailing(x: number): number {
  if (x === 5) {
    Promise.resolve().then(() => Deno.exit(1));
    throw new Error("five failed");
  }
  return x;
}

/** Throws at task 5 a value that can be neither cloned nor printed. */
function throwsUnsendable(x: number): number {
  if (x === 5) {
    const error = Object.create(null);
    error.method = () => x;
    throw error;
  }
  return x;
}

for (const restart of [false, true]) {
  Deno.test(`fault: a worker that fails the pipeline calls Deno.exit() before its error is sent${restart ? " (restart)" : ""}: the read rejects, not hangs`, async () => {
    const pipe = new Pipeline<number, number>(
      new UnorderedStage(exitsWhileFailing, 2, { name: "exits", restart }),
    );
    await guarded(pipe, async () => {
      for (const task of range(1000)) pipe.put(task).catch(() => {});
      pipe.put(null).catch(() => {});
      await assert.rejects(
        Array.fromAsync(pipe),
        (error) =>
          error instanceof StageError && error.stage === "exits" &&
          /five failed|Deno\.exit\(1\)/.test(error.message),
      );
    });
  });
}

Deno.test("fault: a task that throws a value that can be neither cloned nor printed fails the pipeline: the read rejects, not hangs", async () => {
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(throwsUnsendable, 2, { name: "unsendable" }),
  );
  await guarded(pipe, async () => {
    for (const task of range(1000)) pipe.put(task).catch(() => {});
    pipe.put(null).catch(() => {});
    await assert.rejects(
      Array.fromAsync(pipe),
      (error) =>
        error instanceof StageError && error.stage === "unsendable" &&
        error.task === 5 && /task 5 failed/.test(error.message),
    );
  });
});

Deno.test("fault: a fork's leaf read to its end before the other branch fails: done rejects with the StageError, and the program that awaits it ends normally; a reader still reading delivers it and done resolves", async () => {
  const { code, stdout, stderr } = await runScript(
    fixture("fork_leaf_read_first.ts"),
    { flags: ["--allow-read"] },
  );
  assert.equal(code, 0, stderr);
  const [fork, single] = stdout.trimEnd().split("\n").map((line) =>
    JSON.parse(line)
  );
  assert.deepEqual(fork.read, [1, 2, 3, 4, 5]);
  assert.match(
    fork.done,
    /^StageError: stage 'failing'.*task 3.*failing broke/,
  );
  // A reader that was reading caught it: done resolves.
  assert.deepEqual(single, { caught: "StageError", done: "resolved" });
});

Deno.test("fault: a feed that nothing awaits, whose source throws: the reader catches the error and the program ends normally; with no reader the error is reported at the end (exit code 1)", async () => {
  const read = await runScript(fixture("feed_source_throws.ts"), {
    flags: ["--allow-read"],
    args: ["read"],
  });
  assert.equal(read.code, 0, read.stderr);
  assert.equal(read.stdout, "reader: source broke\ndone settled\n");
  const none = await runScript(fixture("feed_source_throws.ts"), {
    flags: ["--allow-read"],
    args: ["none"],
  });
  assert.equal(none.code, 1, none.stderr);
  assert.equal(none.stdout, "done settled\n");
  assert.match(none.stderr, /Uncaught Error: source broke/);
});
