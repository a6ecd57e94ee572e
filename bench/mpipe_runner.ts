// The project side of the benchmarks: workloads W1–W6 of /work/shared/BENCHMARKS.md built
// with MPipe's public API exactly as a user would (OrderedStage / UnorderedStage, link,
// new Pipeline, an async producer awaiting `put` concurrently with a consumer reading
// `results()`), behind the same `start` / `run` / `roundTrip` / `close` shape as the
// postMessage baseline (`PostMessagePipeline`), so the bench file and the comparison script
// drive both the same way.
//
// One MPipe pipeline serves the warm-up and every timed run: a pipeline ends after its stop
// request, so `run` never puts null; `close` does (put(null), drain, await done).
//
// The library is imported on demand (`loadLibrary`): this checkout's mod.ts by default, or
// another commit's, so that bench/ab.ts can measure an old commit with today's bench code.

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { Pipeline, PipelineOptions, Stage } from "../mod.ts";
import {
  type PostMessageOptions,
  PostMessagePipeline,
} from "./postmessage_pipeline.ts";
import * as w from "./workloads.ts";

/**
 * The part of the public API the benchmarks build pipelines with. Every commit's mod.ts has
 * offered it with these signatures (`put`, `get`, `results()`, `done`, `terminate()`).
 */
export type Library = Pick<
  typeof import("../mod.ts"),
  "OrderedStage" | "UnorderedStage" | "Pipeline"
>;

/**
 * Imports the library: this checkout's mod.ts, or the mod.ts at `modPath` (a path, relative
 * to the working directory, or a file URL), e.g. another commit's exported by bench/ab.ts.
 * The other library is trusted to offer `Library`; nothing checks its types at run time.
 */
export async function loadLibrary(modPath?: string): Promise<Library> {
  if (modPath === undefined) return await import("../mod.ts");
  const url = modPath.startsWith("file:")
    ? modPath
    : pathToFileURL(resolve(modPath)).href;
  const library = await import(url) as Partial<Library>;
  for (const name of ["OrderedStage", "UnorderedStage", "Pipeline"] as const) {
    if (typeof library[name] !== "function") {
      throw new TypeError(
        `'${modPath}' does not export ${name}; pass the mod.ts of an MPipe checkout`,
      );
    }
  }
  return library as Library;
}

/** The workloads with a throughput or latency figure. */
export type WorkloadId = "W1" | "W2" | "W3" | "W4" | "W4L" | "W5" | "W6";

/** One stage of a workload: a self-contained function, its worker count and ordering. */
export interface BenchStage {
  /** Stage function, shipped to the workers by its source; uses only its parameter and globals. */
  fn: (x: never) => unknown;
  /** Number of workers. */
  workers: number;
  /** Whether the stage keeps task order (OrderedStage) or not (UnorderedStage). */
  ordered: boolean;
}

/** A workload: stages, tasks, result checks; shared by the MPipe side and the baseline. */
export interface WorkloadSpec {
  /** The stages, first to last. */
  stages: BenchStage[];
  /** Task i. */
  task: (i: number) => unknown;
  /** A fresh checker for a run of n tasks (ordered ones ignore n). */
  checker: (n: number) => w.Checker<unknown>;
  /** Whether results come in task order. */
  ordered: boolean;
  /** Bytes per task for an MB/s figure, or 0. */
  bytes: number;
  /** The baseline's in-flight limit. */
  maxInFlight: number;
}

/** Wraps an ordered check function as a Checker with nothing to assert at the end. */
export function orderedChecker(
  check: (k: number, result: unknown) => void,
): (n: number) => w.Checker<unknown> {
  return () => ({ check, done: () => undefined });
}

/** The W3 spec for `workers` workers (1 or 2). */
export function w3Spec(workers: number): WorkloadSpec {
  return {
    stages: [{ fn: w.w3Hash, workers, ordered: false }],
    task: w.w3Task,
    checker: w.w3Checker,
    ordered: false,
    bytes: 0,
    maxInFlight: w.MAX_IN_FLIGHT.W3,
  };
}

