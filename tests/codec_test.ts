/**
 * Round-trip tests of `Encoder`/`Decoder` against `structuredClone`, the
 * behaviour the codec promises to match, plus a seeded fuzz of random nested
 * values.
 *
 * Every value is decoded twice: from a plain `ArrayBuffer` copy of the
 * encoded bytes (at offset 0), and from a `SharedArrayBuffer` laid out like a
 * ring (views that start after a control block, the record at an offset),
 * because in production the decoder reads straight from the ring.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { Decoder, Encoder } from "../lib/shared_memory/codec.ts";
import { Prng } from "./support/prng.ts";

// ---- helpers ----

// One encoder for the whole file, like a worker's LinkWriter: state left over
// from one value (or from a refused one) must not leak into the next.
const encoder = new Encoder();
// One decoder for the shared-memory path, like a LinkReader.
const sharedDecoder = new Decoder();

/** Encodes `value` and returns a copy of the encoded bytes. */
function encode(value: unknown): Uint8Array<ArrayBuffer> {
  const length = encoder.encode(value);
  assert.equal(length, encoder.length, "encode() returns encoder.length");
  return encoder.bytes.slice(0, length);
}

/** Decodes from a fresh, unshared copy starting at offset 0. */
function decodePlain(bytes: Uint8Array<ArrayBuffer>): unknown {
  const copy = bytes.slice();
  return new Decoder().decode(copy, new DataView(copy.buffer), 0);
}

/** Control bytes before the data views, as in a ring. */
const CONTROL_BYTES = 128;
/** Where the record starts inside the data views, as after a frame header. */
const RECORD_START = 16;

/**
 * Decodes from a SharedArrayBuffer laid out like a ring: the `bytes` and
 * `view` passed to the decoder start CONTROL_BYTES into the buffer and the
 * record starts RECORD_START into them, with junk around it.
 */
function decodeShared(bytes: Uint8Array): unknown {
  const shared = new SharedArrayBuffer(
    CONTROL_BYTES + RECORD_START + bytes.length + 64,
  );
  const data = new Uint8Array(shared, CONTROL_BYTES);
  data.fill(0xee);
  data.set(bytes, RECORD_START);
  return sharedDecoder.decode(
    data,
    new DataView(shared, CONTROL_BYTES),
    RECORD_START,
  );
}

/** Decodes `value`'s encoding both ways; returns [from ArrayBuffer, from SharedArrayBuffer]. */
function roundTrip(value: unknown): [unknown, unknown] {
  const bytes = encode(value);
  return [decodePlain(bytes), decodeShared(bytes)];
}

/**
 * What `assert.deepStrictEqual` does not check: that shared references stay
 * shared (and distinct objects distinct), and that errors keep their stacks.
 * Walks `actual` and `expected` in parallel, pairing objects one to one.
 */
function assertSameShape(
  actual: unknown,
  expected: unknown,
  path = "value",
  pairs = new Map<object, unknown>(),
  reverse = new Map<unknown, object>(),
): void {
  if (typeof expected !== "object" || expected === null) return;
  assert.ok(typeof actual === "object" && actual !== null, `${path}: object`);
  if (pairs.has(expected)) {
    assert.ok(
      pairs.get(expected) === actual,
      `${path}: a shared reference was not preserved`,
    );
    return;
  }
  assert.ok(
    !reverse.has(actual),
    `${path}: distinct objects were decoded as one`,
  );
  pairs.set(expected, actual);
  reverse.set(actual, expected);
  const walk = (a: unknown, e: unknown, at: string) =>
    assertSameShape(a, e, at, pairs, reverse);
  if (expected instanceof Error) {
    const error = actual as Error;
    assert.equal(error.stack, expected.stack, `${path}.stack`);
    if ("cause" in expected) walk(error.cause, expected.cause, `${path}.cause`);
    return;
  }
  if (expected instanceof Map) {
    const entries = [...(actual as Map<unknown, unknown>)];
    let i = 0;
    for (const [key, item] of expected) {
      const entry = entries[i];
      assert.ok(entry !== undefined, `${path}: entry ${i}`);
      walk(entry[0], key, `${path}.keys[${i}]`);
      walk(entry[1], item, `${path}.get(keys[${i}])`);
      i++;
    }
    return;
  }
  if (expected instanceof Set) {
    const items = [...(actual as Set<unknown>)];
    let i = 0;
    for (const item of expected) {
      walk(items[i], item, `${path}.values[${i}]`);
      i++;
    }
    return;
  }
  if (ArrayBuffer.isView(expected)) {
    const view = actual as ArrayBufferView;
    assert.equal(view.byteOffset, expected.byteOffset, `${path}.byteOffset`);
    walk(view.buffer, expected.buffer, `${path}.buffer`);
    return;
  }
  if (
    expected instanceof ArrayBuffer ||
    expected instanceof Date || expected instanceof RegExp ||
    expected instanceof Number || expected instanceof String ||
    expected instanceof Boolean || expected instanceof BigInt
  ) return;
  const record = expected as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    walk(
      (actual as Record<string, unknown>)[key],
      record[key],
      `${path}.${key}`,
    );
  }
}

/** Asserts that `value` decodes (both ways) to what `structuredClone` gives. */
function assertClones(value: unknown, label = ""): void {
  const expected = structuredClone(value);
  const [plain, shared] = roundTrip(value);
  assert.deepStrictEqual(plain, expected, `${label} (ArrayBuffer)`);
  assertSameShape(plain, expected, `${label} (ArrayBuffer)`);
  assert.deepStrictEqual(shared, expected, `${label} (SharedArrayBuffer)`);
  assertSameShape(shared, expected, `${label} (SharedArrayBuffer)`);
}

/** Whether `error` is a DOMException named DataCloneError. */
function isDataCloneError(error: unknown): boolean {
  return error instanceof DOMException && error.name === "DataCloneError";
}

// ---- primitives ----

Deno.test("Encoder/Decoder round-trip undefined, null and booleans", () => {
  for (const value of [undefined, null, true, false]) assertClones(value);
});

Deno.test("Encoder/Decoder round-trip numbers, including -0, NaN and the infinities", () => {
  const numbers = [
    0,
    -0,
    1,
    -1,
    42,
    2 ** 31 - 1,
    -(2 ** 31),
    2 ** 31,
    -(2 ** 31) - 1,
    2 ** 32,
    0.5,
    -1.25,
    Math.PI,
    NaN,
    Infinity,
    -Infinity,
    Number.MAX_SAFE_INTEGER,
    Number.MIN_SAFE_INTEGER,
    Number.MAX_VALUE,
    Number.MIN_VALUE,
    Number.EPSILON,
  ];
  for (const value of numbers) {
    assertClones(value, String(value));
    const [plain, shared] = roundTrip(value);
    assert.ok(Object.is(plain, value), `${value} (ArrayBuffer)`);
    assert.ok(Object.is(shared, value), `${value} (SharedArrayBuffer)`);
  }
});

Deno.test("Encoder/Decoder round-trip bigints, negative and huge", () => {
  const bigints = [
    0n,
    1n,
    -1n,
    15n,
    -16n,
    2n ** 63n - 1n,
    -(2n ** 63n),
    2n ** 64n,
    -(2n ** 64n) - 1n,
    2n ** 1000n + 12345n,
    -(3n ** 700n),
  ];
  for (const value of bigints) assertClones(value, String(value));
});

// ---- strings ----

Deno.test("Encoder/Decoder round-trip the empty string and ASCII strings of every fast-path length", () => {
  // The encoder has a hand-written path up to 64 chars and the decoder one up
  // to 24 bytes: cover both sides of each boundary.
  for (let n = 0; n <= 70; n++) {
    let text = "";
    for (let i = 0; i < n; i++) text += String.fromCharCode(32 + (i * 7) % 95);
    assertClones(text, `length ${n}`);
  }
  assertClones("\0\x01\x7f\t\n", "control characters");
  assertClones("a".repeat(1000), "1000 chars");
  assertClones("xyz".repeat(100_000), "300000 chars");
});

