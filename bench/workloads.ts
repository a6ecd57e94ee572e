// Workloads W1–W6 of /work/shared/BENCHMARKS.md, shared by the project benchmark and the
// postMessage baseline so that both run exactly the same code.
//
// Stage functions are shipped to workers as source text (`fn.toString()`), so they may use
// only their own parameters and globals: no closures over module variables, no imports.
// Checkers run on the main thread inside the timed loop and throw an Error on a mismatch.

/** Tasks per timed run, per workload (W6: round-trip iterations). */
export const N = {
  W1: 200_000,
  W2: 200_000,
  W3: 2_000,
  W4: 20_000,
  /** W4 with 4 MiB payloads: the same bytes per pass. */
  W4L: 320,
  W5: 100_000,
  W6: 5_000,
} as const;

/** Warm-up tasks (W6: iterations) pushed through the same pipeline before timing. */
export const WARMUP = {
  W1: 1000,
  W2: 1000,
  W5: 1000,
  W4: 100,
  W4L: 4,
  W3: 20,
  W6: 500,
} as const;

/** Baseline in-flight limit per workload: 4096 items, 64 for the heavy W3/W4 tasks. */
export const MAX_IN_FLIGHT = {
  W1: 4096,
  W2: 4096,
  W3: 64,
  W4: 64,
  W4L: 4,
  W5: 4096,
  W6: 4096,
} as const;

/** A check function plus a final assertion, for workloads whose results arrive in any order. */
export interface Checker<T = void> {
  /** Checks one result; `k` is its arrival index. */
  check: (k: number, result: unknown) => void;
  /** Asserts that every expected result was seen; call after the run. */
  done: () => T;
}

// Short description of a bad value for error messages (never dumps 64 KiB).
function show(v: unknown): string {
  if (v instanceof Uint8Array) return `Uint8Array(${v.length})`;
  if (typeof v === "object" && v !== null) {
    return JSON.stringify(v).slice(0, 200);
  }
  return String(v);
}

function mismatch(w: string, k: number, what: string, got: unknown): never {
  throw new Error(`${w}: result ${k}: expected ${what}, got ${show(got)}`);
}

// ---------------------------------------------------------------- W1 / W2

/** W1/W2 task i: the number i. */
export function w1Task(i: number): number {
  return i;
}

/** W1 stage 1: x + 1. */
export function w1Increment(x: number): number {
  return x + 1;
}

/** W1 stage 2: x * 2. */
export function w1Double(x: number): number {
  return x * 2;
}

/** W1 ordered check: the k-th result must be 2(k+1). */
export function w1Check(k: number, result: unknown): void {
  if (result !== 2 * (k + 1)) mismatch("W1", k, String(2 * (k + 1)), result);
}

/** W2 task i: the number i (same as W1). */
export const w2Task: (i: number) => number = w1Task;

/** W2 stage 1: x + 1 (same as W1). */
export const w2Increment: (x: number) => number = w1Increment;

/** W2 stage 2: x * 2 (same as W1). */
export const w2Double: (x: number) => number = w1Double;

/** W2 unordered checker for n tasks: every 2(i+1), i < n, exactly once. */
export function w2Checker(n: number): Checker {
  const seen = new Uint8Array(n);
  let count = 0;
  return {
    check(k: number, result: unknown): void {
      // Result 2(i+1) marks slot i; anything else is out of range.
      const i = typeof result === "number" ? result / 2 - 1 : -1;
      if (!Number.isInteger(i) || i < 0 || i >= n) {
        mismatch("W2", k, `2(i+1) for i < ${n}`, result);
      }
      if (seen[i] !== 0) mismatch("W2", k, "no duplicate", result);
      seen[i] = 1;
      count++;
    },
    done(): void {
      // No duplicates and all in range, so n distinct values means all were seen.
      if (count !== n) throw new Error(`W2: saw ${count} of ${n} results`);
    },
  };
}

// ---------------------------------------------------------------- W3

/** W3 result: the xorshift32 hash and the milliseconds the task spent computing it. */
export interface W3Result {
  /** Final xorshift32 state, as an unsigned 32-bit integer. */
  hash: number;
  /** Milliseconds spent in the loop (performance.now()). */
  ms: number;
}

/** W3 task i: the number i. */
export function w3Task(i: number): number {
  return i;
}

/** W3 stage: ~1 ms of CPU, a 500 000-step xorshift32 loop seeded with the task number. */
export function w3Hash(task: number): { hash: number; ms: number } {
  const t0 = performance.now();
  // Seed task + 1: xorshift32 stays at 0 forever from seed 0.
  let h = (task + 1) | 0;
  for (let i = 0; i < 500_000; i++) {
    h ^= h << 13;
    h ^= h >>> 17;
    h ^= h << 5;
  }
  return { hash: h >>> 0, ms: performance.now() - t0 };
}

/** W3 unordered checker for n tasks; `done()` asserts the count and returns the total task ms. */
export function w3Checker(n: number): Checker<number> {
  let count = 0;
  let ms = 0;
  return {
    check(k: number, result: unknown): void {
      // The hash cannot be recomputed here without 1 ms per task; check the shape instead
      // (a nonzero xorshift32 state never becomes 0).
      if (typeof result !== "object" || result === null) {
        mismatch("W3", k, "object", result);
      }
      const r = result as Record<string, unknown>;
      if (
        typeof r.hash !== "number" || !Number.isInteger(r.hash) || r.hash <= 0
      ) {
        mismatch("W3", k, "nonzero uint32 hash", result);
      }
      if (typeof r.ms !== "number" || !(r.ms >= 0)) {
        mismatch("W3", k, "ms >= 0", result);
      }
      ms += r.ms;
      count++;
    },
    done(): number {
      if (count !== n) throw new Error(`W3: saw ${count} of ${n} results`);
      return ms;
    },
  };
}