/** Every workload's spec (W3 with 2 workers; use `w3Spec(1)` for the other half). */
export const SPECS: Record<WorkloadId, WorkloadSpec> = {
  W1: {
    stages: [
      { fn: w.w1Increment, workers: 1, ordered: true },
      { fn: w.w1Double, workers: 1, ordered: true },
    ],
    task: w.w1Task,
    checker: orderedChecker(w.w1Check),
    ordered: true,
    bytes: 0,
    maxInFlight: w.MAX_IN_FLIGHT.W1,
  },
  W2: {
    stages: [
      { fn: w.w2Increment, workers: 2, ordered: false },
      { fn: w.w2Double, workers: 2, ordered: false },
    ],
    task: w.w2Task,
    checker: w.w2Checker,
    ordered: false,
    bytes: 0,
    maxInFlight: w.MAX_IN_FLIGHT.W2,
  },
  W3: w3Spec(2),
  W4: {
    stages: [{ fn: w.w4Identity, workers: 1, ordered: true }],
    task: w.w4Task,
    checker: orderedChecker(w.w4Check),
    ordered: true,
    bytes: w.W4_BYTES,
    maxInFlight: w.MAX_IN_FLIGHT.W4,
  },
  W4L: {
    stages: [{ fn: w.w4Identity, workers: 1, ordered: true }],
    task: w.w4lTask,
    checker: orderedChecker(w.w4lCheck),
    ordered: true,
    bytes: w.W4L_BYTES,
    maxInFlight: w.MAX_IN_FLIGHT.W4L,
  },
  W5: {
    stages: [
      { fn: w.w5AddA, workers: 1, ordered: true },
      { fn: w.w5AddB, workers: 1, ordered: true },
      { fn: w.w5AddC, workers: 1, ordered: true },
    ],
    task: w.w5Task,
    checker: orderedChecker(w.w5Check),
    ordered: true,
    bytes: 0,
    maxInFlight: w.MAX_IN_FLIGHT.W5,
  },
  W6: {
    stages: [{ fn: w.w6Increment, workers: 1, ordered: true }],
    task: w.w6Task,
    checker: orderedChecker(w.w6Check),
    ordered: true,
    bytes: 0,
    maxInFlight: w.MAX_IN_FLIGHT.W6,
  },
};

/** What both pipelines offer the benchmarks. */
export interface Runner {
  /** Pushes tasks task(0..count-1) and checks every result; resolves after the last check. */
  run(
    count: number,
    task: (i: number) => unknown,
    check: (k: number, result: unknown) => void,
  ): Promise<void>;
  /** Puts one task and resolves with its one result. */
  roundTrip(task: unknown): Promise<unknown>;
}

/** The warm-up pass of BENCHMARKS.md through `runner` (W6: round trips). */
export async function warmUp(
  runner: Runner,
  id: WorkloadId,
  spec: WorkloadSpec = SPECS[id],
  count: number = w.WARMUP[id],
): Promise<void> {
  if (id === "W6") {
    for (let i = 0; i < count; i++) {
      w.w6Check(i, await runner.roundTrip(w.w6Task(i)));
    }
    return;
  }
  const c = spec.checker(count);
  await runner.run(count, spec.task, c.check);
  c.done();
}

/** Options of `MPipeRunner.start`. */
export interface MPipeRunnerOptions {
  /**
   * The library to build the pipeline with (`loadLibrary`).
   * @default {this checkout's mod.ts}
   */
  library?: Library;
  /** Pipeline options (ring size, spin), passed to `new Pipeline`. */
  pipeline?: PipelineOptions;
  /**
   * A run that sees no new result for this many ms fails (the pipeline is terminated)
   * instead of hanging.
   * @default {30000}
   */
  stallMs?: number;
  /**
   * Tasks by reference (W4, W4L): each task is a buffer of `bytes` from `pipe.alloc`, made
   * by `fill(i, buffer)` in place of the workload's `task(i)`, and each result is freed once
   * checked.
   */
  byReference?: { bytes: number; fill: (i: number, bytes: Uint8Array) => void };
}