Deno.test("Encoder/Decoder round-trip non-ASCII strings and surrogate pairs", () => {
  const strings = [
    "é",
    "héllo wörld",
    "日本語のテキスト",
    "\u0080\u07ff\u0800\uffff",
    "😀",
    "a😀b",
    "👩‍👩‍👧‍👦 family",
    "𝕏".repeat(40),
    // A non-ASCII char right around the 64-char fast-path boundary.
    "x".repeat(63) + "é",
    "x".repeat(64) + "é",
    "x".repeat(65) + "é",
    "é" + "x".repeat(70),
    "é".repeat(10_000),
    "😀".repeat(10_000),
  ];
  for (const text of strings) {
    assertClones(text, JSON.stringify(text.slice(0, 20)));
  }
  // As keys, too.
  assertClones({ "é": 1, "😀": 2, "日本": 3 });
});

Deno.test("Encoder/Decoder keep lone surrogates as structuredClone does", () => {
  // structuredClone keeps a string's UTF-16 code units exactly, including
  // unpaired surrogates.
  const strings = [
    "\ud800",
    "\udc00",
    "a\ud83db",
    "ends with a high surrogate \ud83d",
    "\udc00 starts with a low surrogate",
    "x".repeat(100) + "\udfff",
  ];
  for (const text of strings) {
    assert.equal(structuredClone(text), text);
    assertClones(text, JSON.stringify(text));
    assertClones({ [text]: text }, `key ${JSON.stringify(text)}`);
  }
});

Deno.test("Encoder/Decoder keep a leading byte order mark (U+FEFF)", () => {
  const strings = ["\ufeff", "\ufeffabc", "\ufeff" + "é".repeat(30)];
  for (const text of strings) {
    assertClones(text, JSON.stringify(text));
    assertClones({ [text]: 1 }, `key ${JSON.stringify(text)}`);
  }
});

// ---- arrays and objects ----

Deno.test("Encoder/Decoder round-trip arrays, keeping holes apart from undefined", () => {
  assertClones([]);
  assertClones([1, "two", [3, [4, [5]]], null, undefined]);
  // deno-lint-ignore no-sparse-arrays
  const holes = [, 1, , undefined, 2, ,];
  assertClones(holes);
  assertClones(new Array(5));
  const sparse: number[] = [];
  sparse[1000] = 1;
  assertClones(sparse);
  const [plain, shared] = roundTrip(holes) as [unknown[], unknown[]];
  for (const decoded of [plain, shared]) {
    assert.equal(decoded.length, 6);
    assert.deepEqual(Object.keys(decoded), ["1", "3", "4"]);
  }
});

Deno.test("Encoder/Decoder carry an array's elements but not its named properties", () => {
  // A documented difference (lib/codec.ts header): structuredClone copies an
  // array's own non-index properties too; the codec carries the elements
  // only. Compare the meaningful part: length, elements and holes.
  // deno-lint-ignore no-sparse-arrays
  const array = Object.assign([1, , 3], { label: "dropped", 7.5: "too" });
  assert.equal((structuredClone(array) as typeof array).label, "dropped");
  for (const decoded of roundTrip(array) as unknown[][]) {
    assert.equal(decoded.length, 3);
    assert.deepEqual(Object.keys(decoded), ["0", "2"]);
    assert.deepStrictEqual([...decoded], [...array]);
  }
});

Deno.test("Encoder/Decoder round-trip plain objects", () => {
  assertClones({});
  assertClones({ a: 1, b: "two", c: { d: [3], e: { f: null } } });
  // Integer-like keys come first in both, in ascending order.
  assertClones({ b: 1, 10: 2, a: 3, 2: 4, "-1": 5, "01": 6 });
  assertClones({ "": 0, "with space": 1, "ünïcödé": 2 });
  // An own "__proto__" key stays an own property.
  assertClones(JSON.parse('{"__proto__": {"polluted": true}, "x": 1}'));
  // A null-prototype object becomes an ordinary object.
  assertClones(Object.assign(Object.create(null), { a: 1 }));
  // Only own enumerable string keys are copied.
  const object: Record<string | symbol, unknown> = { seen: 1 };
  object[Symbol("hidden")] = 2;
  Object.defineProperty(object, "hidden", { value: 3, enumerable: false });
  assertClones(object);
  // Getters are read.
  assertClones({
    get computed() {
      return 42;
    },
  });
});

Deno.test("Encoder/Decoder carry objects of a repeated shape, cycles and key order included", () => {
  // The shared decoder learns each shape once, then builds from its cache.
  for (let i = 0; i < 5; i++) {
    assertClones({ id: i, name: `item-${i}`, tags: ["a", "b"] }, `plain ${i}`);
    const node: Record<string, unknown> = { value: i, self: null, next: null };
    node.self = node;
    node.next = { value: i + 1, self: node, next: null };
    assertClones(node, `cycle ${i}`);
    assertClones({ b: i, 2: "two", a: i, 1: "one" }, `integer keys ${i}`);
    assertClones(
      JSON.parse(`{"x": ${i}, "__proto__": {"polluted": true}}`),
      `__proto__ ${i}`,
    );
  }
});

Deno.test("Decoder checks a shape's keys, not only its number", () => {
  // Two encoders whose shape numbers collide (the salt is random; force it).
  const first = new Encoder();
  const second = new Encoder();
  const decoder = new Decoder();
  const decode = (bytes: Uint8Array<ArrayBuffer>) =>
    decoder.decode(bytes, new DataView(bytes.buffer), 0);
  const a = first.bytes.slice(0, first.encode({ a: 1 }));
  const b = second.bytes.slice(0, second.encode({ b: 2 }));
  assert.equal(a[0], Encoder.SHAPE);
  b.set(a.subarray(1, 7), 1); // same salt and shape number as `a`
  assert.deepStrictEqual(decode(a), { a: 1 });
  assert.deepStrictEqual(decode(b), { b: 2 });
  assert.deepStrictEqual(decode(a), { a: 1 });
});

Deno.test("Encoder reads each listed key once, even when a getter adds keys", () => {
  let calls = 0;
  const value = {
    get x() {
      calls++;
      (this as Record<string, unknown>).y = 2;
      return 1;
    },
  };
  const [plain, shared] = roundTrip(value);
  assert.deepStrictEqual(plain, { x: 1 });
  assert.deepStrictEqual(shared, { x: 1 });
  assert.equal(calls, 1);
  assert.deepStrictEqual(roundTrip(value)[1], { x: 1, y: 2 });
});

Deno.test("Encoder/Decoder stay correct once the shape table is full", () => {
  const decoder = new Decoder();
  const local = new Encoder();
  const count = Encoder.MAX_SHAPE_NODES + 100;
  for (let i = 0; i < count; i++) {
    const value = { [`key${i}`]: i, common: true };
    const bytes = local.bytes.slice(0, local.encode(value));
    const decoded = decoder.decode(bytes, new DataView(bytes.buffer), 0);
    assert.deepStrictEqual(decoded, value);
  }
  const wide = Object.fromEntries(
    Array.from({ length: Encoder.MAX_SHAPE_KEYS + 1 }, (_, i) => [`k${i}`, i]),
  );
  assertClones(wide, "more keys than a shape holds");
});

Deno.test("Encoder/Decoder turn class instances into plain objects", () => {
  class Point {
    #secret = 1;
    y = 2;
    constructor(readonly x: number) {}
    get sum(): number {
      return this.x + this.y + this.#secret;
    }
  }
  const point = new Point(1);
  assertClones(point);
  const [plain, shared] = roundTrip([point, { nested: point }]);
  for (const decoded of [plain, shared] as [Point, { nested: Point }][]) {
    assert.equal(Object.getPrototypeOf(decoded[0]), Object.prototype);
    assert.deepEqual(decoded[0], { x: 1, y: 2 });
    assert.equal(decoded[1].nested, decoded[0]);
  }
});

Deno.test("Encoder/Decoder accept objects with a Symbol.toStringTag like structuredClone", () => {
  // structuredClone copies any ordinary object, whatever its toStringTag says
  // (Math and JSON are ordinary objects too, and clone to {}).
  class Tagged {
    a = 1;
    get [Symbol.toStringTag](): string {
      return "Tagged";
    }
  }
  assertClones(new Tagged());
  assertClones({ [Symbol.toStringTag]: "Custom", b: 2 });
  assertClones(Math);
});

