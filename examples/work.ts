/**
 * A module target: the default export is the task function. Module targets
 * may import anything; run scripts that use them with `--allow-read`.
 */
export default function decrement(task: number): number {
  return task - 1;
}
