/**
 * The codec that turns tasks and results into bytes for the rings and back.
 *
 * It round-trips what `structuredClone` accepts: primitives (with `bigint`),
 * arrays (holes kept), plain objects and class instances (as plain objects),
 * `Date`, `RegExp`, `Map`, `Set`, `ArrayBuffer`, typed arrays and `DataView`,
 * boxed primitives, errors (name, message, stack, cause), `DOMException`, and
 * shared or cyclic references. Functions, symbols and platform objects are
 * refused with a `DataCloneError`, before anything is written. One difference:
 * an array's non-index properties (`array.label = ...`) are not carried.
 *
 * Plain objects travel as shapes: the key list once per record in a block a
 * decoder that has seen it only compares, then the values alone. Each side
 * makes code per shape (object literal, named loads and stores), which V8
 * runs much faster than keys handled one by one.
 *
 * Limits: values nest as deep as memory allows (containers deeper than
 * `Encoder.MAX_RECURSION` are walked with a stack of their own, not the
 * thread's), a sparse array costs in proportion to its elements, and a record
 * holds at most `Encoder.MAX_BYTES` bytes (a larger value is refused with a
 * `RangeError` before anything is sent).
 *
 * A view on the pipeline's arena (`arena.ts`) travels as a handle
 * (`Encoder.ARENA`): the receiver gets a view on the same memory. Each record
 * holds one reference to each allocation it carries (see `Arena.handOn`).
 *
 * Shipped to workers by source, like `ring.ts`: no module-level helpers
 * (the interfaces below are types only).
 *
 * @module
 */

import type { Arena } from "./arena.ts";

/** A node of an encoder's shape trie: the keys so far, and a shape once a value ends here. */
interface ShapeNode {
  next: Map<string, ShapeNode>;
  /** The shape's number, or -1 while no value has had exactly these keys. */
  index: number;
  /** The keys on the path to this node, in order. */
  keys: string[];
  /** The encoded key block as little-endian 32-bit words, made on first use. */
  block: number[] | null;
  /** Writes the values of an object of this shape, made on first use. */
  write: ((encoder: Encoder, value: object) => void) | null;
}

/** A shape a decoder learnt: its key block (as in `ShapeNode`), its keys, and the reader made for it. */
interface Shape {
  block: number[];
  keys: string[];
  read: (decoder: Decoder) => object;
}

/**
 * A container's parts, for the encoder: a generator that writes the
 * container's own bytes and yields each value inside it in turn.
 */
type Parts = Generator<unknown, void, undefined>;

/** Where an encoder's walk of an array from its first hole stands (see `Encoder.#nextElement`). */
interface HoleWalk {
  /** Holes passed one by one. */
  holes: number;
  /** The array's keys, once the walk goes by them; the next one to look at. */
  keys: string[] | null;
  key: number;
  /** The element found. */
  item: unknown;
}

/**
 * A container's reader, for the decoder: a generator that reads the
 * container's own bytes, yields (nothing) for each value inside it, takes
 * that value back, and returns the container.
 */
type Reader = Generator<void, unknown, unknown>;

/** Encodes values into a reusable scratch buffer. */
export class Encoder {
  static readonly UNDEFINED = 0;
  static readonly NULL = 1;
  static readonly FALSE = 2;
  static readonly TRUE = 3;
  static readonly INT32 = 4;
  static readonly FLOAT64 = 5;
  static readonly ASCII = 6;
  static readonly UTF8 = 7;
  static readonly BIGINT = 8;
  static readonly ARRAY = 9;
  static readonly OBJECT = 10;
  static readonly REF = 11;
  static readonly DATE = 12;
  static readonly REGEXP = 13;
  static readonly MAP = 14;
  static readonly SET = 15;
  static readonly ARRAY_BUFFER = 16;
  static readonly VIEW = 17;
  static readonly ERROR = 18;
  static readonly BOXED = 19;
  /** A run of holes in an array (see `#holes`). */
  static readonly HOLE = 20;
  static readonly UTF16 = 21;
  static readonly DOM_EXCEPTION = 22;
  static readonly SHAPE = 23;
  /** A view on the arena: its kind, whether it carries a reference, its allocation's first block and generation, its offset and length. */
  static readonly ARENA = 24;

  /**
   * Objects a record may hold before the encoder looks them up in a Map
   * rather than a list: a Map lookup first gives each fresh object an
   * identity hash, which costs more than scanning a few entries.
   */
  static readonly LISTED_OBJECTS = 16;

  /**
   * The most bytes a record may hold: a ring frame carries the length of the
   * record it belongs to as an Int32 (`Ring.totalAt`). Values that encode to
   * more are refused with a RangeError.
   */
  static readonly MAX_BYTES = 0x7fffffff;

  /**
   * Containers nested deeper than this are walked with an explicit stack
   * instead of by recursion, so that depth costs heap, not native stack: a
   * cold worker's recursion overflowed at about 1,200 nested objects. Below
   * it, values take the recursive path, which is faster.
   */
  static readonly MAX_RECURSION = 256;

  /**
   * Holes an array's walk index by index may pass beyond one per element:
   * past them, the encoder goes by the array's keys (`Object.keys`), so that
   * a sparse array costs in proportion to its elements, as with
   * structuredClone. Keys cost more than indices for an array that is dense
   * after all, hence a margin.
   */
  static readonly SCANNED_HOLES = 4096;

  /** Bounds on the shape table: objects beyond them travel with plain OBJECT records. */
  static readonly MAX_SHAPE_NODES = 4096;
  static readonly MAX_SHAPE_KEYS = 64;

  /** Error types that keep their name, as in `structuredClone`; others become `Error`. */
  static readonly ERRORS = [
    "Error",
    "EvalError",
    "RangeError",
    "ReferenceError",
    "SyntaxError",
    "TypeError",
    "URIError",
  ];

  /** Whether `structuredClone` accepts instances of a prototype, found once per prototype. */
  static readonly cloneable = new WeakMap<object, boolean>();

  /** Typed array constructors by view tag. */
  static readonly VIEWS = [
    "Int8Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "Float32Array",
    "Float64Array",
    "BigInt64Array",
    "BigUint64Array",
    "DataView",
    "Float16Array",
  ];

  /**
   * A buffer of more than this many bytes (a large record's, the encoder's
   * or a reader's) is freed as soon as it has been used, not kept for the
   * next record nor left to the GC, which would hold it for a while.
   */
  static readonly KEEP_BYTES = 8 * 2 ** 20;

  /**
   * Bytes of buffers (byte runs) this thread's codec copied, encoding and
   * decoding: a figure for tests and benchmarks of the arena, whose buffers
   * travel without a copy.
   */
  static copiedBytes = 0;

  /** The most bytes this encoder writes for one value: `MAX_BYTES`, or less (tests). */
  readonly maxBytes: number;
  /** The encoded bytes are `bytes[0, length)` after `encode()`. */
  bytes: Uint8Array;
  length = 0;
  #view: DataView;
  /** Containers open in the recursive walk (see MAX_RECURSION). */
  #depth = 0;
  /**
   * The objects written so far, in order: a reference is an index. Entries
   * are overwritten, not pushed: emptying an array frees its storage, which
   * the next record would allocate again.
   */
  #seenList: (object | undefined)[] = [];
  #seenCount = 0;
  /** The same, by object, once there are more than LISTED_OBJECTS. */
  #seen = new Map<object, number>();
  /** Key sequences seen so far, as a trie; each end node is a shape. */
  #shapes = Encoder.#node([]);
  #shapeNodes = 0;
  #shapeCount = 0;
  #lastShape: ShapeNode | null = null;
  /** Names this encoder's shapes apart from other encoders' in a decoder's cache. */
  #shapeSalt = crypto.getRandomValues(new Uint32Array(1))[0]!;
  #text = new TextEncoder();