// ---- built-in objects ----

Deno.test("Encoder/Decoder round-trip Dates, including an invalid Date", () => {
  const dates = [
    new Date(0),
    new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789)),
    new Date(-8_640_000_000_000_000),
    new Date(8_640_000_000_000_000),
    new Date(-1),
    new Date(NaN),
  ];
  for (const date of dates) {
    assertClones(date, String(date));
    for (const decoded of roundTrip(date) as Date[]) {
      assert.ok(decoded instanceof Date);
      assert.ok(Object.is(decoded.getTime(), date.getTime()));
    }
  }
});

Deno.test("Encoder/Decoder round-trip RegExps with their flags", () => {
  const patterns = [
    /a+b/,
    /x/dgimsuy,
    /[\u{1f600}-\u{1f64f}]/v,
    /\/slashes\/ and \\ backslashes/g,
    /(?<year>\d{4})-(?<month>\d{2})/u,
    new RegExp(""),
    new RegExp("\n", "m"),
    /é😀/iu,
  ];
  for (const pattern of patterns) {
    pattern.lastIndex = 3;
    assertClones(pattern, String(pattern));
    for (const decoded of roundTrip(pattern) as RegExp[]) {
      assert.equal(decoded.source, pattern.source);
      assert.equal(decoded.flags, pattern.flags);
      // structuredClone does not keep lastIndex either.
      assert.equal(decoded.lastIndex, 0);
    }
  }
});

Deno.test("Encoder/Decoder round-trip Maps and Sets", () => {
  const key = { k: 1 };
  assertClones(new Map());
  assertClones(new Set());
  assertClones(
    new Map<unknown, unknown>([
      [1, "one"],
      ["two", 2],
      [NaN, "nan"],
      [key, [key]],
      [null, undefined],
      [10n, new Map([[1, new Set([2])]])],
    ]),
  );
  assertClones(
    new Set<unknown>([1, "1", NaN, key, [key], null, undefined, -5n]),
  );
  // Insertion order is kept.
  for (const decoded of roundTrip(new Map([[3, 0], [1, 0], [2, 0]]))) {
    assert.deepEqual([...(decoded as Map<number, number>).keys()], [3, 1, 2]);
  }
});

Deno.test("Encoder/Decoder round-trip ArrayBuffers", () => {
  assertClones(new ArrayBuffer(0));
  assertClones(new Uint8Array([1, 2, 3, 255]).buffer);
  assertClones(new Prng(7).bytes(1 << 20).buffer, "1 MiB");
  for (const decoded of roundTrip(new ArrayBuffer(8))) {
    assert.ok(decoded instanceof ArrayBuffer, "an unshared ArrayBuffer");
  }
});

Deno.test("Encoder/Decoder keep a resizable ArrayBuffer resizable", () => {
  const buffer = new ArrayBuffer(4, { maxByteLength: 64 });
  const expected = structuredClone(buffer);
  assert.ok(expected.resizable);
  for (const decoded of roundTrip(buffer) as ArrayBuffer[]) {
    assert.equal(decoded.byteLength, 4);
    assert.equal(decoded.resizable, expected.resizable);
    assert.equal(decoded.maxByteLength, expected.maxByteLength);
  }
});

type ViewConstructor = new (length: number) => ArrayBufferView & {
  [index: number]: number | bigint;
  length: number;
};

/** Sample values for each element type, with the edge cases of each. */
function sampleValues(name: string): (number | bigint)[] {
  switch (name) {
    case "Int8Array":
      return [-128, 127, 0, -1];
    case "Uint8Array":
    case "Uint8ClampedArray":
      return [0, 255, 1, 128];
    case "Int16Array":
      return [-32768, 32767, -1];
    case "Uint16Array":
      return [0, 65535, 1];
    case "Int32Array":
      return [-(2 ** 31), 2 ** 31 - 1, -1];
    case "Uint32Array":
      return [0, 2 ** 32 - 1, 1];
    case "Float16Array":
      return [1.5, -0, NaN, 65504, -Infinity];
    case "Float32Array":
      return [1.5, -0, NaN, Infinity, 3.4e38];
    case "Float64Array":
      return [Math.PI, -0, NaN, -Infinity, Number.MIN_VALUE];
    case "BigInt64Array":
      return [-(2n ** 63n), 2n ** 63n - 1n, -1n, 0n];
    case "BigUint64Array":
      return [0n, 2n ** 64n - 1n, 1n];
    default:
      throw new TypeError(`No sample values for ${name}`);
  }
}

Deno.test("Encoder/Decoder round-trip every typed array kind and DataView", () => {
  const globals = globalThis as unknown as Record<string, unknown>;
  let kinds = 0;
  for (const name of Encoder.VIEWS) {
    const Type = globals[name] as ViewConstructor | undefined;
    if (Type === undefined) continue; // Float16Array on older runtimes.
    kinds++;
    if (name === "DataView") {
      const bytes = new Uint8Array([1, 2, 3, 4, 5, 6, 7]);
      assertClones(new DataView(bytes.buffer), name);
      assertClones(new DataView(new ArrayBuffer(0)), `empty ${name}`);
      continue;
    }
    const values = sampleValues(name);
    const array = new Type(values.length);
    values.forEach((value, i) => (array[i] = value));
    assertClones(array, name);
    assertClones(new Type(0), `empty ${name}`);
    const big = new Type(10_000);
    const bytes = new Uint8Array(big.buffer, big.byteOffset, big.byteLength);
    bytes.set(new Prng(kinds).bytes(bytes.length));
    assertClones(big, `large ${name}`);
    for (const decoded of roundTrip(array)) {
      assert.equal(Object.getPrototypeOf(decoded), Type.prototype, name);
    }
  }
  assert.equal(kinds, Encoder.VIEWS.length - (globals.Float16Array ? 0 : 1));
});

Deno.test("Encoder/Decoder keep a view's offset into its buffer, and views of one buffer share it", () => {
  // A view travels with its whole buffer, as with structuredClone.
  const buffer = new ArrayBuffer(64);
  new Uint8Array(buffer).set(new Prng(3).bytes(64));
  const views = [
    new Int16Array(buffer, 8, 4),
    new Float64Array(buffer, 16, 2),
    new Uint8Array(buffer, 63, 1),
    new DataView(buffer, 5, 11),
    new Uint8Array(buffer, 64, 0),
  ];
  for (const view of views) {
    const name = view.constructor.name;
    const expected = structuredClone(view);
    assertClones(view, name);
    for (const decoded of roundTrip(view) as ArrayBufferView[]) {
      assert.equal(decoded.byteOffset, expected.byteOffset, name);
      assert.equal(decoded.byteLength, expected.byteLength, name);
      assert.equal(decoded.buffer.byteLength, expected.buffer.byteLength, name);
      assert.deepStrictEqual(decoded.buffer, expected.buffer, name);
    }
  }
  // Views of one buffer, and the buffer itself, in one value.
  const value = {
    bytes: new Uint8Array(buffer, 0, 4),
    words: new Uint32Array(buffer, 4, 2),
    data: new DataView(buffer, 32),
    buffer,
  };
  assertClones(value);
  for (const decoded of roundTrip(value) as (typeof value)[]) {
    assert.equal(decoded.bytes.buffer, decoded.buffer);
    assert.equal(decoded.words.buffer, decoded.buffer);
    assert.equal(decoded.data.buffer, decoded.buffer);
    decoded.bytes[0] = 0xab;
    assert.equal(new Uint8Array(decoded.buffer)[0], 0xab, "one memory");
  }
});

Deno.test("Encoder/Decoder accept typed array subclasses such as node:buffer's Buffer", () => {
  // structuredClone clones a subclass instance as its base typed array.
  class Bytes extends Uint8Array {}
  const values = [new Bytes([1, 2, 3]), Buffer.from("hello")];
  for (const value of values) {
    assert.equal(
      Object.getPrototypeOf(structuredClone(value)),
      Uint8Array.prototype,
    );
    assertClones(value, value.constructor.name);
  }
});