// ---------------------------------------------------------------- W4

/** W4 task size in bytes (64 KiB). */
export const W4_BYTES = 65536;

// Byte j = j & 255; each task copies it (one memcpy) instead of filling 64 KiB in a loop.
const W4_TEMPLATE = Uint8Array.from({ length: W4_BYTES }, (_, j) => j & 255);

/** W4 task i: 64 KiB, bytes 0..3 = i little-endian, byte j = j & 255 for j >= 4. */
export function w4Task(i: number): Uint8Array {
  return w4Fill(i, W4_TEMPLATE.slice());
}

/** Writes W4 task i (or W4L's, by its length) into `a`, a buffer on the arena for W4 by reference: the same copy as `w4Task`'s. */
export function w4Fill(i: number, a: Uint8Array): Uint8Array {
  if (a.length === W4L_BYTES) a.set(W4L_TEMPLATE);
  else a.set(W4_TEMPLATE);
  a[0] = i;
  a[1] = i >>> 8;
  a[2] = i >>> 16;
  a[3] = i >>> 24;
  return a;
}

/** W4L task size in bytes (4 MiB). */
export const W4L_BYTES = 4 * 2 ** 20;

const W4L_TEMPLATE = Uint8Array.from({ length: W4L_BYTES }, (_, j) => j & 255);

/** W4L task i: W4's pattern, 4 MiB long. */
export function w4lTask(i: number): Uint8Array {
  const a = W4L_TEMPLATE.slice();
  a[0] = i;
  a[1] = i >>> 8;
  a[2] = i >>> 16;
  a[3] = i >>> 24;
  return a;
}

/** W4 stage: identity. */
export function w4Identity(x: Uint8Array): Uint8Array {
  return x;
}

/** W4 ordered check: length, the task number in bytes 0..3, and a few pattern bytes. */
export function w4Check(i: number, result: unknown): void {
  checkPattern("W4", W4_BYTES, i, result);
}

/** W4L ordered check: as W4's, for 4 MiB. */
export function w4lCheck(i: number, result: unknown): void {
  checkPattern("W4L", W4L_BYTES, i, result);
}

function checkPattern(w: string, bytes: number, i: number, result: unknown) {
  if (!(result instanceof Uint8Array)) {
    return mismatch(w, i, "Uint8Array", result);
  }
  if (result.length !== bytes) mismatch(w, i, `${bytes} bytes`, result);
  const got =
    (result[0]! | result[1]! << 8 | result[2]! << 16 | result[3]! << 24) >>>
    0;
  if (got !== i >>> 0) mismatch(w, i, `task number ${i}`, got);
  for (const j of [4, 255, 256, 4097, bytes - 1]) {
    if (result[j] !== (j & 255)) {
      mismatch(w, i, `byte ${j} = ${j & 255}`, result[j]);
    }
  }
}

// ---------------------------------------------------------------- W5

/** W5 task object. */
export interface W5Item {
  /** Task number. */
  id: number;
  /** "item-" + id. */
  name: string;
  /** Always ["alpha", "beta", "gamma"]. */
  tags: string[];
}

/** W5 object after stage 1. */
export interface W5A extends W5Item {
  /** id * 2. */
  a: number;
}

/** W5 object after stage 2. */
export interface W5B extends W5A {
  /** name.length. */
  b: number;
}

/** W5 object after stage 3. */
export interface W5C extends W5B {
  /** a + b. */
  c: number;
}

/** W5 task i: { id: i, name: "item-" + i, tags: ["alpha", "beta", "gamma"] }. */
export function w5Task(i: number): W5Item {
  return { id: i, name: "item-" + i, tags: ["alpha", "beta", "gamma"] };
}

/** W5 stage 1: add a = id * 2. */
export function w5AddA(o: W5Item): W5A {
  return { ...o, a: o.id * 2 };
}

/** W5 stage 2: add b = name.length. */
export function w5AddB(o: W5A): W5B {
  return { ...o, b: o.name.length };
}

/** W5 stage 3: add c = a + b. */
export function w5AddC(o: W5B): W5C {
  return { ...o, c: o.a + o.b };
}

/** W5 ordered check: every field of the i-th result. */
export function w5Check(i: number, result: unknown): void {
  if (typeof result !== "object" || result === null) {
    return mismatch("W5", i, "object", result);
  }
  const r = result as Record<string, unknown>;
  const name = "item-" + i;
  const t = r.tags;
  if (
    r.id !== i || r.name !== name || r.a !== i * 2 || r.b !== name.length ||
    r.c !== i * 2 + name.length || !Array.isArray(t) || t.length !== 3 ||
    t[0] !== "alpha" || t[1] !== "beta" || t[2] !== "gamma"
  ) {
    mismatch("W5", i, `fields of item ${i}`, result);
  }
}

// ---------------------------------------------------------------- W6

/** W6 task i: the number i. */
export function w6Task(i: number): number {
  return i;
}

/** W6 stage: x + 1. */
export function w6Increment(x: number): number {
  return x + 1;
}

/** W6 check: the result of task i must be i + 1. */
export function w6Check(i: number, result: unknown): void {
  if (result !== i + 1) mismatch("W6", i, String(i + 1), result);
}