  #busy = false;
  #spare: Encoder | null = null;
  /**
   * The large byte runs the last `encode(value, true)` left out of `bytes`:
   * each belongs at offset `at` of `bytes` (the record is `bytes` with each
   * run put in at its place). The writer empties it once it has written them.
   */
  readonly leftOut: { at: number; bytes: Uint8Array }[] = [];
  #leaveOut = false;
  /** Bytes of the runs left out so far: a byte's offset in the record is its offset in `bytes` plus these. */
  #leftOutBytes = 0;

  /** The pipeline's arena, whose views travel as handles; without one, views on shared memory are refused. */
  arena: Arena | null = null;
  /** How many rings a record goes to: each ring's record holds its own reference. */
  arenaRefs = 1;
  /** Arena views travel as copies (a record leaving the machine). */
  copyArena = false;
  /** The typed arrays of the record are copied into the arena once (a put with `transfer`). */
  transfer = false;
  /** The allocations the last record carries, one reference each. */
  readonly arenaStarts: number[] = [];
  /** The buffers `transfer` copied into the arena, detached once the record is made. */
  readonly #transferred: ArrayBuffer[] = [];
  readonly #transferStarts: number[] = [];

  /** Creates an encoder that refuses values of more than `maxBytes` bytes. */
  constructor(maxBytes: number = Encoder.MAX_BYTES) {
    this.maxBytes = Math.min(maxBytes, Encoder.MAX_BYTES);
    this.bytes = new Uint8Array(Math.min(256, this.maxBytes));
    this.#view = new DataView(this.bytes.buffer);
  }

  /**
   * This encoder, or while it is encoding a spare of its own: a getter of the
   * value being copied may put another value, which must not overwrite it.
   */
  idle(): Encoder {
    if (!this.#busy) return this;
    if (this.#spare === null) {
      this.#spare = new Encoder(this.maxBytes);
      this.#spare.arena = this.arena;
      this.#spare.arenaRefs = this.arenaRefs;
      this.#spare.copyArena = this.copyArena;
    }
    return this.#spare.idle();
  }

  /**
   * Encodes `value`; returns the length of `bytes` it wrote. Throws a
   * `DataCloneError` if it cannot be cloned, and a `RangeError` if it
   * encodes to more than `maxBytes`. With `leaveOut`, each fixed-length
   * `ArrayBuffer` of more than `KEEP_BYTES` is not copied: it is listed in
   * `leftOut` (for a writer that writes the record at once, from the value).
   */
  encode(value: unknown, leaveOut = false): number {
    // The last record's large buffer is done with, if the caller did not say.
    if (this.bytes.length > Encoder.KEEP_BYTES) this.trim();
    this.#leaveOut = leaveOut;
    this.#leftOutBytes = 0;
    // Emptied by the writer; only a failed encoding leaves runs behind.
    if (this.leftOut.length !== 0) this.leftOut.length = 0;
    if (this.arenaStarts.length !== 0) this.arenaStarts.length = 0;
    this.length = 0;
    this.#depth = 0;
    this.#busy = true;
    try {
      this.#value(value);
      // The record's references are taken before any ring can hold it.
      if (this.arenaStarts.length !== 0) this.#handOn();
    } catch (error) {
      if (this.#transferred.length !== 0) this.#undoTransfer();
      this.arenaStarts.length = 0;
      throw error;
    } finally {
      this.#busy = false;
      const list = this.#seenList;
      for (let i = 0; i < this.#seenCount; i++) list[i] = undefined;
      this.#seenCount = 0;
      if (this.#seen.size !== 0) this.#seen.clear();
    }
    return this.length;
  }

  /**
   * Frees the buffer if a large record grew it past `KEEP_BYTES`; call once
   * nothing reads `bytes` any more.
   */
  trim(): void {
    if (this.bytes.length <= Encoder.KEEP_BYTES) return;
    const large = this.bytes.buffer as ArrayBuffer;
    this.bytes = new Uint8Array(Math.min(256, this.maxBytes));
    this.#view = new DataView(this.bytes.buffer);
    Encoder.free(large);
  }

  /**
   * The bytes of the last record, `bytes[0, length)`, for the caller to keep:
   * a large buffer (past `KEEP_BYTES`) is handed over, not copied, and the
   * encoder starts a small one; a small one is copied.
   */
  takeBytes(): Uint8Array {
    if (this.bytes.length <= Encoder.KEEP_BYTES) {
      return this.bytes.slice(0, this.length);
    }
    const taken = this.bytes;
    this.bytes = new Uint8Array(Math.min(256, this.maxBytes));
    this.#view = new DataView(this.bytes.buffer);
    return taken;
  }

  /** Frees `buffer` now (it is detached), rather than at the next major GC. */
  static free(buffer: ArrayBuffer): void {
    buffer.transfer(0);
  }

  #reserve(n: number): number {
    const at = this.length;
    if (at + n > this.bytes.length) this.#grow(at + n);
    this.length = at + n;
    return at;
  }

  /** Grows the buffer to hold `needed` bytes; refuses, before allocating, a record over `maxBytes`. */
  #grow(needed: number): void {
    if (needed + this.#leftOutBytes > this.maxBytes) throw this.#tooLarge();
    // Some room past a large byte run, for what follows it in the record:
    // else the next few bytes would double the buffer and copy it again.
    const grown = new Uint8Array(
      Math.min(Math.max(this.bytes.length * 2, needed + 4096), this.maxBytes),
    );
    const old = this.bytes;
    grown.set(old.subarray(0, this.length));
    this.bytes = grown;
    this.#view = new DataView(grown.buffer);
    // Only this encoder held it (callers read `bytes` after `encode`).
    if (old.length > Encoder.KEEP_BYTES) {
      Encoder.free(old.buffer as ArrayBuffer);
    }
  }

  #tooLarge(): RangeError {
    return new RangeError(
      `The value encodes to more than ${this.maxBytes} bytes, the most a record in a pipeline's rings can hold: split it into smaller tasks or results`,
    );
  }

  #tag(tag: number): void {
    const at = this.#reserve(1);
    this.bytes[at] = tag;
  }

  #u32(n: number): void {
    const at = this.#reserve(4); // first: it may replace the view
    this.#view.setUint32(at, n, true);
  }

