// What each chart plots, prepared from the API's columns: the sources merged onto one step
// axis, the sharpness estimates broken where they were not measured, a diverged loss
// clipped so that the range before the divergence stays readable, and log10 for log axes.
//
// Two kinds of empty cell in uPlot's data, on purpose: `undefined` is a row that belongs to
// another series (uPlot joins across it), `null` is a gap (a series with spanGaps: false
// breaks its line there).

// A loss above RUNAWAY x its running minimum (the lowest finite loss so far, that point
// included) is off the scale. A healthy run's loss stays within a factor of a few of its
// running minimum, and a catapult or a loss spike reaches 2-10x (Kalra & Barkeshli 2024);
// past 1000x the run has diverged and the next decades say nothing that the marker does
// not. Scaling into them (a diverged loss reaches 1e30 and beyond) flattens every spike
// before the divergence into a few pixels.
export const RUNAWAY = 1e3;

// Two estimates are joined by a line only when the gap between them is at most GAP_FACTOR
// x the job's median gap (a skipped or postponed estimate breaks the line) and at most
// JOIN_SHARE of the job's steps (fewer than 20 estimates across the job are samples, not
// a curve: a line between them would draw a trend nobody measured).
export const GAP_FACTOR = 2;
export const JOIN_SHARE = 0.05;

// Rows of every source merged in step order, one row per stored point (a step that two
// sources share gives two rows): no point is dropped or invented. A series whose style has
// `spanGaps: false` is null on every row between two of its points that are too far apart
// (a row midway when no other series has one there), so that uPlot's gap runs from the one
// point to the other and the line between them is not drawn.
export function merge(sources, specs, span) {
  const rows = [];
  const gaps = specs.map(() => []);
  specs.forEach(([, source, column, style], k) => {
    const table = sources[source];
    if (!table || !table.step) return;
    const ys = table[column] || [];
    table.step.forEach((x, i) => rows.push([x, k, ys[i] ?? null]));
    if (style && style.spanGaps === false) gaps[k] = breaks(table.step, ys, span);
    for (const [a, b] of gaps[k]) rows.push([(a + b) / 2, k, null]);
  });
  rows.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const xs = rows.map((r) => r[0]);
  const data = [xs, ...specs.map(() => new Array(rows.length).fill(undefined))];
  rows.forEach(([, k, y], i) => {
    data[k + 1][i] = y;
  });
  gaps.forEach((between, k) => {
    let g = 0;
    xs.forEach((x, i) => {
      while (g < between.length && x >= between[g][1]) g++;
      if (g < between.length && x > between[g][0] && data[k + 1][i] === undefined) data[k + 1][i] = null;
    });
  });
  return data;
}

// [from, to] steps between two measured points that a line must not join.
function breaks(steps, ys, span) {
  const xs = steps.filter((x, i) => ys[i] !== null && ys[i] !== undefined);
  const gaps = xs.slice(1).map((x, i) => x - xs[i]);
  if (!gaps.length) return [];
  const sorted = [...gaps].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const longest = Math.min(GAP_FACTOR * median, JOIN_SHARE * Math.max(span || 0, 1));
  const out = [];
  gaps.forEach((gap, i) => {
    if (gap > longest) out.push([xs[i], xs[i + 1]]);
  });
  return out;
}

// The loss as plotted: values past RUNAWAY x the running minimum, and the non-finite ones
// (stored as null, after the first finite loss), are off the scale. The loss line is
// clipped at the top of the axis there, and a second series (`marks`) puts a marker at the
// top for each. On a loss that is not positive (a linear axis) only non-finite values are
// marked: a ratio to the running minimum means nothing there.
// Returns {ys, marks, off: null or {count, first (step), highest, at (index -> stored
// value, null: non-finite)}}.
export function clipRunaway(xs, ys, positive) {
  const off = [];
  let running = Infinity;
  let seenFinite = false;
  let keptMax = -Infinity;
  let keptMin = Infinity;
  ys.forEach((y, i) => {
    if (y === undefined) return;
    if (y === null) {
      if (seenFinite) off.push(i);
      return;
    }
    seenFinite = true;
    running = Math.min(running, y);
    if (positive && y > RUNAWAY * running) {
      off.push(i);
      return;
    }
    keptMax = Math.max(keptMax, y);
    keptMin = Math.min(keptMin, y);
  });
  const marks = new Array(ys.length).fill(undefined);
  if (!off.length || !Number.isFinite(keptMax)) return { ys, marks, off: null };
  // The top of the axis: a little above the highest value kept (in decades on a log axis).
  const top = positive
    ? keptMax * 10 ** Math.max(0.1, 0.06 * Math.log10(keptMax / keptMin))
    : keptMax + Math.max(0.06 * (keptMax - keptMin), 1e-9);
  const clipped = ys.slice();
  let highest = null;
  const at = new Map();
  for (const i of off) {
    marks[i] = top;
    at.set(i, ys[i]);
    if (ys[i] !== null) {
      highest = highest === null ? ys[i] : Math.max(highest, ys[i]);
      clipped[i] = top;
    }
  }
  return { ys: clipped, marks, off: { series: 1, count: off.length, first: xs[off[0]], highest, at } };
}

// Values above `top` set to it, in place; returns index -> the value it had.
export function clampAbove(ys, top) {
  const at = new Map();
  ys.forEach((y, i) => {
    if (y !== null && y !== undefined && y > top) {
      at.set(i, y);
      ys[i] = top;
    }
  });
  return at;
}

// A "log" chart plots log10 of its values on a linear axis labelled in powers of ten:
// uPlot's own log axis cannot label values past 1e17, and a diverging loss reaches 1e300.
export function toLog10(data) {
  return data.map((ys, k) => (k === 0 ? ys : ys.map((y) => (y === null || y === undefined ? y : Math.log10(y)))));
}

export function allPositive(data) {
  let any = false;
  for (const ys of data.slice(1)) {
    for (const y of ys) {
      if (y === null || y === undefined) continue;
      if (!(y > 0)) return false;
      any = true;
    }
  }
  return any;
}