Deno.test("Encoder/Decoder round-trip boxed primitives", () => {
  const boxed = [
    new Number(-0),
    new Number(NaN),
    new Number(2 ** 40 + 0.5),
    new Number(7),
    new String(""),
    new String("boxed é 😀"),
    new Boolean(false),
    new Boolean(true),
    Object(10n),
    Object(-(2n ** 100n)),
  ];
  for (const value of boxed) {
    assertClones(value, `${typeof value.valueOf()} ${String(value)}`);
    for (const decoded of roundTrip(value) as object[]) {
      assert.equal(typeof decoded, "object");
      assert.ok(Object.is(decoded.valueOf(), value.valueOf()));
    }
  }
});

// ---- errors ----

const ERROR_TYPES = [
  Error,
  EvalError,
  RangeError,
  ReferenceError,
  SyntaxError,
  TypeError,
  URIError,
];

Deno.test("Encoder/Decoder round-trip each built-in error type with message and stack", () => {
  for (const Type of ERROR_TYPES) {
    const error = new Type(`a ${Type.name} é 😀`);
    assertClones(error, Type.name);
    for (const decoded of roundTrip(error) as Error[]) {
      assert.equal(Object.getPrototypeOf(decoded), Type.prototype);
      assert.equal(decoded.name, Type.name);
      assert.equal(decoded.message, error.message);
      assert.equal(decoded.stack, error.stack);
    }
    // An empty message, a replaced stack, a missing stack.
    assertClones(new Type(), `${Type.name} without a message`);
    const custom = new Type("m");
    custom.stack = "custom stack";
    assertClones(custom, `${Type.name} with a custom stack`);
  }
  // An Error renamed after a built-in type clones as that type.
  const renamed = new Error("renamed");
  renamed.name = "TypeError";
  assertClones(renamed, "renamed");
  // A user-defined subclass clones as Error.
  class MyError extends Error {}
  assertClones(new MyError("mine"), "subclass");
});

Deno.test("Encoder/Decoder restore an error's cause as structuredClone does (non-enumerable)", () => {
  const causes = [
    42,
    "text",
    { detail: [1, 2] },
    new RangeError("inner"),
    null,
  ];
  const errors = causes.map((cause) => new TypeError("outer", { cause }));
  // Cycles through the cause: the error itself, and an object holding it.
  const itself = new Error("itself");
  itself.cause = itself;
  const holder = new Error("holder");
  holder.cause = { error: holder };
  errors.push(itself, holder);
  // First the cause's value and identity...
  for (const error of errors) {
    const expected = structuredClone(error);
    for (const decoded of roundTrip(error) as Error[]) {
      assert.ok("cause" in decoded, error.message);
      // The cycles are checked by identity below (and node:assert overflows
      // its stack on an error that is its own cause, even on two
      // structuredClone copies).
      if (error !== itself && error !== holder) {
        assert.deepStrictEqual(decoded.cause, expected.cause);
      }
      assertSameShape(decoded, expected, error.message);
    }
  }
  for (const decoded of roundTrip(itself) as Error[]) {
    assert.equal(decoded.cause, decoded);
  }
  for (const decoded of roundTrip(holder) as Error[]) {
    assert.equal((decoded.cause as { error: Error }).error, decoded);
  }
  // ...then how it is defined: structuredClone (like the Error constructor)
  // makes "cause" a non-enumerable own property.
  for (const error of errors) {
    const expected = structuredClone(error);
    const attributes = (descriptor?: PropertyDescriptor) =>
      descriptor && {
        enumerable: descriptor.enumerable,
        writable: descriptor.writable,
        configurable: descriptor.configurable,
      };
    for (const decoded of roundTrip(error) as Error[]) {
      assert.deepEqual(
        attributes(Object.getOwnPropertyDescriptor(decoded, "cause")),
        attributes(Object.getOwnPropertyDescriptor(expected, "cause")),
        `the cause of ${error.message}`,
      );
    }
    // (node:assert overflows its stack on the cyclic ones.)
    if (error !== itself && error !== holder) {
      assertClones(error, error.message);
    }
  }
});

Deno.test("Encoder/Decoder keep an explicitly undefined cause, as structuredClone does", () => {
  const error = new Error("undefined cause", { cause: undefined });
  assert.ok(Object.hasOwn(structuredClone(error), "cause"));
  for (const decoded of roundTrip(error) as Error[]) {
    assert.ok(Object.hasOwn(decoded, "cause"), "an own 'cause' property");
    assert.equal(decoded.cause, undefined);
  }
});

Deno.test("Encoder/Decoder turn AggregateError into an Error with its message, as structuredClone does", () => {
  const error = new AggregateError([new Error("a")], "several failed");
  const expected = structuredClone(error);
  for (const decoded of roundTrip(error) as Error[]) {
    assert.equal(decoded.message, "several failed");
    assert.equal(decoded.message, expected.message);
    assert.equal(decoded.name, expected.name);
  }
  assertClones(error);
});

Deno.test("Encoder/Decoder keep a DOMException's name, message, code and stack", () => {
  for (
    const name of ["AbortError", "DataCloneError", "TimeoutError", "CustomName"]
  ) {
    const error = new DOMException("the operation failed", name);
    const expected = structuredClone(error);
    assert.ok(expected instanceof DOMException);
    for (const decoded of roundTrip(error) as DOMException[]) {
      assert.ok(decoded instanceof DOMException, name);
      assert.equal(decoded.name, expected.name);
      assert.equal(decoded.message, expected.message);
      assert.equal(decoded.code, expected.code);
    }
  }
  // Shared, and as a cause.
  const abort = new DOMException("stop", "AbortError");
  const value = [abort, abort, new Error("wrapped", { cause: abort })];
  for (
    const decoded of roundTrip(value) as [DOMException, DOMException, Error][]
  ) {
    assert.equal(decoded[0], decoded[1]);
    assert.equal(decoded[2].cause, decoded[0]);
  }
  // structuredClone keeps the stack too.
  const expected = structuredClone(abort);
  assert.equal(expected.stack, abort.stack);
  for (const decoded of roundTrip(abort) as DOMException[]) {
    assert.equal(decoded.stack, expected.stack, "stack");
  }
});

// ---- shared references and cycles ----

Deno.test("Encoder/Decoder preserve shared references", () => {
  const object = { a: 1 };
  const array = [1, 2];
  const date = new Date(5);
  const bytes = new Uint8Array([9, 8]);
  const buffer = new ArrayBuffer(3);
  const error = new Error("shared");
  const boxed = new String("boxed");
  const map = new Map([[object, array]]);
  const set = new Set([object]);
  const value = {
    object,
    again: object,
    list: [object, array, array, date, date, bytes, bytes, buffer, buffer],
    error,
    errors: [error, error],
    boxed: [boxed, boxed],
    map,
    maps: [map, set, set],
    regexp: [/r/g, null],
  };
  value.regexp[1] = value.regexp[0]!;
  assertClones(value);
  for (const decoded of roundTrip(value) as (typeof value)[]) {
    assert.equal(decoded.again, decoded.object);
    assert.equal(decoded.list[0], decoded.object);
    assert.equal(decoded.list[1], decoded.list[2]);
    assert.equal(decoded.list[3], decoded.list[4]);
    assert.equal(decoded.list[5], decoded.list[6]);
    assert.equal(decoded.list[7], decoded.list[8]);
    assert.equal(decoded.errors[0], decoded.error);
    assert.equal(decoded.boxed[0], decoded.boxed[1]);
    assert.equal(decoded.maps[0], decoded.map);
    assert.equal([...decoded.map.keys()][0], decoded.object);
    assert.equal([...decoded.map.values()][0], decoded.list[1]);
    assert.equal([...(decoded.maps[1] as Set<unknown>)][0], decoded.object);
    assert.equal(decoded.regexp[0], decoded.regexp[1]);
  }
});