  #value(value: unknown): void {
    switch (typeof value) {
      case "number":
        return this.#number(value);
      case "string":
        return this.#string(value);
      case "boolean":
        return this.#tag(value ? Encoder.TRUE : Encoder.FALSE);
      case "undefined":
        return this.#tag(Encoder.UNDEFINED);
      case "bigint":
        this.#tag(Encoder.BIGINT);
        return this.#string(value.toString(16));
      case "object":
        if (value === null) return this.#tag(Encoder.NULL);
        return this.#object(value);
      default:
        throw new DOMException(
          `${String(value)} could not be cloned`,
          "DataCloneError",
        );
    }
  }

  #number(value: number): void {
    if ((value | 0) === value && (value !== 0 || 1 / value > 0)) {
      const at = this.#reserve(5);
      this.bytes[at] = Encoder.INT32;
      this.#view.setInt32(at + 1, value, true);
    } else {
      const at = this.#reserve(9);
      this.bytes[at] = Encoder.FLOAT64;
      this.#view.setFloat64(at + 1, value, true);
    }
  }

  #string(value: string): void {
    const n = value.length;
    if (n <= 64) {
      // Short ASCII by hand: encodeInto has a fixed cost per call that a
      // short string does not repay.
      const at = this.#reserve(5 + n);
      const bytes = this.bytes;
      let i = 0;
      for (; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c > 127) break;
        bytes[at + 5 + i] = c;
      }
      if (i === n) {
        bytes[at] = Encoder.ASCII;
        this.#view.setUint32(at + 1, n, true);
        return;
      }
      this.length = at;
    }
    if (!value.isWellFormed()) {
      // UTF-8 cannot carry a lone surrogate: send the UTF-16 code units.
      const at = this.#reserve(5 + n * 2);
      this.bytes[at] = Encoder.UTF16;
      this.#view.setUint32(at + 1, n, true);
      for (let i = 0; i < n; i++) {
        this.#view.setUint16(at + 5 + i * 2, value.charCodeAt(i), true);
      }
      return;
    }
    // Up to 3 bytes a code unit, but no more room than the limit leaves: a
    // long string that needs less may still fit.
    const at = this.#reserve(
      Math.max(
        5 + n,
        Math.min(5 + n * 3, this.maxBytes - this.length - this.#leftOutBytes),
      ),
    );
    const { read, written } = this.#text.encodeInto(
      value,
      this.bytes.subarray(at + 5),
    );
    if (read < n) throw this.#tooLarge();
    this.bytes[at] = Encoder.UTF8;
    this.#view.setUint32(at + 1, written, true);
    this.length = at + 5 + written;
  }

  #object(value: object): void {
    const seen = this.#indexOf(value);
    if (seen >= 0) {
      this.#tag(Encoder.REF);
      return this.#u32(seen);
    }
    if (Array.isArray(value)) return this.#array(value);
    // Plain objects first: the common case skips the type checks below.
    // (An arguments object also has Object.prototype; it has a callee.)
    if (
      Object.getPrototypeOf(value) === Object.prototype && !("callee" in value)
    ) {
      return this.#plain(value as Record<string, unknown>);
    }
    const parts = this.#other(value, false);
    if (parts !== null) this.#children(parts);
  }

  /**
   * Writes the values `parts` yields, each after the bytes `parts` writes
   * before it (a container's header, an error's name): by recursion, or once
   * the walk is MAX_RECURSION deep, with a stack of its own.
   */
  #children(parts: Parts): void {
    if (this.#depth >= Encoder.MAX_RECURSION) return this.#deep(parts);
    this.#depth++;
    for (let step = parts.next(); !step.done; step = parts.next()) {
      this.#value(step.value);
    }
    this.#depth--;
  }

  /**
   * The walk past MAX_RECURSION: an explicit stack of the containers open,
   * each a generator that writes its own bytes and yields its children, in
   * the order the recursion writes them. The bytes are the same.
   */
  #deep(parts: Parts): void {
    const open = [parts];
    while (open.length > 0) {
      const step = open[open.length - 1]!.next();
      if (step.done) open.pop();
      else if (typeof step.value !== "object" || step.value === null) {
        this.#value(step.value);
      } else {
        const inner = this.#parts(step.value);
        if (inner !== null) open.push(inner);
      }
    }
  }

  /** What `#object` does, for the explicit stack: writes `value` if it has no children, else returns its parts. */
  #parts(value: object): Parts | null {
    const seen = this.#indexOf(value);
    if (seen >= 0) {
      this.#tag(Encoder.REF);
      this.#u32(seen);
      return null;
    }
    if (Array.isArray(value)) return this.#arrayParts(value);
    if (
      Object.getPrototypeOf(value) === Object.prototype && !("callee" in value)
    ) {
      return this.#plainParts(value as Record<string, unknown>);
    }
    return this.#other(value, true);
  }

  /**
   * The kinds of object rarer in tasks, kept out of `#object` so that its hot
   * path stays short. Writes the value whole and returns null, except for the
   * explicit stack (`deep`), which takes the parts of a Map, Set or class
   * instance; errors always return their parts (the recursion takes them to
   * `#children`: rarer still, and costly anyway for their stacks).
   */
  #other(value: object, deep: boolean): Parts | null {
    if (ArrayBuffer.isView(value)) {
      this.#view_(value);
      return null;
    }
    if (value instanceof ArrayBuffer) {
      this.#arrayBuffer(value);
      return null;
    }
    if (value instanceof SharedArrayBuffer) {
      throw new DOMException(
        "A SharedArrayBuffer cannot travel through a pipeline's rings: pass shared memory to the workers once, with the stage option args",
        "DataCloneError",
      );
    }
    if (value instanceof Date) {
      const at = this.#reserve(9);
      this.bytes[at] = Encoder.DATE;
      this.#view.setFloat64(at + 1, value.getTime(), true);
      return null;
    }
    if (value instanceof RegExp) {
      this.#tag(Encoder.REGEXP);
      this.#string(value.source);
      this.#string(value.flags);
      return null;
    }
    if (value instanceof Map) {
      if (deep) return this.#mapParts(value);
      this.#map(value);
      return null;
    }
    if (value instanceof Set) {
      if (deep) return this.#setParts(value);
      this.#set(value);
      return null;
    }
    if (value instanceof DOMException) return this.#domExceptionParts(value);
    if (value instanceof Error) return this.#errorParts(value);
    if (
      value instanceof Boolean || value instanceof Number ||
      value instanceof String || value instanceof BigInt
    ) {
      this.#tag(Encoder.BOXED);
      this.#value(value.valueOf()); // a primitive: no deeper
      return null;
    }
    if (typeof value === "function") {
      throw new DOMException(
        `${String(value)} could not be cloned`,
        "DataCloneError",
      );
    }
    if (Object.prototype.toString.call(value) === "[object Arguments]") {
      throw new DOMException(
        "An arguments object could not be cloned",
        "DataCloneError",
      );
    }
    const prototype = Object.getPrototypeOf(value);
    if (prototype !== Object.prototype && prototype !== null) {
      Encoder.#checkCloneable(value, prototype);
    }
    if (deep) return this.#plainParts(value as Record<string, unknown>);
    this.#plain(value as Record<string, unknown>);
    return null;
  }

  #map(value: Map<unknown, unknown>): void {
    if (this.#depth >= Encoder.MAX_RECURSION) {
      return this.#deep(this.#mapParts(value));
    }
    this.#depth++;
    this.#tag(Encoder.MAP);
    this.#u32(value.size);
    for (const [k, v] of value) {
      this.#value(k);
      this.#value(v);
    }
    this.#depth--;
  }

  /** `#map` for the explicit stack. */
  *#mapParts(value: Map<unknown, unknown>): Parts {
    this.#tag(Encoder.MAP);
    this.#u32(value.size);
    for (const [k, v] of value) {
      yield k;
      yield v;
    }
  }

  #set(value: Set<unknown>): void {
    if (this.#depth >= Encoder.MAX_RECURSION) {
      return this.#deep(this.#setParts(value));
    }
    this.#depth++;
    this.#tag(Encoder.SET);
    this.#u32(value.size);
    for (const v of value) this.#value(v);
    this.#depth--;
  }

  /** `#set` for the explicit stack. */
  *#setParts(value: Set<unknown>): Parts {
    this.#tag(Encoder.SET);
    this.#u32(value.size);
    for (const v of value) yield v;
  }

  *#domExceptionParts(value: DOMException): Parts {
    this.#tag(Encoder.DOM_EXCEPTION);
    this.#string(value.message);
    this.#string(value.name);
    yield value.stack;
  }

  *#errorParts(value: Error): Parts {
    this.#tag(Encoder.ERROR);
    this.#string(Encoder.ERRORS.includes(value.name) ? value.name : "Error");
    this.#string(value.message);
    yield value.stack;
    const hasCause = Object.hasOwn(value, "cause");
    this.#tag(hasCause ? Encoder.TRUE : Encoder.FALSE);
    if (hasCause) yield value.cause;
  }

  /** The index of `value` among the objects written so far; -1 (and listed) if new. */
  #indexOf(value: object): number {
    const list = this.#seenList;
    const n = this.#seenCount;
    if (n < Encoder.LISTED_OBJECTS) {
      for (let i = 0; i < n; i++) if (list[i] === value) return i;
      if (n === Encoder.LISTED_OBJECTS - 1) {
        for (let i = 0; i < n; i++) this.#seen.set(list[i]!, i);
        this.#seen.set(value, n);
      }
    } else {
      const seen = this.#seen.get(value);
      if (seen !== undefined) return seen;
      this.#seen.set(value, n);
    }
    list[n] = value;
    this.#seenCount = n + 1;
    return -1;
  }

  /**
   * A class instance is cloned as a plain object, but platform objects (URL,
   * WeakMap, Promise, ...) are refused: ask `structuredClone` once per
   * prototype which it is.
   */
  static #checkCloneable(value: object, prototype: object): void {
    if (Encoder.cloneable.get(prototype) === true) return;
    let clone: unknown;
    try {
      // Throws a DataCloneError for platform objects structuredClone refuses
      // (URL, WeakMap, ...) and for instances holding what cannot be cloned.
      clone = structuredClone(value);
    } catch (error) {
      // Out of stack deep in the contents (a RangeError): structuredClone
      // refuses or copies a platform object before it visits any contents,
      // so this instance is an ordinary object, whose contents this encoder
      // walks itself, as deep as they go.
      if (!(error instanceof RangeError)) throw error;
      Encoder.cloneable.set(prototype, true);
      return;
    }
    const name = (prototype as { constructor?: { name?: string } })
      .constructor?.name ?? "object";
    if (Object.getPrototypeOf(clone) !== Object.prototype) {
      // A platform object structuredClone copies (Blob, File, ...) is not
      // plain data the rings can carry.
      throw new DOMException(
        `${name} cannot travel through a pipeline's rings: send its contents (bytes, text or plain fields) instead`,
        "DataCloneError",
      );
    }
    // Only successes are remembered: a failure may be this instance's contents.
    Encoder.cloneable.set(prototype, true);
  }

  /** An array: its length, then its elements; from the first hole on, `#holey` takes over. */
  #array(value: unknown[]): void {
    if (this.#depth >= Encoder.MAX_RECURSION) {
      return this.#deep(this.#arrayParts(value));
    }
    this.#depth++;
    const n = value.length;
    this.#tag(Encoder.ARRAY);
    this.#u32(n);
    for (let i = 0; i < n; i++) {
      const item = value[i];
      if (item === undefined && !(i in value)) {
        this.#holey(value, i, n);
        break;
      }
      this.#value(item);
    }
    this.#depth--;
  }

  /** The rest of an array of length `n` from its first hole, `from`: see `#nextElement`. */
  #holey(value: unknown[], from: number, n: number): void {
    const walk: HoleWalk = { holes: 0, keys: null, key: 0, item: undefined };
    for (
      let i = this.#nextElement(value, from, n, walk);
      i < n;
      i = this.#nextElement(value, i + 1, n, walk)
    ) {
      this.#value(walk.item);
    }
  }

  /** `#array` for the explicit stack. */
  *#arrayParts(value: unknown[]): Parts {
    const n = value.length;
    this.#tag(Encoder.ARRAY);
    this.#u32(n);
    for (let i = 0; i < n; i++) {
      const item = value[i];
      if (item === undefined && !(i in value)) {
        const walk: HoleWalk = {
          holes: 0,
          keys: null,
          key: 0,
          item: undefined,
        };
        for (
          i = this.#nextElement(value, i, n, walk);
          i < n;
          i = this.#nextElement(value, i + 1, n, walk)
        ) {
          yield walk.item;
        }
        return;
      }
      yield item;
    }
  }

  /**
   * The index of the array's next element from `i` on (its value in
   * `walk.item`), or `n` at the end, after writing the holes before it as
   * runs. It looks at each index in turn until the holes passed exceed the
   * elements by SCANNED_HOLES; from then on it goes by the array's keys.
   */
  #nextElement(
    value: unknown[],
    i: number,
    n: number,
    walk: HoleWalk,
  ): number {
    if (walk.keys !== null) return this.#nextKey(value, i, n, walk);
    const run = i;
    for (; i < n; i++) {
      const item = value[i];
      if (item !== undefined || i in value) {
        if (i > run) this.#holes(i - run);
        walk.item = item;
        return i;
      }
      // Elements in [0, i]: i + 1 - holes (there is no hole before the walk).
      if (++walk.holes > i + 1 - walk.holes + Encoder.SCANNED_HOLES) {
        walk.keys = Object.keys(value);
        return this.#nextKey(value, run, n, walk);
      }
    }
    if (n > run) this.#holes(n - run);
    return n;
  }

  /**
   * `#nextElement` by the array's keys (an array's indices come first, in
   * ascending order): a sparse array costs in proportion to its elements,
   * not its length.
   */
  #nextKey(value: unknown[], next: number, n: number, walk: HoleWalk): number {
    const keys = walk.keys!;
    while (walk.key < keys.length) {
      const key = keys[walk.key++]!;
      const index = Number(key);
      if (
        !Number.isInteger(index) || index < next || index >= n ||
        String(index) !== key || !(index in value) // gone: a getter deleted it
      ) continue;
      if (index > next) this.#holes(index - next);
      walk.item = value[index];
      return index;
    }
    if (n > next) this.#holes(n - next);
    return n;
  }

  /** A run of `count` holes: HOLE and the count in a byte, or HOLE, 0 and the count in 4. */
  #holes(count: number): void {
    if (count < 256) {
      const at = this.#reserve(2);
      this.bytes[at] = Encoder.HOLE;
      this.bytes[at + 1] = count;
    } else {
      const at = this.#reserve(6);
      this.bytes[at] = Encoder.HOLE;
      this.bytes[at + 1] = 0;
      this.#view.setUint32(at + 2, count, true);
    }
  }

  #plain(value: Record<string, unknown>): void {
    if (this.#depth >= Encoder.MAX_RECURSION) {
      return this.#deep(this.#plainParts(value));
    }
    // for-in walks V8's enum cache without allocating a key array; only class
    // instances can inherit enumerable keys, so only they need the own check.
    const plain = Object.getPrototypeOf(value) === Object.prototype;
    const shape = this.#shapeOf(value, plain);
    if (shape !== null) return this.#shaped(value, shape);
    this.#depth++;
    const at = this.#reserve(5);
    this.bytes[at] = Encoder.OBJECT;
    let count = 0;
    for (const key in value) {
      if (!plain && !Object.hasOwn(value, key)) continue;
      this.#string(key);
      this.#value(value[key]);
      count++;
    }
    this.#view.setUint32(at + 1, count, true);
    this.#depth--;
  }

  /** `#plain` for the explicit stack. */
  *#plainParts(value: Record<string, unknown>): Parts {
    const plain = Object.getPrototypeOf(value) === Object.prototype;
    const shape = this.#shapeOf(value, plain);
    if (shape === null) return yield* this.#objectParts(value, plain);
    this.#shapeHeader(shape);
    const keys = shape.keys;
    for (let i = 0; i < keys.length; i++) yield value[keys[i]!];
  }

  /** An OBJECT record (as in `#plain`) for the explicit stack: each key, then its value; the count last, once known. */
  *#objectParts(value: Record<string, unknown>, plain: boolean): Parts {
    const at = this.#reserve(5);
    this.bytes[at] = Encoder.OBJECT;
    let count = 0;
    for (const key in value) {
      if (!plain && !Object.hasOwn(value, key)) continue;
      this.#string(key);
      yield value[key];
      count++;
    }
    this.#view.setUint32(at + 1, count, true);
  }

  /**
   * The shape (key sequence) of `value` from the trie, added if new; null
   * when the table is full, or for a "__proto__" key (which must not become
   * an object literal's prototype on the other side).
   */
  #shapeOf(value: Record<string, unknown>, plain: boolean): ShapeNode | null {
    // Most streams repeat one shape: compare keys by identity against it first.
    const last = this.#lastShape;
    if (last !== null) {
      const keys = last.keys;
      let i = 0;
      for (const key in value) {
        if (!plain && !Object.hasOwn(value, key)) continue;
        if (keys[i] !== key) {
          i = -1;
          break;
        }
        i++;
      }
      if (i === keys.length) return last;
    }
    let node = this.#shapes;
    let count = 0;
    for (const key in value) {
      if (!plain && !Object.hasOwn(value, key)) continue;
      if (++count > Encoder.MAX_SHAPE_KEYS || key === "__proto__") return null;
      let next = node.next.get(key);
      if (next === undefined) {
        if (this.#shapeNodes >= Encoder.MAX_SHAPE_NODES) return null;
        this.#shapeNodes++;
        next = Encoder.#node([...node.keys, key]);
        node.next.set(key, next);
      }
      node = next;
    }
    if (node.index < 0) node.index = this.#shapeCount++;
    return (this.#lastShape = node);
  }

  static #node(keys: string[]): ShapeNode {
    return { next: new Map(), index: -1, keys, block: null, write: null };
  }

  /**
   * A SHAPE record: the shape's key, the key block (count and keys, so any
   * decoder can learn it, zero-padded to whole 32-bit words, which copy and
   * compare faster than bytes), then the values alone. A decoder
   * that knows the shape checks the block and builds the object with code
   * made for it.
   */
  #shaped(value: Record<string, unknown>, shape: ShapeNode): void {
    this.#shapeHeader(shape);
    // The listed keys, not a new walk: a getter could add or delete keys.
    shape.write ??= new Function(
      "e",
      "o",
      shape.keys.map((key) => `e.writeValue(o[${JSON.stringify(key)}]);`)
        .join("\n"),
    ) as (encoder: Encoder, value: object) => void;
    this.#depth++;
    shape.write(this, value);
    this.#depth--;
  }

  /** A SHAPE record's bytes before the values. */
  #shapeHeader(shape: ShapeNode): void {
    const at = this.#reserve(11);
    this.bytes[at] = Encoder.SHAPE;
    this.#view.setUint32(at + 1, this.#shapeSalt, true);
    this.#view.setUint16(at + 5, shape.index, true);
    const keys = shape.keys;
    const block = shape.block;
    if (block === null) {
      const start = this.#reserve(4);
      this.#view.setUint32(start, keys.length, true);
      for (let i = 0; i < keys.length; i++) this.#string(keys[i]!);
      const pad = -(this.length - start) & 3;
      const padAt = this.#reserve(pad); // first: it may replace the bytes
      this.bytes.fill(0, padAt, this.length);
      const words: number[] = [];
      for (let i = start; i < this.length; i += 4) {
        words.push(this.#view.getInt32(i, true));
      }
      shape.block = words;
    } else {
      const start = this.#reserve(block.length * 4);
      const view = this.#view;
      for (let i = 0; i < block.length; i++) {
        view.setInt32(start + i * 4, block[i]!, true);
      }
    }
    this.#view.setUint32(at + 7, this.length - at - 11, true);
  }

  /** Writes one value (for shape writers). */
  writeValue(value: unknown): void {
    this.#value(value);
  }

  #arrayBuffer(value: ArrayBuffer): void {
    if (value.detached) {
      throw new DOMException(
        "A detached ArrayBuffer could not be cloned",
        "DataCloneError",
      );
    }
    this.#tag(Encoder.ARRAY_BUFFER);
    // The maximum length of a resizable buffer, or 0 for a fixed one.
    this.#u32(value.resizable ? value.maxByteLength : 0);
    if (
      this.#leaveOut && !value.resizable &&
      value.byteLength > Encoder.KEEP_BYTES
    ) {
      return this.#leaveOutRun(new Uint8Array(value));
    }
    this.#raw(new Uint8Array(value));
  }

  /** Like `#raw`, but lists the run in `leftOut` instead of copying it. */
  #leaveOutRun(bytes: Uint8Array): void {
    // The writer copies it into the ring.
    Encoder.copiedBytes += bytes.length;
    this.#u32(bytes.length);
    this.#reserve(-(this.length + this.#leftOutBytes) & 7);
    if (this.length + this.#leftOutBytes + bytes.length > this.maxBytes) {
      throw this.#tooLarge();
    }
    this.leftOut.push({ at: this.length, bytes });
    this.#leftOutBytes += bytes.length;
  }

  /** A view travels with its whole buffer, as in `structuredClone`, so views of one buffer stay views of one buffer. */
  #view_(value: ArrayBufferView): void {
    // The built-in type, also for subclasses (node:buffer's Buffer).
    const name = Object.prototype.toString.call(value).slice(8, -1);
    const kind = Encoder.VIEWS.indexOf(name);
    if (
      kind >= 0 && this.arena !== null && value.buffer === this.arena.buffer
    ) {
      return this.#arenaView(value, name, kind);
    }
    if (this.transfer && kind >= 0 && this.#transferView(value, kind)) return;
    if (kind < 0 || !(value.buffer instanceof ArrayBuffer)) {
      throw new DOMException(
        value.buffer instanceof ArrayBuffer
          ? `${name} could not be cloned`
          : `${name} on a SharedArrayBuffer cannot travel through a pipeline's rings: pass shared memory to the workers once, with the stage option args`,
        "DataCloneError",
      );
    }
    const at = this.#reserve(2);
    this.bytes[at] = Encoder.VIEW;
    this.bytes[at + 1] = kind;
    this.#object(value.buffer);
    this.#u32(value.byteOffset);
    this.#u32(
      name === "DataView"
        ? value.byteLength
        : (value as unknown as { length: number }).length,
    );
  }

  /** Writes the handle of a view on the arena, or a copy of it with `copyArena`. */
  #arenaView(value: ArrayBufferView, name: string, kind: number): void {
    const arena = this.arena!;
    const start = arena.startOf(value);
    if (start < 0 || !arena.owns(start)) {
      throw new TypeError(
        `A ${name} on the pipeline's arena was put or freed already, or its task ended: a buffer given up cannot be used again (allocate another)`,
      );
    }
    if (this.copyArena) {
      const bytes = new Uint8Array(
        value.buffer,
        value.byteOffset,
        value.byteLength,
      ).slice();
      const Type = (globalThis as unknown as Record<
        string,
        new (
          buffer: ArrayBuffer,
          offset: number,
          length: number,
        ) => ArrayBufferView
      >)[name]!;
      const length = name === "DataView"
        ? value.byteLength
        : (value as unknown as { length: number }).length;
      return this.#view_(new Type(bytes.buffer, 0, length));
    }
    this.#handle(value, kind, start);
  }

  #handle(value: ArrayBufferView, kind: number, start: number): void {
    const counted = this.arenaStarts.indexOf(start) < 0;
    if (counted) this.arenaStarts.push(start);
    const at = this.#reserve(3);
    this.bytes[at] = Encoder.ARENA;
    this.bytes[at + 1] = kind;
    this.bytes[at + 2] = counted ? 1 : 0;
    this.#u32(start);
    this.#u32(this.arena!.generation(start));
    this.#u32(value.byteOffset);
    this.#u32(
      kind === Encoder.VIEWS.indexOf("DataView")
        ? value.byteLength
        : (value as unknown as { length: number }).length,
    );
  }

  /**
   * With `transfer`, copies an ordinary view into the arena and writes the
   * handle of the copy; false (nothing written) if the arena has no room.
   */
  #transferView(value: ArrayBufferView, kind: number): boolean {
    const arena = this.arena;
    if (arena === null || !(value.buffer instanceof ArrayBuffer)) return false;
    const space = arena.tryAlloc(value.byteLength);
    if (space === null) return false;
    space.set(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
    Encoder.copiedBytes += value.byteLength;
    this.#transferred.push(value.buffer);
    this.#transferStarts.push(arena.startOf(space));
    const name = Encoder.VIEWS[kind]!;
    const length = name === "DataView"
      ? value.byteLength
      : (value as unknown as { length: number }).length;
    this.#handle(
      arena.view(name, space.byteOffset, length),
      kind,
      arena.startOf(space),
    );
    return true;
  }

  /** The record is made: its allocations go with it (see `Arena.handOn`), and transferred buffers are given up. */
  #handOn(): void {
    this.arena!.handOn(this.arenaStarts, this.arenaRefs);
    const transferred = this.#transferred;
    for (let i = 0; i < transferred.length; i++) {
      if (!transferred[i]!.detached) transferred[i]!.transfer(0);
    }
    transferred.length = 0;
    this.#transferStarts.length = 0;
  }

  /** The record failed: the copies `transfer` made go back. */
  #undoTransfer(): void {
    const copies = this.#transferStarts;
    for (let i = 0; i < copies.length; i++) this.arena!.release(copies[i]!);
    copies.length = 0;
    this.#transferred.length = 0;
  }

  /**
   * Byte runs start 8-aligned within the record, as records do in a ring:
   * V8 copies shared memory a word at a time only when both sides align,
   * and byte by byte otherwise, which is several times slower.
   */
  #raw(bytes: Uint8Array): void {
    Encoder.copiedBytes += bytes.length;
    this.#u32(bytes.length);
    const pad = -(this.length + this.#leftOutBytes) & 7;
    const at = this.#reserve(pad + bytes.length) + pad;
    this.bytes.set(bytes, at);
  }
}

