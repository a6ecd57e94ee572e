/**
 * Draining a pipeline from another pipeline: a stage worker feeds an inner
 * pipeline with its tasks while it reads the inner pipeline's results, so
 * results are taken away as fast as tasks come in.
 *
 * Twin of the original's `test/drano.py` ("Handling many tasks"). Run with
 * `deno run --allow-read examples/drano.ts`; it prints 1, 2, ..., 10000, one
 * per line (from the worker).
 *
 * In the original, the main process feeds the inner pipeline and a worker of
 * a second pipeline prints its results. A `Pipeline` object cannot be handed
 * to another thread, so here the inner pipeline lives in the outer stage's
 * worker, which builds it in `doInit()`: a worker can start workers of its
 * own. A function or class target is shipped by its source and cannot import
 * the library, so this stage is a module target (`drano_stage.ts`), which is
 * why the program needs `--allow-read`.
 */
import { Pipeline, Stage } from "../mod.ts";

const drain = new Stage<number, never>(
  new URL("./drano_stage.ts", import.meta.url),
  1,
  { doStopTask: true }, // the stop reaches the worker, which then stops the inner pipeline
);
const pipe = new Pipeline<number, never>(drain);

for (let task = 0; task < 10_000; task++) pipe.put(task);

pipe.put(null);
