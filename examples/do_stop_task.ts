/**
 * The stop task: with `doStopTask`, each worker's `doTask` is called once more
 * with `null` when the stop request reaches it, after its last task.
 *
 * Twin of the original's `test/do_stop_task1.py`, which prints `None` last.
 * Run with `deno run examples/do_stop_task.ts`; it prints 0, 1, ..., 9, then
 * `null`, one per line.
 */
import { OrderedWorker, Pipeline, Stage } from "../mod.ts";

/** Prints each task, and the stop task (`null`). */
class Echo extends OrderedWorker<number | null, never> {
  doTask(value: number | null): void {
    console.log(value);
  }
}

const stage = new Stage(Echo, 1, { doStopTask: true });
const pipe = new Pipeline<number, never>(stage);

for (let number = 0; number < 10; number++) pipe.put(number);

pipe.put(null);