/** Decodes values written by `Encoder`. */
export class Decoder {
  /** Slots of the short-string cache (a power of two). */
  static readonly CACHE_SLOTS = 512;
  /** Shapes remembered at most; past that the cache starts over. */
  static readonly MAX_SHAPES = 4096;

  #strings: (string | undefined)[] = new Array(Decoder.CACHE_SLOTS);
  #bytes: Uint8Array = new Uint8Array(0);
  #view: DataView = new DataView(new ArrayBuffer(0));
  #at = 0;
  #start = 0;
  /** A large byte run cut out of the record at `#runAt` (see `decode`). */
  #run: Uint8Array | null = null;
  #runAt = -1;
  /** The objects read so far, in order (overwritten, like the encoder's list). */
  #objects: unknown[] = [];
  #objectCount = 0;
  /** Containers open in the recursive walk (see Encoder.MAX_RECURSION). */
  #depth = 0;
  /** Shapes learnt from SHAPE records, by encoder salt and shape number. */
  #shapes = new Map<number, Shape>();
  // ignoreBOM: a leading U+FEFF is part of the string, not a byte order mark.
  #text = new TextDecoder("utf-8", { ignoreBOM: true });

  /** The pipeline's arena, on which handles (`Encoder.ARENA`) are views. */
  arena: Arena | null = null;
  /** The record being decoded carried a reference (see `Arena.decoded`). */
  #arenaRecord = false;