/** An MPipe pipeline driven like `PostMessagePipeline`. */
export class MPipeRunner implements Runner {
  readonly pipe: Pipeline<unknown, unknown>;
  #busy = false;
  #closed = false;
  #error: Error | undefined;
  #progress = 0; // results read so far, for the stall watchdog
  #abort: ((e: Error) => void) | undefined;
  #watchdog: ReturnType<typeof setInterval>;
  #byReference: MPipeRunnerOptions["byReference"];

  private constructor(
    pipe: Pipeline<unknown, unknown>,
    stallMs: number,
    byReference: MPipeRunnerOptions["byReference"],
  ) {
    this.pipe = pipe;
    this.#byReference = byReference;
    let seen = -1;
    let since = performance.now();
    this.#watchdog = setInterval(() => {
      if (!this.#busy || this.#progress !== seen) {
        seen = this.#progress;
        since = performance.now();
      } else if (performance.now() - since > stallMs) {
        this.#fail(
          new Error(
            `MPipe stalled: no result for ${stallMs} ms (after ${this.#progress} results); the pipeline was terminated`,
          ),
        );
      }
    }, Math.min(1000, stallMs / 4));
    Deno.unrefTimer(this.#watchdog); // never keeps the process alive
  }

  /**
   * Builds the pipeline of `stages` (a chain, linked first to last) and, given a warm-up,
   * pushes it through before returning, so that every worker is up.
   */
  static async start(
    stages: BenchStage[],
    warmup?: { id: WorkloadId; spec?: WorkloadSpec; count?: number },
    options: MPipeRunnerOptions = {},
  ): Promise<MPipeRunner> {
    if (stages.length === 0) throw new Error("need at least one stage");
    const library = options.library ?? await loadLibrary();
    const built: Stage<never, unknown>[] = stages.map((s) =>
      s.ordered
        ? new library.OrderedStage(s.fn, s.workers)
        : new library.UnorderedStage(s.fn, s.workers)
    );
    for (let i = 0; i + 1 < built.length; i++) built[i]!.link(built[i + 1]!);
    const pipe = new library.Pipeline<unknown, unknown>(
      built[0] as unknown as Stage<unknown, unknown>,
      options.pipeline,
    );
    const runner = new MPipeRunner(
      pipe,
      options.stallMs ?? 30_000,
      options.byReference,
    );
    if (warmup !== undefined) {
      try {
        await warmUp(runner, warmup.id, warmup.spec, warmup.count);
      } catch (e) {
        await runner.close().catch(() => {});
        throw e;
      }
    }
    return runner;
  }

  /**
   * Pushes `count` tasks with an async producer awaiting `put` while a consumer reads
   * `results()` and checks every one (`check(k, result)`, k = arrival index). Never puts
   * the stop request.
   */
  async run(
    count: number,
    task: (i: number) => unknown,
    check: (k: number, result: unknown) => void,
  ): Promise<void> {
    this.#begin();
    const pipe = this.pipe;
    let got = 0;
    const aborted = new Promise<never>((_, reject) => this.#abort = reject);
    const byReference = this.#byReference;
    const producer = byReference === undefined
      ? async () => {
        for (let i = 0; i < count; i++) await pipe.put(task(i));
      }
      : async () => {
        for (let i = 0; i < count; i++) {
          const bytes = await pipe.alloc(byReference.bytes);
          byReference.fill(i, bytes);
          await pipe.put(bytes);
        }
      };
    const consumer = async () => {
      if (count <= 0) return;
      for await (const result of pipe.results()) {
        check(got, result);
        if (byReference !== undefined) pipe.free(result as Uint8Array);
        this.#progress++;
        if (++got === count) return;
      }
      throw new Error(
        `MPipe: the pipeline ended after ${got} of ${count} results`,
      );
    };
    try {
      await Promise.race([Promise.all([producer(), consumer()]), aborted]);
    } catch (e) {
      this.#fail(e instanceof Error ? e : new Error(String(e)));
      throw this.#error;
    } finally {
      this.#end();
    }
  }

  /** W6: puts one task, awaits it, and resolves with its one result. */
  async roundTrip(task: unknown): Promise<unknown> {
    this.#begin();
    try {
      await this.pipe.put(task);
      const result = await this.pipe.get();
      if (result === null) {
        throw new Error("MPipe: the pipeline ended before the result came");
      }
      this.#progress++;
      return result;
    } catch (e) {
      this.#fail(e instanceof Error ? e : new Error(String(e)));
      throw this.#error;
    } finally {
      this.#end();
    }
  }

  /**
   * Puts the stop request, reads what is left (there should be nothing) and waits until
   * every worker has exited; a failed pipeline is terminated instead.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (this.#error === undefined && !this.#busy) {
        this.#busy = true; // the watchdog also covers the drain
        const stop = this.pipe.put(null);
        let extra = 0;
        const drain = (async () => {
          await stop;
          for await (const _ of this.pipe.results()) extra++;
          await this.pipe.done;
        })();
        const aborted = new Promise<never>((_, reject) => this.#abort = reject);
        await Promise.race([drain, aborted]);
        if (extra > 0) {
          throw new Error(`MPipe: ${extra} unexpected results at close`);
        }
      } else {
        this.#stopNow();
        await this.pipe.done;
      }
    } catch (e) {
      this.#stopNow();
      throw e;
    } finally {
      this.#busy = false;
      this.#abort = undefined;
      clearInterval(this.#watchdog);
    }
  }

  /** Stops at once, without waiting: terminates every worker (for `unload` handlers). */
  terminate(): void {
    this.#closed = true;
    clearInterval(this.#watchdog);
    this.#stopNow();
  }

  // Terminates the pipeline. The stop request goes first, best effort: it wakes workers
  // sleeping in Atomics.wait, which Worker.terminate() alone does not end in Deno 2.9 (the
  // process then never exits).
  #stopNow(): void {
    this.pipe.put(null).catch(() => {});
    this.pipe.terminate();
  }

  #begin(): void {
    if (this.#error !== undefined) throw this.#error;
    if (this.#closed) throw new Error("MPipeRunner: closed");
    if (this.#busy) throw new Error("MPipeRunner: a run is already going on");
    this.#busy = true;
  }

  #end(): void {
    this.#busy = false;
    this.#abort = undefined;
  }

  // Remembers the first error (later runs fail with it), terminates, and fails the run.
  #fail(e: Error): void {
    this.#error ??= e;
    this.#stopNow();
    this.#abort?.(this.#error);
  }
}

