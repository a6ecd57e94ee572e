// The benchmark baseline: the pipeline a user would write with plain Web Workers and
// postMessage (see "The baseline" in /work/shared/BENCHMARKS.md).
//
// One Worker per stage replica, each built from a Blob URL that embeds the stage function's
// source (so no permission flags are needed). The main thread feeds the first stage
// round-robin; each worker holds a MessageChannel port to every worker of the next stage and
// sends round-robin; the last stage posts back to the main thread. Messages are
// `{ s: sequence, v: value }` (batched: `{ s: firstSeq, v: values[] }`), and the main thread
// restores order with a Map keyed by sequence. Stage functions must be synchronous.

/** One stage: a self-contained function (shipped by `fn.toString()`) and its worker count. */
export interface PostMessageStage {
  /** Stage function (declaration, expression or arrow; not method shorthand); uses only its parameter and globals. */
  fn: (x: never) => unknown;
  /** Number of worker replicas. */
  workers: number;
}

/** Options of `PostMessagePipeline.start`. */
export interface PostMessageOptions {
  /** Values per message: 1 = one message per item (default); e.g. 256 = batches. */
  batch?: number;
  /** Most items pushed but not yet read and checked (default 4096). */
  maxInFlight?: number;
  /** Transfer top-level ArrayBuffers / typed-array buffers on every hop instead of copying. */
  transfer?: boolean;
  /** Deliver results in task order (default true); unordered skips the reorder Map. */
  ordered?: boolean;
}

interface Msg {
  s: number;
  v: unknown;
}

function noop(): void {}

// Buffers to transfer for a message value. Shipped to workers by toString(), so self-contained.
function transferList(v: unknown, batched: boolean): ArrayBuffer[] {
  const list: ArrayBuffer[] = [];
  const add = (x: unknown) => {
    const b = ArrayBuffer.isView(x) ? x.buffer : x;
    // A buffer listed twice is a DataCloneError; SharedArrayBuffers are not transferable.
    if (b instanceof ArrayBuffer && !list.includes(b)) list.push(b);
  };
  if (batched && Array.isArray(v)) { for (const x of v) add(x); }
  else add(v);
  return list;
}

// Worker source. The first message wires the ports and is answered "ready"; after that
// every message on self (first stage) or on an input port (later stages) is data.
function workerSource(fn: string, batched: boolean, transfer: boolean): string {
  return `
const fn = (${fn});
${transferList.toString()}
let outs = [self]; // the last stage posts to the main thread
let rr = 0;
function onData(e) {
  const m = e.data;
  let v;
  if (${batched}) {
    v = new Array(m.v.length);
    for (let i = 0; i < v.length; i++) v[i] = fn(m.v[i]);
  } else {
    v = fn(m.v);
  }
  const out = outs[rr];
  rr = rr + 1 === outs.length ? 0 : rr + 1;
  if (${transfer}) out.postMessage({ s: m.s, v }, transferList(v, ${batched}));
  else out.postMessage({ s: m.s, v });
}
self.onmessage = (e) => {
  const init = e.data;
  for (const p of init.ins) p.onmessage = onData;
  if (init.outs.length > 0) outs = init.outs;
  rr = init.index % outs.length; // spread replicas over the next stage
  self.onmessage = onData;
  self.postMessage("ready");
};
`;
}

/** Multi-stage worker pipeline over plain postMessage: the benchmark baseline. */
export class PostMessagePipeline {
  #workers: Worker[];
  #first: Worker[];
  #batch: number;
  #batched: boolean;
  #maxInFlight: number;
  #transfer: boolean;
  #ordered: boolean;
  #rr = 0;
  #seq = 0; // sequence numbers keep growing across runs, so stale results are recognisable
  #busy = false;
  #error: Error | undefined;
  #sink: (m: Msg) => void = noop;
  #fail: (e: Error) => void = noop;

  private constructor(workers: Worker[][], options: PostMessageOptions) {
    this.#workers = workers.flat();
    this.#first = workers[0]!;
    this.#maxInFlight = Math.max(1, options.maxInFlight ?? 4096);
    const batch = Math.max(1, Math.floor(options.batch ?? 1));
    this.#batched = batch > 1;
    // A batch larger than the in-flight limit could never be sent.
    this.#batch = Math.min(batch, this.#maxInFlight);
    this.#transfer = options.transfer ?? false;
    this.#ordered = options.ordered ?? true;
  }

