/**
 * The worker of `drano.ts`'s stage (a module target, not a program): it runs
 * an inner pipeline, feeds it each task, and prints the inner results as they
 * come, concurrently.
 */
import { Pipeline, UnorderedStage, UnorderedWorker } from "../mod.ts";

/** The inner pipeline's work: shipped to the inner workers by its source. */
function increment(value: number): number {
  return value + 1;
}

/** Feeds its tasks to an inner pipeline and prints what comes out of it. */
export default class Drain extends UnorderedWorker<number | null, never> {
  #inner!: Pipeline<number, number>;
  #printing!: Promise<void>;

  override doInit(): void {
    this.#inner = new Pipeline(new UnorderedStage(increment));
    // Read the results while tasks go in: whenever a `put` has to wait for
    // room, this loop runs and makes the room.
    this.#printing = this.#printResults();
  }

  async #printResults(): Promise<void> {
    for await (const result of this.#inner.results()) console.log(result);
  }

  async doTask(task: number | null): Promise<void> {
    // Waits only while the inner pipeline is full.
    await this.#inner.put(task);
    if (task === null) {
      // The stop task (doStopTask): the inner pipeline stops too; wait for it.
      await this.#printing;
      await this.#inner.done;
    }
  }
}
