/**
 * A bound on a wait that could hang: `promise`, or a rejection naming `what`
 * after `ms`. Not a timing check: the bound is far above what the wait needs,
 * so that a hang fails the test instead of stalling the suite.
 *
 * @module
 */

/** Settles as `promise` does, or rejects after `ms` saying that `what` hung. */
export function within<T>(
  promise: Promise<T>,
  what: string,
  ms = 10_000,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: still pending after ${ms} ms (a hang)`)),
      ms,
    );
  });
  return Promise.race([promise, hung]).finally(() => clearTimeout(timer));
}

/** Waits until `check()` holds, looking every `everyMs`; rejects naming `what` after `ms` (a hang guard). */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 30_000,
  everyMs = 20,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