  /** Starts every worker and resolves once all have answered (start-up is excluded from timing). */
  static async start(
    stages: { fn: (x: never) => unknown; workers: number }[],
    options: PostMessageOptions = {},
  ): Promise<PostMessagePipeline> {
    if (stages.length === 0 || stages.some((s) => !(s.workers >= 1))) {
      throw new Error("need at least one stage, each with at least one worker");
    }
    const batched = (options.batch ?? 1) > 1;
    const transfer = options.transfer ?? false;
    const urls: string[] = [];
    const workers: Worker[][] = [];
    const ready: Promise<void>[] = [];
    for (const stage of stages) {
      const src = workerSource(stage.fn.toString(), batched, transfer);
      const url = URL.createObjectURL(
        new Blob([src], { type: "text/javascript" }),
      );
      urls.push(url);
      const row: Worker[] = [];
      for (let i = 0; i < stage.workers; i++) {
        const w = new Worker(url, { type: "module" });
        ready.push(
          new Promise((resolve, reject) => {
            w.onmessage = () => resolve();
            w.onerror = (e) => {
              e.preventDefault(); // keep a worker error from killing the process
              reject(new Error(`worker failed to start: ${e.message}`));
            };
          }),
        );
        row.push(w);
      }
      workers.push(row);
    }

    // One MessageChannel per (worker, next-stage worker) pair.
    const ins = workers.map((row) => row.map((): MessagePort[] => []));
    const outs = workers.map((row) => row.map((): MessagePort[] => []));
    for (let k = 0; k + 1 < workers.length; k++) {
      for (let u = 0; u < workers[k]!.length; u++) {
        for (let d = 0; d < workers[k + 1]!.length; d++) {
          const ch = new MessageChannel();
          outs[k]![u]!.push(ch.port1);
          ins[k + 1]![d]!.push(ch.port2);
        }
      }
    }
    workers.forEach((row, k) =>
      row.forEach((w, i) => {
        const init = { index: i, ins: ins[k]![i]!, outs: outs[k]![i]! };
        w.postMessage(init, [...init.ins, ...init.outs]);
      })
    );

    try {
      await Promise.all(ready);
    } catch (e) {
      for (const w of workers.flat()) w.terminate();
      throw e;
    } finally {
      for (const url of urls) URL.revokeObjectURL(url);
    }

    const p = new PostMessagePipeline(workers, options);
    for (const w of p.#workers) {
      w.onmessage = null;
      w.onerror = (e) => {
        e.preventDefault();
        p.#failWith(new Error(`worker error: ${e.message}`));
      };
      w.onmessageerror = () =>
        p.#failWith(new Error("message could not be deserialized"));
    }
    for (const w of workers[workers.length - 1]!) {
      w.onmessage = (e) => p.#sink(e.data);
    }
    return p;
  }

  /**
   * Pushes `count` tasks (`task(i)`, i = 0..count-1) with at most maxInFlight in flight and
   * checks every result: `check(k, result)` for the k-th result in task order, or in arrival
   * order when unordered. Resolves once the last result is read and checked.
   */
  run(
    count: number,
    task: (i: number) => unknown,
    check: (k: number, result: unknown) => void,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.#begin(reject)) return;
      const base = this.#seq;
      const end = base + count;
      this.#seq = end;
      const batched = this.#batched;
      const max = this.#maxInFlight;
      const pending = new Map<number, unknown>(); // ordered: arrived early, keyed by sequence
      let sent = base; // next sequence to send
      let next = base; // ordered: next sequence to deliver
      let done = 0; // results read and checked

      const finish = (err?: Error) => {
        this.#end();
        if (err) reject(err);
        else resolve();
      };
      const deliver = (v: unknown) => {
        if (!batched) check(done++, v);
        else for (const x of v as unknown[]) check(done++, x);
      };
      const pump = () => {
        for (;;) {
          const n = Math.min(this.#batch, end - sent);
          // Items still in the reorder Map count as in flight: they are not read yet.
          if (n <= 0 || sent - base - done + n > max) return;
          if (batched) {
            const vs = new Array(n);
            for (let j = 0; j < n; j++) vs[j] = task(sent - base + j);
            this.#post(sent, vs);
          } else {
            this.#post(sent, task(sent - base));
          }
          sent += n;
        }
      };

      this.#fail = finish;
      this.#sink = (m) => {
        if (m.s < base || m.s >= end) return; // left over from an aborted run
        try {
          if (!this.#ordered) deliver(m.v);
          else if (m.s !== next) pending.set(m.s, m.v);
          else {
            let v: unknown = m.v;
            for (;;) {
              deliver(v);
              next += batched ? (v as unknown[]).length : 1;
              if (!pending.has(next)) break;
              v = pending.get(next);
              pending.delete(next);
            }
          }
          if (done === count) finish();
          else pump();
        } catch (e) {
          finish(e instanceof Error ? e : new Error(String(e)));
        }
      };

      if (count <= 0) return finish();
      try {
        pump();
      } catch (e) {
        finish(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  /** W6: puts one task and resolves with its one result. */
  roundTrip(task: unknown): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (!this.#begin(reject)) return;
      const s = this.#seq++;
      this.#fail = (e) => {
        this.#end();
        reject(e);
      };
      this.#sink = (m) => {
        if (m.s !== s) return;
        this.#end();
        resolve(this.#batched ? (m.v as unknown[])[0] : m.v);
      };
      this.#post(s, this.#batched ? [task] : task);
    });
  }

  /** Terminates every worker; a run still in progress is rejected. */
  close(): void {
    for (const w of this.#workers) w.terminate();
    this.#failWith(new Error("pipeline closed"));
  }

  // Sends one message to the next first-stage worker, round-robin.
  #post(s: number, v: unknown): void {
    const w = this.#first[this.#rr]!;
    this.#rr = this.#rr + 1 === this.#first.length ? 0 : this.#rr + 1;
    if (this.#transfer) w.postMessage({ s, v }, transferList(v, this.#batched));
    else w.postMessage({ s, v });
  }

  // Marks a run as started; refuses overlapping runs and a failed or closed pipeline.
  #begin(reject: (e: Error) => void): boolean {
    const err = this.#error ??
      (this.#busy ? new Error("a run is already in progress") : null);
    if (err) {
      reject(err);
      return false;
    }
    this.#busy = true;
    return true;
  }

  #end(): void {
    this.#busy = false;
    this.#sink = noop;
    this.#fail = noop;
  }

  // Remembers the first error (later runs reject with it) and fails the current run.
  #failWith(e: Error): void {
    this.#error ??= e;
    this.#fail(e);
  }
}
