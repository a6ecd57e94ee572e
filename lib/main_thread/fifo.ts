/**
 * A first-in, first-out queue whose `push` and `shift` cost O(1) at any
 * length: a linked list of fixed-size chunks. An array's `shift()` copies the
 * rest of a large array (V8 trims only small ones in place), which made a
 * queue of hundreds of thousands of waiting tasks quadratic.
 *
 * One thread owns a Fifo; it is not shared memory.
 *
 * @module
 */

/** Entries per chunk: large enough that chunk changes are rare, small enough to waste little. */
const CHUNK = 1024;

interface Chunk<T> {
  readonly items: (T | undefined)[];
  next: Chunk<T> | null;
}

/** A FIFO queue with O(1) `push`, `shift` and `first`. */
export class Fifo<T> {
  #head: Chunk<T>;
  #tail: Chunk<T>;
  /** Index of the first entry in the head chunk. */
  #from = 0;
  /** Index after the last entry in the tail chunk. */
  #to = 0;
  #length = 0;

  constructor() {
    this.#head = this.#tail = { items: new Array(CHUNK), next: null };
  }

  /** How many entries wait. */
  get length(): number {
    return this.#length;
  }

  /** The first entry, or undefined when empty. */
  get first(): T | undefined {
    return this.#length === 0 ? undefined : this.#head.items[this.#from];
  }

  /** The last entry, or undefined when empty. */
  get last(): T | undefined {
    return this.#length === 0 ? undefined : this.#tail.items[this.#to - 1];
  }

  /** Adds `item` at the end. */
  push(item: T): void {
    if (this.#to === CHUNK) {
      const chunk: Chunk<T> = { items: new Array(CHUNK), next: null };
      this.#tail.next = chunk;
      this.#tail = chunk;
      this.#to = 0;
    }
    this.#tail.items[this.#to++] = item;
    this.#length++;
  }

  /** Removes and returns the first entry, or undefined when empty. */
  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const head = this.#head;
    const item = head.items[this.#from];
    head.items[this.#from++] = undefined; // no reference kept for the GC
    if (--this.#length === 0) {
      // Empty: start the one chunk left over from its beginning.
      this.#head = this.#tail;
      this.#from = this.#to = 0;
    } else if (this.#from === CHUNK) {
      this.#head = head.next!;
      this.#from = 0;
    }
    return item;
  }

  /** Removes every entry and returns them in order. */
  clear(): T[] {
    const items: T[] = [];
    while (this.#length !== 0) items.push(this.shift()!);
    return items;
  }
}