Deno.test("Encoder/Decoder preserve shared references past the objects the encoder keeps in a list", () => {
  const count = Encoder.LISTED_OBJECTS * 3;
  const objects = Array.from({ length: count }, (_, i) => ({ i }));
  // Each object again after all of them, in reverse, then the array itself:
  // the references to listed objects are found in the Map once it is made.
  const value: unknown[] = [...objects, ...objects.toReversed()];
  value.push(value);
  assertClones(value);
  for (const decoded of roundTrip(value) as unknown[][]) {
    assert.equal(decoded.length, 2 * count + 1);
    for (let i = 0; i < count; i++) {
      assert.deepStrictEqual(decoded[i], { i });
      assert.equal(decoded[2 * count - 1 - i], decoded[i], `object ${i}`);
    }
    assert.equal(decoded[2 * count], decoded);
  }
  // A record exactly at the bound, with its last object shared.
  const bound = Array.from({ length: Encoder.LISTED_OBJECTS - 1 }, () => ({}));
  const atBound = [...bound, bound.at(-1), bound[0]];
  for (const decoded of roundTrip(atBound) as object[][]) {
    assert.equal(decoded.at(-2), decoded.at(-3));
    assert.equal(decoded.at(-1), decoded[0]);
    assert.notEqual(decoded[0], decoded[1]);
  }
});

Deno.test("Encoder/Decoder preserve cycles", () => {
  type Node = { name: string; self?: Node; children: unknown[] };
  const root: Node = { name: "root", children: [] };
  root.self = root;
  root.children.push(root, { parent: root });
  const array: unknown[] = [];
  array.push(array, [array]);
  const map = new Map<unknown, unknown>();
  map.set(map, map);
  map.set("root", root);
  const set = new Set<unknown>();
  set.add(set);
  set.add([set]);
  // (A cycle through an error's cause is in the cause test below.)
  for (const value of [root, array, map, set, [root, array, map, set]]) {
    assertClones(value);
  }
  const [decoded] = roundTrip(root) as Node[];
  assert.equal(decoded!.self, decoded);
  assert.equal(decoded!.children[0], decoded);
  assert.equal((decoded!.children[1] as { parent: Node }).parent, decoded);
  const [decodedMap] = roundTrip(map) as Map<unknown, unknown>[];
  assert.equal(decodedMap!.get(decodedMap), decodedMap);
});

// ---- refusals ----

Deno.test("Encoder.encode refuses functions, symbols, WeakMaps and Promises with a DataCloneError like structuredClone", () => {
  const refused: [string, unknown][] = [
    ["arrow function", () => 1],
    ["function", function named() {}],
    ["async function", async () => {}],
    ["class", class {}],
    ["symbol", Symbol("s")],
    ["boxed symbol", Object(Symbol("s"))],
    ["object holding a function", { ok: 1, f: () => 1 }],
    ["object with a method", { method() {} }],
    ["deep function", { a: [1, { b: new Map([["c", Math.max]]) }] }],
    ["array holding a symbol", [1, Symbol.iterator]],
    ["set holding a function", new Set([() => 1])],
    ["WeakMap", new WeakMap()],
    ["WeakSet", new WeakSet()],
    ["WeakRef", new WeakRef({})],
    ["Promise", Promise.resolve(1)],
    ["generator", (function* () {})()],
  ];
  for (const [label, value] of refused) {
    assert.throws(() => structuredClone(value), isDataCloneError, label);
    assert.throws(() => encoder.encode(value), isDataCloneError, label);
  }
});

Deno.test("Encoder.encode refuses shared memory and platform objects instead of sending them empty", () => {
  // Deliberate differences (lib/codec.ts header): structuredClone shares a
  // SharedArrayBuffer's memory and clones some platform objects (Blob, File),
  // neither of which can be carried as bytes through a ring, so the codec
  // refuses them up front. What it must not do is send them as {}.
  const refused: [string, unknown][] = [
    ["SharedArrayBuffer", new SharedArrayBuffer(8)],
    ["view on a SharedArrayBuffer", new Uint8Array(new SharedArrayBuffer(4))],
    ["Blob", new Blob(["hello"])],
    ["File", new File(["hello"], "hello.txt")],
    ["URL", new URL("https://example.com/")],
    ["Headers", new Headers({ a: "1" })],
    ["object holding a Blob", { payload: new Blob(["x"]) }],
  ];
  for (const [label, value] of refused) {
    let decoded: unknown;
    try {
      decoded = roundTrip(value)[0];
    } catch (error) {
      assert.ok(isDataCloneError(error), `${label}: ${error}`);
      continue;
    }
    assert.fail(`${label} was sent as ${Deno.inspect(decoded)}`);
  }
});

Deno.test("Encoder.encode judges each class instance by its own contents", () => {
  // Whether an instance can be cloned depends on what it holds, not only on
  // its class: one instance holding a function must not make every later
  // instance of the class uncloneable (nor the reverse).
  class Job {
    callback: unknown = null;
    constructor(public id: number) {}
  }
  const withFunction = new Job(1);
  withFunction.callback = () => 1;
  assert.throws(() => encoder.encode(withFunction), isDataCloneError);
  assertClones(new Job(2), "a later instance without a function");

  class Holder {
    inner: unknown = new WeakMap();
  }
  assert.throws(() => encoder.encode(new Holder()), isDataCloneError);
  const fine = new Holder();
  fine.inner = [1, 2];
  assertClones(fine, "a later instance without a WeakMap");

  class Task {
    constructor(public input: unknown) {}
  }
  assertClones(new Task(1), "a first instance that clones");
  assert.throws(() => encoder.encode(new Task(() => 1)), isDataCloneError);
});

Deno.test("Encoder.encode refuses a detached ArrayBuffer with a DataCloneError like structuredClone", () => {
  const buffer = new ArrayBuffer(8);
  const view = new Uint8Array(buffer);
  structuredClone(buffer, { transfer: [buffer] });
  assert.equal(buffer.detached, true);
  for (const value of [buffer, view, { view }]) {
    assert.throws(() => structuredClone(value), isDataCloneError);
    assert.throws(() => encoder.encode(value), isDataCloneError);
  }
});

Deno.test("Encoder.encode refuses an arguments object like structuredClone", () => {
  const args = (function (..._: unknown[]) {
    return arguments;
  })(1, 2);
  assert.throws(() => structuredClone(args), isDataCloneError);
  assert.throws(() => encoder.encode(args), isDataCloneError);
});

Deno.test("Encoder.encode is reusable after a refusal", () => {
  const shared = { s: 1 };
  assert.throws(
    () => encoder.encode({ a: [shared, { b: 2 }], f: () => 1 }),
    isDataCloneError,
  );
  // Stale reference numbers from the refused value would corrupt this one.
  assertClones({ x: [1, 2], y: shared, z: shared, w: [shared] });
});

// ---- encoder and decoder reuse ----

Deno.test("Encoder grows its buffer and stays correct across values", () => {
  const local = new Encoder();
  const decoder = new Decoder();
  const values = [
    1,
    "x".repeat(100_000),
    { small: true },
    new Uint8Array(300_000).fill(7),
    "é",
    [null],
  ];
  for (const value of values) {
    const length = local.encode(value);
    assert.equal(length, local.length);
    const bytes = local.bytes.slice(0, length);
    const decoded = decoder.decode(bytes, new DataView(bytes.buffer), 0);
    assert.deepStrictEqual(decoded, structuredClone(value));
  }
});

Deno.test("Encoder starts byte runs 8-aligned in the record, which decodes at any start", () => {
  // V8 copies shared memory word by word only when source and target align.
  const run = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
  for (const prefix of ["", "a", "abc", "abcdefg", "abcdefgh"]) {
    const value = [prefix, run];
    const bytes = encode(value);
    const at = bytes.findIndex((_, i) =>
      run.every((byte, j) => bytes[i + j] === byte)
    );
    assert.equal(at % 8, 0, `run at ${at} after ${JSON.stringify(prefix)}`);
    for (const start of [0, 3, 16]) {
      const shared = new Uint8Array(
        new SharedArrayBuffer(start + bytes.length),
      );
      shared.set(bytes, start);
      const decoded = new Decoder().decode(
        shared,
        new DataView(shared.buffer),
        start,
      );
      assert.deepStrictEqual(decoded, value, `record at ${start}`);
    }
  }
});