/** Builds and warms up the MPipe pipeline of workload `id` (W3: `w3Workers` workers). */
export function startMPipe(
  id: WorkloadId,
  options: MPipeRunnerOptions & { w3Workers?: number } = {},
): Promise<MPipeRunner> {
  const spec = id === "W3" ? w3Spec(options.w3Workers ?? 2) : SPECS[id];
  return MPipeRunner.start(spec.stages, { id, spec }, options);
}

/** The baseline variants: one message per item, 256 values per message, or transferred. */
export type BaselineVariant = "simple" | "batch" | "transfer";

/** Builds and warms up the postMessage baseline of workload `id`. */
export async function startPostMessage(
  id: WorkloadId,
  variant: BaselineVariant = "simple",
  options: { w3Workers?: number } = {},
): Promise<PostMessagePipeline> {
  const spec = id === "W3" ? w3Spec(options.w3Workers ?? 2) : SPECS[id];
  const pmOptions: PostMessageOptions = {
    ordered: spec.ordered,
    maxInFlight: spec.maxInFlight,
    batch: variant === "batch" ? 256 : 1,
    transfer: variant === "transfer",
  };
  const p = await PostMessagePipeline.start(spec.stages, pmOptions);
  try {
    await warmUp(p, id, spec);
  } catch (e) {
    p.close();
    throw e;
  }
  return p;
}