  /** Where a record's large byte run starts (see `largeRun`). */
  static readonly LARGE_RUN_AT = 16;

  /**
   * The length of the byte run of a record that is one large fixed-length
   * `ArrayBuffer` (or a view of one), from the record's first `available`
   * bytes at `bytes[at]`; -1 for any other record. The run starts at
   * `LARGE_RUN_AT`. A reader that reassembles such a record puts the run in
   * a buffer of its own, which becomes the value's (`decodeWithRun`): no
   * copy of it is made to decode it.
   */
  static largeRun(bytes: Uint8Array, at: number, available: number): number {
    // [VIEW, kind]? then [ARRAY_BUFFER, u32 max length (0: fixed), u32
    // length, padding to 8]: the run starts at 16 either way.
    const head = bytes[at] === Encoder.VIEW ? 2 : 0;
    if (available < 16 || bytes[at + head] !== Encoder.ARRAY_BUFFER) return -1;
    const word = (i: number) =>
      (bytes[i]! | bytes[i + 1]! << 8 | bytes[i + 2]! << 16 |
        bytes[i + 3]! << 24) >>> 0;
    if (word(at + head + 1) !== 0) return -1;
    const length = word(at + head + 5);
    return length > Encoder.KEEP_BYTES ? length : -1;
  }