Deno.test("Decoder decodes several records laid end to end", () => {
  const values = [{ a: 1 }, "two", [3n, new Date(4)], new Map([[5, 6]])];
  const parts = values.map((value) => encode(value));
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const shared = new Uint8Array(new SharedArrayBuffer(total));
  let at = 0;
  const starts: number[] = [];
  for (const part of parts) {
    starts.push(at);
    shared.set(part, at);
    at += part.length;
  }
  const decoder = new Decoder();
  const view = new DataView(shared.buffer);
  values.forEach((value, i) => {
    assert.deepStrictEqual(decoder.decode(shared, view, starts[i]!), value);
  });
});

// ---- limits: depth, sparse arrays, size ----

/** A box whose instances travel as plain objects `{ inner }`. */
class Box {
  constructor(public inner: unknown) {}
}

/**
 * Kinds of container a deep value nests, each with how it wraps a value and
 * how the test unwraps the decoded one (throwing if the level is wrong).
 */
const LEVELS: Record<
  string,
  { wrap(inner: unknown): unknown; unwrap(outer: unknown): unknown }
> = {
  array: {
    wrap: (inner) => [inner],
    unwrap: (outer) => {
      assert.ok(Array.isArray(outer) && outer.length === 1, "array");
      return outer[0];
    },
  },
  "holey array": {
    // deno-lint-ignore no-sparse-arrays
    wrap: (inner) => [, inner],
    unwrap: (outer) => {
      assert.ok(Array.isArray(outer) && !(0 in outer), "holey array");
      return outer[1];
    },
  },
  object: {
    wrap: (inner) => ({ a: inner }),
    unwrap: (outer) => (outer as { a: unknown }).a,
  },
  // An own "__proto__" key keeps an object out of the shapes: an OBJECT record.
  "object record": {
    wrap: (inner) => ({ ["__proto__"]: inner }),
    unwrap: (outer) => {
      assert.ok(Object.hasOwn(outer as object, "__proto__"), "object record");
      return (outer as Record<string, unknown>)["__proto__"];
    },
  },
  "class instance": {
    wrap: (inner) => new Box(inner),
    unwrap: (outer) => {
      assert.equal(Object.getPrototypeOf(outer), Object.prototype);
      return (outer as Box).inner;
    },
  },
  "Map value": {
    wrap: (inner) => new Map([["k", inner]]),
    unwrap: (outer) => {
      assert.ok(outer instanceof Map && outer.size === 1, "Map value");
      return outer.get("k");
    },
  },
  "Map key": {
    wrap: (inner) => new Map([[inner, 1]]),
    unwrap: (outer) => {
      assert.ok(outer instanceof Map && outer.size === 1, "Map key");
      return [...outer.keys()][0];
    },
  },
  Set: {
    wrap: (inner) => new Set([inner]),
    unwrap: (outer) => {
      assert.ok(outer instanceof Set && outer.size === 1, "Set");
      return [...outer][0];
    },
  },
  "error cause": {
    wrap: (inner) => new RangeError("level", { cause: inner }),
    unwrap: (outer) => {
      assert.ok(outer instanceof RangeError, "error");
      return outer.cause;
    },
  },
};

/** `depth` levels of the given kinds, taken in turn from the outside in, around `bottom`. */
function nest(kinds: string[], depth: number, bottom: unknown): unknown {
  let value = bottom;
  for (let i = depth - 1; i >= 0; i--) {
    value = LEVELS[kinds[i % kinds.length]!]!.wrap(value);
  }
  return value;
}

/** Unwraps `depth` levels without recursion (node:assert would overflow); returns the bottom. */
function unnest(kinds: string[], depth: number, value: unknown): unknown {
  for (let i = 0; i < depth; i++) {
    value = LEVELS[kinds[i % kinds.length]!]!.unwrap(value);
  }
  return value;
}

/** More levels than structuredClone carries here (2,700 objects to 5,000 Sets, main thread or worker). */
const DEEP = 20_000;

Deno.test("Encoder/Decoder carry each kind of container nested deeper than structuredClone carries", () => {
  for (const kind of Object.keys(LEVELS)) {
    const [plain, shared] = roundTrip(nest([kind], DEEP, "bottom"));
    assert.equal(unnest([kind], DEEP, plain), "bottom", kind);
    assert.equal(unnest([kind], DEEP, shared), "bottom", kind);
  }
});

Deno.test("Encoder/Decoder carry every kind of container mixed, nested deeper than structuredClone carries", () => {
  const kinds = Object.keys(LEVELS);
  const [plain, shared] = roundTrip(nest(kinds, DEEP, { end: [1, 2] }));
  assert.deepEqual(unnest(kinds, DEEP, plain), { end: [1, 2] });
  assert.deepEqual(unnest(kinds, DEEP, shared), { end: [1, 2] });
});

Deno.test("Encoder/Decoder match structuredClone on a mixed value that crosses into the explicit stack", () => {
  // Deeper than MAX_RECURSION, shallow enough for structuredClone and
  // node:assert: both walks meet in one value, with values beside the chain.
  const depth = Encoder.MAX_RECURSION * 3;
  const kinds = Object.keys(LEVELS);
  let value: unknown = "bottom";
  for (let i = depth - 1; i >= 0; i--) {
    const level = LEVELS[kinds[i % kinds.length]!]!.wrap(value);
    value = i % 5 === 0 ? [level, { n: i, s: "x".repeat(i % 70) }, i] : level;
  }
  assertClones(value);
});

Deno.test("Encoder/Decoder keep shared references and cycles deep in the explicit stack", () => {
  // Arrays one inside the other; at two levels, near the top and near the
  // bottom, a pair [shared, next level] instead of the next level alone.
  const shared = { shared: true };
  const top: unknown[] = [];
  let level = top;
  for (let i = 1; i < DEEP; i++) {
    const next: unknown[] = [];
    level.push(i === 3 || i === DEEP - 3 ? [shared, next] : next);
    level = next;
  }
  level.push(top); // the bottom leads back to the top
  for (const decoded of roundTrip(top)) {
    let at = decoded as unknown[];
    const found: unknown[] = [];
    for (let i = 1; i < DEEP; i++) {
      const item = at[0] as unknown[];
      if (i === 3 || i === DEEP - 3) {
        found.push(item[0]);
        at = item[1] as unknown[];
      } else at = item;
    }
    assert.equal(at[0], decoded, "the cycle back to the top");
    assert.deepEqual(found[0], shared);
    assert.equal(found[0], found[1], "one shared object, not two copies");
  }
});

Deno.test("Encoder/Decoder carry a sparse array in bytes in proportion to its elements, holes kept apart from undefined", () => {
  const sparse: unknown[] = [];
  sparse[2e8 - 1] = "last";
  sparse[5] = undefined;
  sparse[7] = { seven: 7 };
  const bytes = encode(sparse);
  assert.ok(bytes.length < 64, `${bytes.length} bytes for 3 elements`);
  const expected = structuredClone(sparse);
  for (const decoded of roundTrip(sparse) as unknown[][]) {
    assert.equal(decoded.length, 2e8);
    assert.deepEqual(Object.keys(decoded), Object.keys(expected));
    assert.ok(5 in decoded && decoded[5] === undefined, "undefined stays");
    assert.ok(!(6 in decoded), "a hole stays a hole");
    assert.deepEqual(decoded[7], { seven: 7 });
    assert.equal(decoded[2e8 - 1], "last");
  }
});

Deno.test("Encoder/Decoder keep runs of holes of every length, at the start, between elements and at the end", () => {
  const runs = [1, 2, 255, 256, 257, 1000];
  const array: unknown[] = [];
  let at = 0;
  for (const run of runs) {
    at += run;
    array[at++] = run;
    array[at++] = undefined;
  }
  array.length = at + 300;
  assertClones(array);
  assertClones(new Array(70_000));
});

Deno.test("Encoder/Decoder carry an array that turns dense after many holes, by its keys, as structuredClone does", () => {
  const array: unknown[] = [];
  for (let i = 10_000; i < 13_000; i++) array[i] = i % 7 === 0 ? undefined : i;
  array[20_000] = "far";
  array.length = 20_100;
  assertClones(array);
  // Named properties come after the indices among the keys, and are not
  // carried (see the module doc).
  const indices = Object.keys(array);
  (array as unknown as { label: string }).label = "named";
  for (const decoded of roundTrip(array) as unknown[][]) {
    assert.deepEqual(Object.keys(decoded), indices);
  }
});

