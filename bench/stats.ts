// The few statistics the benchmark scripts quote: medians and ranges over passes or rounds.

/** The median of `values` (the mean of the middle two for an even count), or undefined if empty. */
export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

/** Median, minimum and maximum of a non-empty list. */
export interface Spread {
  /** The median. */
  median: number;
  /** The smallest value. */
  min: number;
  /** The largest value. */
  max: number;
  /** How many values. */
  count: number;
}

/** The median and range of `values`, or undefined if empty. */
export function spread(values: readonly number[]): Spread | undefined {
  const m = median(values);
  if (m === undefined) return undefined;
  return {
    median: m,
    min: Math.min(...values),
    max: Math.max(...values),
    count: values.length,
  };
}
