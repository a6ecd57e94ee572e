/**
 * Elastic stages, seen from the main thread: a timer that adds workers where
 * tasks wait, asks for workers back where they mostly wait within the
 * pipeline's `threads` budget, and keeps the log of its decisions for
 * `insights()`.
 *
 * The workers leave by themselves (`IdleWait`, `WorkerRuntime`): once idle
 * for `idleMs`, or when this asks their stage for one (`StageStatus.SHED`).
 * This only adds them (`Supervisor.grow`), reading what it needs from shared
 * memory: the stage's input rings (tasks waiting) and its workers' figures
 * (busy and blocked time).
 *
 * The rule, every `TICK_MS` (the README states it too):
 * - a stage is pressed when tasks wait at its input and its workers were
 *   busy at least `GROW_BUSY` of the last `WINDOW_TICKS` ticks, with no
 *   worker of the pipeline still starting, and what it writes is not held up
 *   downstream (a ring of its half full, or a `maxBacklog` three quarters
 *   full: more workers would only wait there too);
 * - a stage with no worker gets one as soon as anything waits at its input
 *   (a task, or the stop);
 * - a stage pressed for `PRESSED_TICKS` ticks in a row gets a worker, up to
 *   its `max`, while the elastic stages' workers above their `min` are fewer
 *   than `threads` and the pipeline's workers were busy, together, less than
 *   the machine's cores (a thread more would only take CPU from the others);
 * - else the least busy other elastic stage above its `min` whose workers
 *   were busy at most `GIVE_BUSY` is asked for a worker, which leaves once
 *   idle (or between claims); the pressed stage grows as soon as it has left;
 * - a stage that got a worker gives none away for `SETTLE_MS`, and one that
 *   gave one away gets none for as long: with the gap between `GROW_BUSY`
 *   and `GIVE_BUSY`, this keeps a worker from moving back and forth.
 *
 * @module
 */

import { Ring } from "../shared_memory/ring.ts";
import { Bell } from "../shared_memory/bell.ts";
import { LinkReader } from "../shared_memory/link_reader.ts";
import { StageStatus } from "../shared_memory/status.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";
import type { Supervisor } from "../main_thread/supervisor.ts";
import type { Resize } from "./stats.ts";

/** Ms between two looks. */
const TICK_MS = 25;
/** Ticks whose busy time decides (50 ms). */
const WINDOW_TICKS = 2;
/** Ticks in a row a stage must be pressed before it grows. */
const PRESSED_TICKS = 2;
/** Busy share at or above which a stage with waiting tasks is pressed. */
const GROW_BUSY = 0.9;
/** Busy share at or below which a stage may give a worker away. */
const GIVE_BUSY = 0.5;
/** Ms after a change during which a stage does not change the other way. */
const SETTLE_MS = 1000;
/** Ms a request for a worker stands before it is withdrawn. */
const ASK_MS = 500;

/** What the control needs of one elastic stage. */
interface Elastic {
  stage: AnyStage;
  min: number;
  words: Int32Array;
  figures: Float64Array;
  status: StageStatus;
  /** The control words of its input's rings (HEAD, TAIL). */
  rings: Int32Array[];
  /** Its input link's control block (its doorbell, to wake idle workers). */
  link: Int32Array;
  /** The control words of the rings its places write to. */
  outputs: Int32Array[];
  /** The capacity of those rings, in bytes. */
  outputBytes: number;
  /** The links downstream that bound their backlog, and the bound. */
  backlogs: { control: Int32Array; max: number }[];
  /** Busy minus blocked ms of its places, at each of the last ticks. */
  busy: number[];
  /** Ticks in a row it was pressed. */
  pressed: number;
  /** Its busy share at the last look (for the log). */
  lastBusy: number;
  grewAt: number;
  gaveAt: number;
  /** When it was asked for a worker, and why (for the log), or null. */
  asked: { at: number; why: string; for: Elastic } | null;
  /** Workers other stages gave it: it grows by them while pressed, busy cores or not. */
  owed: number;
}