  /**
   * Decodes a record reassembled without its large byte run (`largeRun`):
   * `bytes` from offset 0 holds the rest, and `run` was cut out at `runAt`.
   * The value takes `run` as its buffer.
   */
  decodeWithRun(
    bytes: Uint8Array,
    view: DataView,
    run: Uint8Array,
    runAt: number,
  ): unknown {
    this.#run = run;
    this.#runAt = runAt;
    try {
      return this.decode(bytes, view, 0);
    } finally {
      this.#run = null;
    }
  }

  /** Decodes the value encoded at `bytes[start, start + length)`. */
  decode(bytes: Uint8Array, view: DataView, start: number): unknown {
    this.#bytes = bytes;
    this.#view = view;
    this.#at = start;
    this.#start = start;
    this.#objectCount = 0;
    this.#depth = 0;
    const value = this.#value();
    if (this.#arenaRecord) {
      this.#arenaRecord = false;
      this.arena!.decoded(value);
    }
    // Let go of this record's objects.
    const objects = this.#objects;
    for (let i = 0; i < this.#objectCount; i++) objects[i] = undefined;
    return value;
  }

  #u32(): number {
    const n = this.#view.getUint32(this.#at, true);
    this.#at += 4;
    return n;
  }

  #value(): unknown {
    const tag = this.#bytes[this.#at++];
    switch (tag) {
      case Encoder.INT32: {
        const n = this.#view.getInt32(this.#at, true);
        this.#at += 4;
        return n;
      }
      case Encoder.FLOAT64: {
        const n = this.#view.getFloat64(this.#at, true);
        this.#at += 8;
        return n;
      }
      case Encoder.ASCII:
      case Encoder.UTF8:
      case Encoder.UTF16:
        this.#at--;
        return this.#string();
      case Encoder.UNDEFINED:
        return undefined;
      case Encoder.NULL:
        return null;
      case Encoder.FALSE:
        return false;
      case Encoder.TRUE:
        return true;
      case Encoder.ARRAY: {
        if (this.#depth >= Encoder.MAX_RECURSION) {
          return this.#deep(this.#arrayReader());
        }
        this.#depth++;
        const n = this.#u32();
        const array = new Array(n);
        this.register(array);
        for (let i = 0; i < n;) {
          if (this.#bytes[this.#at] === Encoder.HOLE) i += this.#holes();
          else array[i++] = this.#value();
        }
        this.#depth--;
        return array;
      }
      case Encoder.SHAPE: {
        const shape = this.#shape();
        if (this.#depth >= Encoder.MAX_RECURSION) {
          return this.#deep(this.#shapeReader(shape));
        }
        this.#depth++;
        const object = shape.read(this);
        this.#depth--;
        return object;
      }
      case Encoder.REF:
        return this.#objects[this.#u32()];
      default:
        return this.#other(tag);
    }
  }