Deno.test("Encoder reads a sparse array's elements as structuredClone does when a getter deletes one", () => {
  for (const start of [0, 10_000]) {
    const make = () => {
      const array: unknown[] = [];
      array[start] = 0;
      Object.defineProperty(array, start + 1, {
        get() {
          delete array[start + 3];
          return "getter";
        },
        enumerable: true,
        configurable: true,
      });
      array[start + 3] = 3;
      array[start + 5] = 5;
      array.length = start + 10;
      return array;
    };
    const expected = structuredClone(make());
    const [plain] = roundTrip(make()) as unknown[][];
    assert.deepEqual(Object.keys(plain!), Object.keys(expected), `at ${start}`);
    assert.equal(plain![start + 1], "getter");
  }
});

Deno.test("Encoder.encode refuses a value over its limit with a RangeError, and stays usable", () => {
  const limited = new Encoder(100);
  const decoder = new Decoder();
  const decode = (length: number) => {
    const bytes = limited.bytes.slice(0, length);
    return decoder.decode(bytes, new DataView(bytes.buffer), 0);
  };
  const tooLarge = (error: unknown) => {
    assert.ok(error instanceof RangeError, `got ${String(error)}`);
    assert.match(error.message, /more than 100 bytes/);
    assert.match(error.message, /split it/);
    return true;
  };
  // A string's record: 5 bytes, then its UTF-8. At most 3 bytes a code unit
  // would not fit, but what it needs does.
  const ascii = "a".repeat(95);
  assert.equal(limited.encode(ascii), 100);
  assert.equal(decode(100), ascii);
  assert.throws(() => limited.encode(ascii + "a"), tooLarge);
  const accented = "é".repeat(47);
  assert.equal(limited.encode(accented), 99);
  assert.equal(decode(99), accented);
  assert.throws(() => limited.encode(accented + "é"), tooLarge);
  assert.throws(() => limited.encode(new Uint8Array(100)), tooLarge);
  assert.throws(
    () => limited.encode({ list: Array.from({ length: 30 }, (_, i) => i) }),
    tooLarge,
  );
  const small = { list: [1, 2, 3] };
  assert.deepEqual(decode(limited.encode(small)), small);
});

Deno.test("Encoder.encode refuses a value over 2 GiB - 1 bytes, the most a ring frame's Int32 length carries, before copying it", () => {
  assert.equal(Encoder.MAX_BYTES, 2 ** 31 - 1);
  const local = new Encoder();
  // Never written, so the system gives these 2 GiB no memory.
  const huge = new Uint8Array(2 ** 31);
  assert.throws(() => local.encode(huge), (error: unknown) => {
    assert.ok(error instanceof RangeError, `got ${String(error)}`);
    assert.match(error.message, /more than 2147483647 bytes/);
    return true;
  });
  assert.ok(local.bytes.length < 1024, "the encoder grew its buffer");
  assert.equal(local.encode(1), 5);
});

// ---- fuzz ----

/**
 * Generates random nested values from the types the codec supports.
 * Containers are registered before their children are made, so that a later
 * "repeat an earlier object" pick can close a cycle.
 *
 * Views are made both on buffers of their own and on shared, larger buffers
 * (at an offset, several views per buffer, sometimes with the buffer itself
 * in the value too). Errors get causes, but never a cause that leads back to
 * an enclosing object: node:assert overflows its stack on such cycles (even
 * comparing two structuredClone copies); "Encoder/Decoder restore an
 * error's cause" checks those by identity.
 *
 * A leading U+FEFF and an explicitly undefined cause are left out because
 * dedicated tests above already fail on them ("byte order mark", "undefined
 * cause"); leaving them in would make every seed fail on the same known bugs
 * and hide new ones. Flip them on once those are fixed.
 */
const FUZZ_INCLUDES = {
  loneSurrogates: true,
  leadingByteOrderMark: false,
  errorCause: true,
  undefinedCause: false,
};

const MAX_DEPTH = 5;
const TYPED_ARRAY_NAMES = Encoder.VIEWS.filter((name) =>
  name !== "DataView" && name in globalThis
);
const SAFE_PATTERNS = [
  "a",
  "a+b*",
  "[0-9]{2,3}",
  "(x|y)?z",
  "\\d+\\.\\d*",
  ".",
  "^$",
  "é+",
];

class Thing {
  constructor(public a: unknown, public b: unknown) {}
  get c(): number {
    return 3;
  }
}

class ValueGenerator {
  #random: Prng;
  #pool: object[] = [];
  /** Buffers that views of this value may share. */
  #buffers: ArrayBuffer[] = [];

  constructor(random: Prng) {
    this.#random = random;
  }

  /** A fresh random value (references repeat only inside one value). */
  make(): unknown {
    this.#pool = [];
    this.#buffers = [];
    return this.#value(0);
  }

  #value(depth: number): unknown {
    const random = this.#random;
    if (this.#pool.length > 0 && random.chance(0.06)) {
      return random.pick(this.#pool);
    }
    if (depth < MAX_DEPTH && random.chance(0.45 - depth * 0.07)) {
      return this.#container(depth + 1);
    }
    return this.#leaf();
  }

