/**
 * Counts how many turns of an empty loop keep the CPU busy for one second, to
 * feed `multiwork.ts`.
 *
 * Twin of the original's `test/count_nullops.py` ("Multiple workers per
 * stage"). Run with `deno run examples/count_nullops.ts`; it prints one
 * positive integer. The original samples until a run takes a second; this one
 * stops at a quarter of a second and scales up, so it ends in about half a
 * second. Then, as in the original's documentation:
 *
 * ```sh
 * deno run examples/count_nullops.ts | xargs time deno run examples/multiwork.ts
 * ```
 */

/** Turns of an empty loop that take `duration` seconds, sampled up to `maxSample` seconds. */
function countNullOps(duration: number, maxSample = 0.25): number {
  let amount = 1;
  let elapsed = 0;
  for (;;) {
    const begin = performance.now();
    for (let i = 0; i < amount; i++) {
      // A null operation.
    }
    elapsed = (performance.now() - begin) / 1000;
    if (elapsed > maxSample || amount >= 2 ** 52) break;
    amount *= 2;
  }
  return Math.floor((amount / elapsed) * duration);
}

console.log(countNullOps(1.0));