  /** The kinds of value rarer in tasks, kept out of `#value` so that its hot switch stays short. */
  #other(tag: number | undefined): unknown {
    switch (tag) {
      case Encoder.BIGINT: {
        const text = this.#string();
        return text[0] === "-"
          ? -BigInt("0x" + text.slice(1))
          : BigInt("0x" + text);
      }
      case Encoder.OBJECT: {
        if (this.#depth >= Encoder.MAX_RECURSION) {
          return this.#deep(this.#objectReader());
        }
        this.#depth++;
        const n = this.#u32();
        const object: Record<string, unknown> = {};
        this.register(object);
        for (let i = 0; i < n; i++) {
          const key = this.#string();
          Decoder.#setKey(object, key, this.#value());
        }
        this.#depth--;
        return object;
      }
      case Encoder.DATE: {
        const date = new Date(this.#view.getFloat64(this.#at, true));
        this.#at += 8;
        this.register(date);
        return date;
      }
      case Encoder.REGEXP: {
        const index = this.register(null);
        const source = this.#string();
        const regexp = new RegExp(source, this.#string());
        this.#objects[index] = regexp;
        return regexp;
      }
      case Encoder.MAP: {
        if (this.#depth >= Encoder.MAX_RECURSION) {
          return this.#deep(this.#mapReader());
        }
        this.#depth++;
        const n = this.#u32();
        const map = new Map();
        this.register(map);
        for (let i = 0; i < n; i++) {
          const key = this.#value();
          map.set(key, this.#value());
        }
        this.#depth--;
        return map;
      }
      case Encoder.SET: {
        if (this.#depth >= Encoder.MAX_RECURSION) {
          return this.#deep(this.#setReader());
        }
        this.#depth++;
        const n = this.#u32();
        const set = new Set();
        this.register(set);
        for (let i = 0; i < n; i++) set.add(this.#value());
        this.#depth--;
        return set;
      }
      case Encoder.ARRAY_BUFFER: {
        const maxByteLength = this.#u32();
        const bytes = this.#raw();
        let buffer = bytes.buffer as ArrayBuffer;
        if (maxByteLength !== 0) {
          buffer = new ArrayBuffer(bytes.length, { maxByteLength });
          new Uint8Array(buffer).set(bytes);
        }
        this.register(buffer);
        return buffer;
      }
      case Encoder.VIEW: {
        const index = this.register(null);
        const name = Encoder.VIEWS[this.#bytes[this.#at++]!]!;
        const buffer = this.#value() as ArrayBuffer;
        const offset = this.#u32();
        const length = this.#u32();
        const Type = (globalThis as unknown as Record<
          string,
          new (
            buffer: ArrayBuffer,
            offset: number,
            length: number,
          ) => ArrayBufferView
        >)[name]!;
        return (this.#objects[index] = new Type(buffer, offset, length));
      }
      case Encoder.ARENA: {
        const kind = this.#bytes[this.#at]!;
        const counted = this.#bytes[this.#at + 1] === 1;
        this.#at += 2;
        const start = this.#u32();
        const generation = this.#u32();
        const offset = this.#u32();
        const length = this.#u32();
        const arena = this.arena;
        if (arena === null) {
          throw new RangeError("Corrupt record: an arena handle with no arena");
        }
        if (counted) {
          arena.acquire(start, generation);
          this.#arenaRecord = true;
        } else arena.check(start, generation);
        const view = arena.view(Encoder.VIEWS[kind]!, offset, length);
        this.register(view);
        return view;
      }
      case Encoder.DOM_EXCEPTION:
        return this.#read(this.#domExceptionReader());
      case Encoder.ERROR:
        return this.#read(this.#errorReader());
      case Encoder.BOXED: {
        const index = this.register(null);
        return (this.#objects[index] = Object(this.#value())); // a primitive
      }
      default:
        throw new RangeError(`Corrupt record: unknown tag ${tag}`);
    }
  }

  /**
   * Runs a container's reader (an error's), reading each value it asks for:
   * by recursion, or once the walk is MAX_RECURSION deep, with a stack of its
   * own.
   */
  #read(reader: Reader): unknown {
    if (this.#depth >= Encoder.MAX_RECURSION) return this.#deep(reader);
    this.#depth++;
    let step = reader.next();
    while (!step.done) step = reader.next(this.#value());
    this.#depth--;
    return step.value;
  }

  /**
   * The walk past MAX_RECURSION: an explicit stack of the containers open,
   * each a reader that asks for its values in turn and returns the container.
   */
  #deep(reader: Reader): unknown {
    const open = [reader];
    let value: unknown = undefined;
    for (;;) {
      const step = open[open.length - 1]!.next(value);
      if (step.done) {
        open.pop();
        if (open.length === 0) return step.value;
        value = step.value;
      } else {
        const inner = this.#reader();
        if (inner === null) value = this.#value();
        else {
          open.push(inner);
          value = undefined; // a reader's first next() takes nothing
        }
      }
    }
  }

  /** The reader of the container whose tag is next, past its tag; null (nothing read) for a value without children. */
  #reader(): Reader | null {
    switch (this.#bytes[this.#at]) {
      case Encoder.ARRAY:
        this.#at++;
        return this.#arrayReader();
      case Encoder.SHAPE:
        this.#at++;
        return this.#shapeReader(this.#shape());
      case Encoder.OBJECT:
        this.#at++;
        return this.#objectReader();
      case Encoder.MAP:
        this.#at++;
        return this.#mapReader();
      case Encoder.SET:
        this.#at++;
        return this.#setReader();
      case Encoder.DOM_EXCEPTION:
        this.#at++;
        return this.#domExceptionReader();
      case Encoder.ERROR:
        this.#at++;
        return this.#errorReader();
      default:
        return null;
    }
  }

  /** The ARRAY case of `#value`, for the explicit stack. */
  *#arrayReader(): Reader {
    const n = this.#u32();
    const array = new Array(n);
    this.register(array);
    for (let i = 0; i < n;) {
      if (this.#bytes[this.#at] === Encoder.HOLE) i += this.#holes();
      else {
        const item = yield;
        array[i++] = item;
      }
    }
    return array;
  }

  /** Reads a run of holes (see `Encoder.#holes`); returns how many. */
  #holes(): number {
    const at = this.#at;
    const count = this.#bytes[at + 1]!;
    if (count !== 0) {
      this.#at = at + 2;
      return count;
    }
    this.#at = at + 6;
    return this.#view.getUint32(at + 2, true);
  }

  /** The SHAPE case of `#value`, for the explicit stack: the keys in order, as the shape's reader makes them. */
  *#shapeReader(shape: Shape): Reader {
    const object: Record<string, unknown> = {};
    this.register(object);
    const keys = shape.keys;
    for (let i = 0; i < keys.length; i++) {
      const value = yield;
      Decoder.#setKey(object, keys[i]!, value);
    }
    return object;
  }

  /** The OBJECT case of `#other`, for the explicit stack. */
  *#objectReader(): Reader {
    const n = this.#u32();
    const object: Record<string, unknown> = {};
    this.register(object);
    for (let i = 0; i < n; i++) {
      const key = this.#string();
      const value = yield;
      Decoder.#setKey(object, key, value);
    }
    return object;
  }

  /** Sets an own key; "__proto__" too stays a key, rather than set the prototype. */
  static #setKey(
    object: Record<string, unknown>,
    key: string,
    value: unknown,
  ): void {
    if (key === "__proto__") {
      Object.defineProperty(object, key, {
        value,
        writable: true,
        enumerable: true,
        configurable: true,
      });
    } else object[key] = value;
  }

  /** The MAP case of `#other`, for the explicit stack. */
  *#mapReader(): Reader {
    const n = this.#u32();
    const map = new Map();
    this.register(map);
    for (let i = 0; i < n; i++) {
      const key = yield;
      const value = yield;
      map.set(key, value);
    }
    return map;
  }