/** Adds workers to elastic stages, and moves them between stages. */
export class ElasticControl {
  /** The decisions so far, in order. */
  readonly log: Resize[] = [];
  readonly #stages: Elastic[];
  readonly #supervisor: Supervisor;
  readonly #threads: number;
  /** The fixed local stages: their busy workers count against the cores too. */
  readonly #fixed: { status: StageStatus; size: number; busy: number[] }[];
  /** The machine's cores. */
  readonly #cores = navigator.hardwareConcurrency;
  readonly #createdAt: number;
  readonly #backlogOf: (stage: AnyStage) => number;
  readonly #fail: (error: unknown) => void;
  #timer: ReturnType<typeof setInterval> | undefined;
  /** The ticks' times (performance.now()), as many as `busy` holds. */
  readonly #times: number[] = [];

  /**
   * Controls the elastic ones of `stages`, whose links `wiring` gives;
   * `backlogOf` counts a stage's waiting tasks for the log.
   */
  constructor(
    stages: readonly AnyStage[],
    wiring: {
      inputOf(stage: AnyStage): {
        control: SharedArrayBuffer;
        rings: SharedArrayBuffer[];
      };
      outputsOf(stage: AnyStage): {
        rings: SharedArrayBuffer[];
        backlogs: { control: SharedArrayBuffer; max: number }[];
      };
    },
    supervisor: Supervisor,
    threads: number,
    backlogOf: (stage: AnyStage) => number,
    fail: (error: unknown) => void,
  ) {
    this.#supervisor = supervisor;
    this.#threads = threads;
    this.#createdAt = performance.now();
    this.#backlogOf = backlogOf;
    this.#fail = fail;
    this.#fixed = stages.filter((stage) =>
      internalsOf(stage).elastic === null && internalsOf(stage).standIn === null
    ).map((stage) => ({
      status: internalsOf(stage).status!,
      size: stage.size,
      busy: [],
    }));
    this.#stages = stages.filter((stage) => internalsOf(stage).elastic)
      .map((stage) => {
        const status = internalsOf(stage).status!;
        const input = wiring.inputOf(stage);
        const outputs = wiring.outputsOf(stage);
        return {
          stage,
          min: internalsOf(stage).elastic!.min,
          words: status.words,
          figures: status.figures,
          status,
          rings: input.rings.map((ring) =>
            new Int32Array(ring, 0, Ring.CONTROL_BYTES >> 2)
          ),
          link: new Int32Array(input.control),
          outputs: outputs.rings.map((ring) =>
            new Int32Array(ring, 0, Ring.CONTROL_BYTES >> 2)
          ),
          outputBytes: (outputs.rings[0]?.byteLength ?? 0) - Ring.CONTROL_BYTES,
          backlogs: outputs.backlogs.map(({ control, max }) => ({
            control: new Int32Array(control),
            max,
          })),
          busy: [],
          pressed: 0,
          lastBusy: 0,
          grewAt: -Infinity,
          gaveAt: -Infinity,
          asked: null,
          owed: 0,
        };
      });
  }

  /** Starts looking, once the workers have started. */
  start(): void {
    if (this.#stages.length === 0) return;
    // Not unref'd: a stage with no worker may still have tasks to start one
    // for, as long as the pipeline runs (the workers would keep it alive).
    this.#timer = setInterval(() => {
      try {
        this.#tick();
      } catch (error) {
        this.#fail(error);
      }
    }, TICK_MS);
  }

  /** Stops looking: every worker has exited. */
  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** A worker left `stage` (see `SupervisorEvents.left`); it now has `size` workers. */
  left(stage: AnyStage, size: number, idleMs: number, asked: boolean): void {
    const elastic = this.#stages.find((e) => e.stage === stage);
    if (elastic === undefined) return;
    const why = asked && elastic.asked !== null
      ? elastic.asked.why
      : `idle ${Math.round(idleMs).toLocaleString("en-US")} ms`;
    const taker = asked ? elastic.asked?.for : undefined;
    if (asked) elastic.asked = null;
    this.#record(stage, size + 1, size, why);
    if (taker === undefined) return;
    // The stage it was asked for grows now, not at the next look.
    taker.owed++;
    if (taker.pressed < PRESSED_TICKS) return;
    try {
      this.#growOwed(taker);
    } catch (error) {
      this.#fail(error);
    }
  }

  /** Grows `elastic` by a worker another stage gave it. */
  #growOwed(elastic: Elastic): void {
    if (this.#running(elastic) >= elastic.stage.size) return;
    const now = performance.now();
    this.#grow(elastic, now, this.#describe(elastic, elastic.lastBusy));
    elastic.pressed = 0;
    elastic.owed--;
  }

  #tick(): void {
    const now = performance.now();
    const times = this.#times;
    times.push(now);
    if (times.length > WINDOW_TICKS + 1) times.shift();
    const looks = this.#stages.map((elastic) => this.#look(elastic, now));
    let added = this.#stages.reduce(
      (sum, e) => sum + Math.max(0, this.#running(e) - e.min),
      0,
    );
    // Workers busy over the window, every stage's: at the cores, a new
    // thread would only take CPU from the others; moving one may still help.
    let busyWorkers = looks.reduce(
      (sum, { elastic, busy }) =>
        sum + busy * Math.max(1, this.#running(elastic)),
      0,
    );
    for (const stage of this.#fixed) {
      busyWorkers += this.#busyShare(stage.status, stage.size, stage.busy) *
        stage.size;
    }
    for (const look of looks) {
      const { elastic, waiting, busy } = look;
      const running = this.#running(elastic);
      if (running === 0 && waiting) {
        // Nothing may wait at a stage without a worker: not even the stop.
        this.#grow(elastic, now, this.#describe(elastic, busy));
        added++;
        continue;
      }
      if (elastic.pressed < PRESSED_TICKS || running >= elastic.stage.size) {
        continue;
      }
      if (now - elastic.gaveAt < SETTLE_MS) continue;
      if (elastic.owed > 0) {
        this.#growOwed(elastic);
        added++;
        busyWorkers++;
        continue;
      }
      if (added < this.#threads && busyWorkers < this.#cores) {
        this.#grow(elastic, now, this.#describe(elastic, busy));
        added++;
        busyWorkers++;
        elastic.pressed = 0;
        continue;
      }
      this.#askForWorker(looks, elastic, now, busy);
    }
    for (const elastic of this.#stages) {
      // A request no idle worker took is withdrawn.
      if (elastic.asked !== null && now - elastic.asked.at > ASK_MS) {
        Atomics.store(elastic.words, StageStatus.SHED, 0);
        elastic.asked = null;
      }
    }
  }

  /** What one stage looks like now: tasks waiting, and its busy share over the window. */
  #look(elastic: Elastic, now: number) {
    let waiting = false;
    for (const ring of elastic.rings) {
      if (
        Atomics.load(ring, Ring.HEAD) !== Atomics.load(ring, Ring.TAIL)
      ) waiting = true;
    }
    const { status, figures } = elastic;
    // What the workers published (busy less blocked), and the time since
    // their running batches began, which counts as busy only while nothing
    // holds their writes up (else they may be blocked in them).
    let published = 0;
    let ongoing = 0;
    for (let i = 0; i < elastic.stage.size; i++) {
      const at = status.figure(i, 0);
      published += figures[at + StageStatus.BUSY_MS]! -
        figures[at + StageStatus.BLOCKED_MS]!;
      const since = figures[at + StageStatus.SINCE]!;
      if (figures[at + StageStatus.IN_FLIGHT]! > 0 && since > 0) {
        ongoing += Math.max(0, performance.timeOrigin + now - since);
      }
    }
    const held = this.#heldUp(elastic);
    elastic.busy.push(published);
    if (elastic.busy.length > WINDOW_TICKS + 1) elastic.busy.shift();
    const times = this.#times;
    const span = (now - times[0]!) * Math.max(1, this.#running(elastic));
    const busyMs = published - elastic.busy[0]! + (held ? 0 : ongoing);
    const busy = span > 0 ? Math.min(1, busyMs / span) : 0;
    // Busy shares mean little while any worker of the pipeline starts.
    const starting = this.#supervisor.starting(null) > 0;
    const pressed = waiting && !starting && !held &&
      times.length > WINDOW_TICKS && busy >= GROW_BUSY;
    elastic.pressed = pressed ? elastic.pressed + 1 : 0;
    elastic.lastBusy = busy;
    // A worker given for a pressure that is gone is not owed any more.
    if (!pressed) elastic.owed = 0;
    return { elastic, waiting, busy };
  }

  /** The busy share of a fixed stage's `size` workers over the window (`series`: what they published at each tick). */
  #busyShare(status: StageStatus, size: number, series: number[]): number {
    let published = 0;
    for (let i = 0; i < size; i++) {
      const at = status.figure(i, 0);
      published += status.figures[at + StageStatus.BUSY_MS]! -
        status.figures[at + StageStatus.BLOCKED_MS]!;
    }
    series.push(published);
    if (series.length > WINDOW_TICKS + 1) series.shift();
    const span = (this.#times.at(-1)! - this.#times[0]!) * size;
    return span > 0 ? Math.min(1, (published - series[0]!) / span) : 0;
  }

  /** Whether what `elastic`'s workers write waits downstream: a ring half full, or a backlog three quarters full. */
  #heldUp(elastic: Elastic): boolean {
    const half = elastic.outputBytes / 2;
    for (const ring of elastic.outputs) {
      const used = (Atomics.load(ring, Ring.HEAD) -
        Atomics.load(ring, Ring.TAIL)) | 0;
      if (used >= half) return true;
    }
    for (const { control, max } of elastic.backlogs) {
      // Three quarters: a merge keeps a place free, and a sample may fall
      // between a start and the write that refills it.
      if (Atomics.load(control, LinkReader.BACKLOG) * 4 >= max * 3) return true;
    }
    return false;
  }

  /** Asks the least busy other stage that may give a worker for one, for `pressed`. */
  #askForWorker(
    looks: { elastic: Elastic; busy: number }[],
    pressed: Elastic,
    now: number,
    busy: number,
  ): void {
    if (this.#stages.some((e) => e.asked !== null)) return;
    let donor: { elastic: Elastic; busy: number } | null = null;
    for (const look of looks) {
      const e = look.elastic;
      if (
        e === pressed || this.#running(e) <= e.min ||
        look.busy > GIVE_BUSY || now - e.grewAt < SETTLE_MS ||
        this.#times.length <= WINDOW_TICKS
      ) continue;
      if (donor === null || look.busy < donor.busy) donor = look;
    }
    if (donor === null) return;
    const e = donor.elastic;
    e.asked = {
      at: now,
      why: `busy ${percent(donor.busy)}, a worker for ${pressed.stage.name} (${
        this.#describe(pressed, busy)
      })`,
      for: pressed,
    };
    e.gaveAt = now;
    Atomics.store(e.words, StageStatus.SHED, 1);
    // Wake its idle workers, so that one takes the request.
    Bell.ringAlways(e.link, LinkReader.BELL);
  }

  #grow(elastic: Elastic, now: number, why: string): void {
    const from = this.#supervisor.sizeOf(elastic.stage).size;
    if (!this.#supervisor.grow(elastic.stage)) return;
    elastic.grewAt = now;
    this.#record(elastic.stage, from, from + 1, why);
  }

  #record(stage: AnyStage, from: number, to: number, why: string): void {
    this.log.push({
      stage: stage.name,
      from,
      to,
      atMs: performance.now() - this.#createdAt,
      why,
    });
  }

  /** The figures that make a stage grow: its backlog and busy share (or that it has no worker). */
  #describe(elastic: Elastic, busy: number): string {
    const backlog = this.#backlogOf(elastic.stage);
    return `backlog ${backlog.toLocaleString("en-US")}, ${
      this.#running(elastic) === 0 ? "no worker" : `busy ${percent(busy)}`
    }`;
  }

  /** Workers the stage runs now (by its own count, which its workers keep). */
  #running(elastic: Elastic): number {
    return Atomics.load(elastic.words, StageStatus.WORKERS);
  }
}

function percent(share: number): string {
  return `${Math.round(Math.min(1, share) * 100)}%`;
}