  #register<T extends object>(object: T): T {
    this.#pool.push(object);
    return object;
  }

  #size(): number {
    return this.#random.chance(0.1)
      ? this.#random.int(7, 20)
      : this.#random.int(0, 5);
  }

  #container(depth: number): unknown {
    const random = this.#random;
    switch (random.int(0, 6)) {
      case 0: {
        const n = this.#size();
        const array = this.#register(new Array<unknown>(n));
        for (let i = 0; i < n; i++) {
          if (!random.chance(0.15)) array[i] = this.#value(depth);
        }
        return array;
      }
      case 1:
      case 2: {
        const object = this.#register({} as Record<string, unknown>);
        const n = this.#size();
        for (let i = 0; i < n; i++) object[this.#key()] = this.#value(depth);
        return object;
      }
      case 3:
        return this.#register(
          new Thing(this.#value(depth), this.#value(depth)),
        );
      case 4: {
        const map = this.#register(new Map<unknown, unknown>());
        const n = this.#size();
        for (let i = 0; i < n; i++) {
          map.set(this.#value(depth), this.#value(depth));
        }
        return map;
      }
      case 5: {
        const set = this.#register(new Set<unknown>());
        const n = this.#size();
        for (let i = 0; i < n; i++) set.add(this.#value(depth));
        return set;
      }
      default: {
        const error = this.#error();
        if (FUZZ_INCLUDES.errorCause && random.chance(0.5)) {
          // A pool of its own: no cycle through the cause (see above).
          const outer = this.#pool;
          this.#pool = [];
          const cause = this.#value(depth);
          this.#pool = outer;
          if (cause !== undefined || FUZZ_INCLUDES.undefinedCause) {
            error.cause = cause;
          }
        }
        return this.#register(error);
      }
    }
  }

  #leaf(): unknown {
    const random = this.#random;
    switch (random.int(0, 15)) {
      case 0:
        return random.pick([undefined, null, true, false]);
      case 1:
      case 2:
        return this.#number();
      case 3:
        return this.#bigint();
      case 4:
      case 5:
      case 6:
        return this.#string();
      case 7: {
        const time = random.chance(0.1) ? NaN : random.int(-4e12, 4e12);
        return this.#register(new Date(time));
      }
      case 8: {
        const flags = [..."dgimsuy"].filter(() => random.chance(0.3)).join("");
        return this.#register(new RegExp(random.pick(SAFE_PATTERNS), flags));
      }
      case 9: {
        const n = random.chance(0.05)
          ? random.int(1000, 5000)
          : random.int(0, 40);
        return this.#register(random.bytes(n).buffer);
      }
      case 10:
      case 11:
        return this.#register(this.#typedArray());
      case 12: {
        const buffer = this.#buffer();
        const offset = random.int(0, buffer.byteLength);
        const length = random.int(0, buffer.byteLength - offset);
        return this.#register(new DataView(buffer, offset, length));
      }
      case 13:
        return this.#register(
          Object(
            random.pick([
              this.#number(),
              this.#string(),
              random.chance(0.5),
              this.#bigint(),
            ]),
          ),
        );
      case 14:
        return this.#register(this.#error());
      default:
        return random.int(-100, 100);
    }
  }

  #number(): number {
    const random = this.#random;
    switch (random.int(0, 5)) {
      case 0:
        return random.pick([
          0,
          -0,
          NaN,
          Infinity,
          -Infinity,
          2 ** 31 - 1,
          -(2 ** 31),
          2 ** 31,
        ]);
      case 1:
        return random.int(-(2 ** 31), 2 ** 31 - 1);
      case 2:
        return (random.next() - 0.5) * 10 ** random.int(-10, 300);
      default:
        return random.int(-1000, 1000);
    }
  }

  #bigint(): bigint {
    const random = this.#random;
    let text = "";
    const digits = random.int(1, random.chance(0.1) ? 200 : 20);
    for (let i = 0; i < digits; i++) text += random.int(0, 15).toString(16);
    const value = BigInt("0x" + text);
    return random.chance(0.5) ? -value : value;
  }

  #char(): string {
    const random = this.#random;
    switch (random.int(0, 9)) {
      case 0:
        return String.fromCharCode(random.int(0x80, 0x7ff));
      case 1:
        return String.fromCodePoint(random.int(0x1f300, 0x1faff));
      case 2: {
        // Any BMP char, lone surrogates included (per FUZZ_INCLUDES).
        const code = random.int(0x800, 0xffff);
        if (code >= 0xd800 && code <= 0xdfff) {
          return FUZZ_INCLUDES.loneSurrogates
            ? String.fromCharCode(code)
            : "\u4e00";
        }
        return code === 0xfeff && !FUZZ_INCLUDES.leadingByteOrderMark
          ? "\u4e01"
          : String.fromCharCode(code);
      }
      default:
        return String.fromCharCode(random.int(0, 127));
    }
  }

  #string(): string {
    const random = this.#random;
    const n = random.chance(0.1) ? random.int(20, 400) : random.int(0, 30);
    const ascii = random.chance(0.6);
    let text = "";
    for (let i = 0; i < n; i++) {
      text += ascii ? String.fromCharCode(random.int(0, 127)) : this.#char();
    }
    return text;
  }

  #key(): string {
    const random = this.#random;
    if (random.chance(0.2)) return String(random.int(0, 50));
    return random.chance(0.2)
      ? this.#string()
      : random.pick(["a", "b", "c", "key", "value", "x_1", "ü"]);
  }

  /** A buffer for a view: a shared one of this value, or a new one (now shared). */
  #buffer(): ArrayBuffer {
    const random = this.#random;
    if (this.#buffers.length > 0 && random.chance(0.5)) {
      return random.pick(this.#buffers);
    }
    const buffer = random.bytes(8 * random.int(0, 12)).buffer;
    this.#buffers.push(buffer);
    // The buffer itself may turn up in the value as well.
    if (random.chance(0.3)) this.#register(buffer);
    return buffer;
  }

  #typedArray(): ArrayBufferView {
    const random = this.#random;
    const name = random.pick(TYPED_ARRAY_NAMES);
    const Type = (globalThis as unknown as Record<
      string,
      ViewConstructor & {
        BYTES_PER_ELEMENT: number;
        new (
          buffer: ArrayBuffer,
          offset: number,
          length: number,
        ): ArrayBufferView;
      }
    >)[name]!;
    if (random.chance(0.5)) {
      // A view of its own buffer.
      const array = new Type(random.int(0, 16));
      new Uint8Array(array.buffer).set(random.bytes(array.byteLength));
      return array;
    }
    // A view at an offset into a buffer other views may share.
    const buffer = this.#buffer();
    const size = Type.BYTES_PER_ELEMENT;
    const slots = Math.floor(buffer.byteLength / size);
    const first = random.int(0, slots);
    return new Type(buffer, first * size, random.int(0, slots - first));
  }

  #error(): Error {
    const random = this.#random;
    const Type = random.pick(ERROR_TYPES);
    const error = new Type(random.chance(0.2) ? "" : this.#string());
    if (random.chance(0.3)) error.stack = this.#string();
    return error;
  }
}

const FUZZ_SEEDS = [1, 2, 3, 42, 2024, 0xdecaf];
const FUZZ_VALUES_PER_SEED = 2000;

for (const seed of FUZZ_SEEDS) {
  Deno.test(`Encoder/Decoder match structuredClone on ${FUZZ_VALUES_PER_SEED} random values (seed ${seed})`, () => {
    const generator = new ValueGenerator(new Prng(seed));
    for (let i = 0; i < FUZZ_VALUES_PER_SEED; i++) {
      const value = generator.make();
      try {
        assertClones(value, `seed ${seed}, value ${i}`);
      } catch (error) {
        console.error(`Replay: seed ${seed}, value ${i}:`, value);
        throw error;
      }
    }
  });
}

// ---- issue 21, item 11: the copies of a large record ----

Deno.test("Encoder grows its buffer to fit a large byte run once, not to twice its size, and frees it for the next record", () => {
  const encoder = new Encoder();
  const record = new Uint8Array(16 * 2 ** 20).fill(5);
  const length = encoder.encode(record);
  // What follows the run in the record fits in the room grown with it: one
  // copy of the run, not two (doubling copies it again, and keeps the first).
  assert.ok(
    encoder.bytes.length < length + 64 * 1024,
    `a buffer of ${encoder.bytes.length} bytes for ${length}`,
  );
  const large = encoder.bytes;
  assert.equal(encoder.encode(1), 5);
  assert.ok(encoder.bytes.length <= Encoder.KEEP_BYTES, "not kept");
  assert.equal(
    (large.buffer as ArrayBuffer).detached,
    true,
    "freed at once, not at a GC",
  );
  const decoded = new Decoder().decode(
    encoder.bytes,
    new DataView(encoder.bytes.buffer),
    0,
  );
  assert.equal(decoded, 1);
});

Deno.test("Encoder.takeBytes() hands a large record's buffer over, not a copy, and starts a small one; a small record's bytes are copied", () => {
  // A large task that waits for room keeps these bytes (Pipeline.put): a copy
  // would hold the record twice until it is written.
  const encoder = new Encoder();
  const record = new Uint8Array(Encoder.KEEP_BYTES + 1).fill(3);
  const length = encoder.encode(record);
  const large = encoder.bytes;
  const taken = encoder.takeBytes();
  assert.equal(taken, large, "handed over, not copied");
  assert.equal((taken.buffer as ArrayBuffer).detached, false);
  assert.ok(encoder.bytes.length <= Encoder.KEEP_BYTES, "a small one now");
  assert.notEqual(encoder.bytes.buffer, taken.buffer);
  const decoded = new Decoder().decode(
    taken,
    new DataView(taken.buffer),
    0,
  ) as Uint8Array;
  assert.equal(decoded.length, record.length);
  assert.equal(decoded[record.length - 1], 3);
  assert.ok(length <= taken.length);

  assert.equal(encoder.encode("small"), encoder.length);
  const small = encoder.bytes;
  const copy = encoder.takeBytes();
  assert.equal(encoder.bytes, small, "a small buffer stays the encoder's");
  assert.notEqual(copy.buffer, small.buffer);
  assert.deepEqual(copy, small.slice(0, encoder.length));
});

Deno.test("Encoder.trim() frees a buffer grown past KEEP_BYTES, and keeps a small one", () => {
  const encoder = new Encoder();
  encoder.encode("x".repeat(100));
  const small = encoder.bytes;
  encoder.trim();
  assert.equal(encoder.bytes, small);
  encoder.encode(new Uint8Array(Encoder.KEEP_BYTES + 1));
  const large = encoder.bytes;
  encoder.trim();
  assert.equal((large.buffer as ArrayBuffer).detached, true);
  assert.ok(encoder.bytes.length <= Encoder.KEEP_BYTES);
});