  /** The SET case of `#other`, for the explicit stack. */
  *#setReader(): Reader {
    const n = this.#u32();
    const set = new Set();
    this.register(set);
    for (let i = 0; i < n; i++) set.add(yield);
    return set;
  }

  *#domExceptionReader(): Reader {
    const index = this.register(null);
    const message = this.#string();
    const exception = new DOMException(message, this.#string());
    this.#objects[index] = exception;
    const stack = yield;
    if (typeof stack === "string") {
      Object.defineProperty(exception, "stack", {
        value: stack,
        writable: true,
        configurable: true,
      });
    }
    return exception;
  }

  *#errorReader(): Reader {
    const index = this.register(null);
    const name = this.#string();
    const message = this.#string();
    const Type = (globalThis as unknown as Record<string, ErrorConstructor>)[
      Encoder.ERRORS.includes(name) ? name : "Error"
    ]!;
    const error = new Type(message);
    this.#objects[index] = error;
    const stack = yield;
    if (typeof stack === "string") error.stack = stack;
    else delete error.stack;
    // Whether a cause follows: a TRUE or FALSE tag.
    if (this.#bytes[this.#at++] === Encoder.TRUE) {
      const cause = yield;
      Object.defineProperty(error, "cause", {
        value: cause,
        writable: true,
        configurable: true,
      });
    }
    return error;
  }

  /** Reads a SHAPE record's header and key block: the shape, learnt if new. */
  #shape(): Shape {
    const view = this.#view;
    const id = view.getUint32(this.#at, true) * 65536 +
      view.getUint16(this.#at + 4, true);
    const size = view.getUint32(this.#at + 6, true);
    const block = this.#at + 10;
    this.#at = block + size;
    let shape = this.#shapes.get(id);
    if (shape === undefined || !this.#matches(shape.block, block, size)) {
      shape = this.#learn(block, size);
      if (this.#shapes.size >= Decoder.MAX_SHAPES) this.#shapes.clear();
      this.#shapes.set(id, shape);
    }
    return shape;
  }

  /** Whether the key block at `start` is `block` (a salt alone could collide). */
  #matches(block: number[], start: number, size: number): boolean {
    if (block.length * 4 !== size) return false;
    const view = this.#view;
    for (let i = 0; i < block.length; i++) {
      if (view.getInt32(start + i * 4, true) !== block[i]) return false;
    }
    return true;
  }

  /**
   * Reads the key block at `block` and makes the shape's reader: an object
   * literal with the keys in order, then a store per key, which V8 runs far
   * faster than keys added one by one under names known only at run time.
   */
  #learn(block: number, size: number): Shape {
    const at = this.#at;
    this.#at = block;
    const keys: string[] = [];
    for (let n = this.#u32(); n > 0; n--) keys.push(this.#string());
    this.#at = at;
    const names = keys.map((key) => JSON.stringify(key));
    const read = new Function(
      "d",
      `"use strict";
      const o = { ${names.map((name) => `${name}: undefined`).join(", ")} };
      d.register(o);
      ${names.map((name) => `o[${name}] = d.readValue();`).join("\n")}
      return o;`,
    ) as (decoder: Decoder) => object;
    const words: number[] = [];
    for (let i = 0; i < size >> 2; i++) {
      words.push(this.#view.getInt32(block + i * 4, true));
    }
    return { block: words, keys, read };
  }

  /** Reads the next value (for shape readers). */
  readValue(): unknown {
    return this.#value();
  }

  /** Registers an object before its values, so references to it resolve (also for shape readers); returns its index. */
  register(object: unknown): number {
    const index = this.#objectCount++;
    this.#objects[index] = object;
    return index;
  }

  #string(): string {
    const tag = this.#bytes[this.#at];
    const n = this.#view.getUint32(this.#at + 1, true);
    const start = this.#at + 5;
    if (tag === Encoder.UTF16) {
      this.#at = start + n * 2;
      let text = "";
      for (let i = 0; i < n; i++) {
        text += String.fromCharCode(this.#view.getUint16(start + i * 2, true));
      }
      return text;
    }
    this.#at = start + n;
    if (tag === Encoder.ASCII && n <= 64) return this.#shortAscii(start, n);
    return this.#text.decode(this.#bytes.subarray(start, start + n));
  }

  /**
   * Short ASCII strings (object keys above all) come from a small cache of
   * recent strings, checked byte by byte: building them anew costs far more.
   */
  #shortAscii(start: number, n: number): string {
    const bytes = this.#bytes;
    if (n > 24) return Decoder.#ascii(bytes, start, n);
    let hash = n;
    for (let i = start; i < start + n; i++) hash = (hash * 31 + bytes[i]!) | 0;
    const slot = hash & (Decoder.CACHE_SLOTS - 1);
    const cached = this.#strings[slot];
    if (cached !== undefined && cached.length === n) {
      let i = 0;
      while (i < n && cached.charCodeAt(i) === bytes[start + i]) i++;
      if (i === n) return cached;
    }
    return (this.#strings[slot] = Decoder.#ascii(bytes, start, n));
  }

  /** Builds an ASCII string by hand: TextDecoder's cost per call on shared memory is far more than a short string's. */
  static #ascii(bytes: Uint8Array, start: number, n: number): string {
    // Eight characters a step: a string grown by one is copied at every step.
    let text = "";
    let i = start;
    const end = start + n;
    for (; i + 8 <= end; i += 8) {
      text += String.fromCharCode(
        bytes[i]!,
        bytes[i + 1]!,
        bytes[i + 2]!,
        bytes[i + 3]!,
        bytes[i + 4]!,
        bytes[i + 5]!,
        bytes[i + 6]!,
        bytes[i + 7]!,
      );
    }
    for (; i < end; i++) text += String.fromCharCode(bytes[i]!);
    return text;
  }

  #raw(): Uint8Array {
    const n = this.#u32();
    const start = this.#at + (-(this.#at - this.#start) & 7);
    const run = this.#run;
    // Reassembled apart, or sliced here: copied either way.
    Encoder.copiedBytes += n;
    if (run !== null && start === this.#runAt && n === run.length) {
      // The run is not in the record's bytes: what follows it is here.
      this.#run = null;
      this.#at = start;
      return run;
    }
    this.#at = start + n;
    // slice() copies into a fresh, unshared buffer the value can own.
    return this.#bytes.slice(start, start + n);
  }
}
