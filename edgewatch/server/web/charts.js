// The job page's charts: one uPlot per quantity, stacked, sharing the step axis (zoom, pan
// and cursor move them together), with vertical markers (alerts, now, forecast crossing)
// and horizontal levels (stability ratio 1.0 and the alarm ratio) as DOM elements over
// the plot, so that their text is real text. What each chart plots: chartdata.js.

import { allPositive, clampAbove, clipRunaway, merge, toLog10 } from "./chartdata.js";
import { CHARTS, offNote } from "./chartspec.js";
import { fmt } from "./common.js";

const AXIS_SIZE = 72; // the same y-axis width on every chart keeps the plots aligned
const HEIGHT = 190;
const SYNC_KEY = "edgewatch-steps";
const FLAG_ROWS = 4;
const RATIO_TOP = 4; // the ratio axis reaches at most this times its highest level

// Ticks for a log10 axis: whole decades over a wide range (one label per 30 px at most);
// 1-2-5 or 1-3 steps inside a narrow one.
function decadeSplits(u, axis, min, max) {
  if (!(Number.isFinite(min) && Number.isFinite(max))) return [];
  max = Math.min(max, 308); // 1e309 is Infinity
  const most = Math.max(2, Math.floor(u.bbox.height / devicePixelRatio / 30));
  if (max - min > 4) {
    const every = Math.max(1, Math.ceil((max - min) / most));
    const ticks = [];
    for (let k = Math.ceil(min / every) * every; k <= max; k += every) ticks.push(k);
    return ticks;
  }
  let ticks = [];
  for (const mantissas of [[1], [1, 3], [1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    ticks = [];
    for (let k = Math.floor(min); k <= Math.ceil(max); k++) {
      for (const m of mantissas) {
        const t = Math.log10(m) + k;
        if (t >= min && t <= max) ticks.push(t);
      }
    }
    if (ticks.length >= 3 || ticks.length >= most) break;
  }
  return ticks;
}

export class ChartStack {
  // onView(min, max): the user zoomed or panned; onReset(): double-click / "whole job".
  constructor(container, { onView, onReset }) {
    this.container = container;
    this.onView = onView;
    this.onReset = onReset;
    this.view = null;
    this.markers = [];
    this.levels = [];
    this.charts = [];
    this.syncing = false;
    this.built = new Map(); // chart id -> whether its y axis is log (rebuilt when it changes)
    // The markers' labels sit in a strip above the first chart, in rows, clear of the curves.
    this.strip = document.createElement("div");
    this.strip.className = "flags";
    new ResizeObserver(() => this.resize()).observe(container);
  }

  width() {
    return Math.max(320, this.container.clientWidth);
  }

  // Pixels of the plotting area: the number of buckets worth asking the server for.
  plotWidth() {
    return Math.max(100, this.width() - AXIS_SIZE - 10);
  }

  // span: the job's steps (last - first), which decides what counts as a gap.
  update(sources, view, markers, levels, span) {
    this.view = view;
    this.markers = markers;
    this.levels = levels;
    CHARTS.forEach((spec, i) => {
      const data = merge(sources, spec.series, span);
      const log = Boolean(spec.log) && allPositive(data);
      let clip = null;
      if (spec.clip) {
        clip = clipRunaway(data[0], data[1], log);
        data[1] = clip.ys;
        data[2] = clip.marks;
      } else if (spec.levels) {
        // An alert raised on a ratio above the axis (a diverged job's) is drawn at its top.
        clip = { off: { series: 2, at: clampAbove(data[2], RATIO_TOP * this.ratioLevel()) } };
      }
      let chart = this.charts[i];
      if (!chart || this.built.get(spec.id) !== log) {
        chart?.u.destroy();
        chart?.box.remove();
        chart = this.make(spec, log, i);
        this.charts[i] = chart;
        this.built.set(spec.id, log);
      }
      chart.off = clip ? clip.off : null;
      if (spec.clip) chart.note.textContent = offNote(clip.off, log);
      chart.note.hidden = !chart.note.textContent;
      chart.u.setData(log ? toLog10(data) : data, false);
      chart.u.setScale("x", { min: view.min, max: view.max });
    });
  }

  // The highest level on the ratio chart (1.0 or the alarm ratio).
  ratioLevel() {
    return Math.max(1, ...this.levels.map((l) => l.value));
  }

  // The uPlot instance of a chart (a person can inspect it from the console; tests read
  // its scales and data, and the pixels it drew).
  plot(id) {
    return this.charts.find((c) => c && c.spec.id === id)?.u ?? null;
  }

  make(spec, log, index) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.chart = spec.id;
    const heading = document.createElement("h3");
    heading.textContent = spec.title;
    const note = document.createElement("p");
    note.className = "chart-note";
    note.hidden = true;
    box.append(heading, note);
    const next = this.charts[index + 1]?.box ?? null;
    this.container.insertBefore(box, next);
    if (index === 0) box.append(this.strip);
    const stack = this;
    // 0 to a little over the alarm ratio, or the data's top up to 4x that: a ratio of
    // 1000 at divergence runs off the top instead of flattening everything below it.
    const ratioRange = (u, min, max) => {
      const marks = stack.ratioLevel();
      const top = Math.min(Math.max(max ?? 0, marks * 1.15), marks * RATIO_TOP);
      return [Math.min(0, min ?? 0), 1.04 * top]; // a marker at the top stays whole
    };
    const opts = {
      width: this.width(),
      height: HEIGHT,
      cursor: {
        sync: { key: SYNC_KEY },
        drag: { x: true, y: false, setScale: true },
        bind: {
          dblclick: () => () => {
            stack.onReset();
            return null;
          },
        },
      },
      scales: {
        x: { time: false, auto: false },
        y: spec.levels ? { range: ratioRange } : {},
      },
      axes: [
        { label: index === CHARTS.length - 1 ? "step" : undefined },
        log
          ? { size: AXIS_SIZE, splits: decadeSplits, values: (u, ticks) => ticks.map((t) => fmt(10 ** t, 3)) }
          : { size: AXIS_SIZE, values: (u, ticks) => ticks.map((t) => fmt(t, 3)) },
      ],
      legend: { live: true },
      series: [
        { label: "step", value: (u, v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US")) },
        ...spec.series.map(([label, , , style]) => ({
          label,
          width: 1.5,
          spanGaps: true,
          points: { show: false },
          // Off the scale, the legend says the value that was stored, not the clip.
          value: (u, v, k, idx) => {
            const off = stack.charts[index]?.off;
            if (off && k === off.series && off.at.has(idx)) {
              const stored = off.at.get(idx);
              return stored === null ? "NaN/Inf" : `${fmt(stored)} (off scale)`;
            }
            return fmt(log && v !== null && v !== undefined ? 10 ** v : v);
          },
          ...style,
        })),
      ],
      hooks: {
        setScale: [(u, key) => key === "x" && stack.scaleChanged(u)],
        draw: [(u) => stack.place(u, index === 0)],
      },
    };
    const u = new uPlot(opts, [[], ...spec.series.map(() => [])], box);
    const layer = document.createElement("div");
    layer.className = "overlay";
    u.over.append(layer);
    this.bindWheelAndPan(u);
    return { u, box, layer, spec, note, off: null };
  }

  // A zoom or pan on one chart moves the others, then tells the page (which may fetch
  // the rows behind a downsampled range).
  scaleChanged(u) {
    if (this.syncing) return;
    const { min, max } = u.scales.x;
    if (min === null || max === null) return;
    if (this.view && min === this.view.min && max === this.view.max) return;
    this.view = { min, max };
    this.syncing = true;
    for (const chart of this.charts) {
      if (chart && chart.u !== u) chart.u.setScale("x", { min, max });
    }
    this.syncing = false;
    this.onView(min, max);
  }

  setView(min, max) {
    const first = this.charts[0];
    if (first) first.u.setScale("x", { min, max });
  }

  bindWheelAndPan(u) {
    u.over.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        const { min, max } = u.scales.x;
        const at = u.posToVal(u.cursor.left ?? u.over.clientWidth / 2, "x");
        const factor = event.deltaY < 0 ? 0.75 : 1 / 0.75;
        u.setScale("x", { min: at - (at - min) * factor, max: at + (max - at) * factor });
      },
      { passive: false },
    );
    // Shift+drag pans: caught before uPlot's own mousedown starts a zoom selection.
    u.root.addEventListener(
      "mousedown",
      (event) => {
        if (!event.shiftKey || !u.over.contains(event.target)) return;
        event.stopPropagation();
        event.preventDefault();
        const start = { x: event.clientX, min: u.scales.x.min, max: u.scales.x.max };
        const perPixel = (start.max - start.min) / u.over.clientWidth;
        const move = (e) => {
          const shift = (e.clientX - start.x) * perPixel;
          u.setScale("x", { min: start.min - shift, max: start.max - shift });
        };
        const up = () => {
          window.removeEventListener("mousemove", move);
          window.removeEventListener("mouseup", up);
        };
        window.addEventListener("mousemove", move);
        window.addEventListener("mouseup", up);
      },
      true,
    );
  }

  // Markers and levels, positioned after every redraw (zoom, pan, resize, new data).
  place(u, labelled) {
    const chart = this.charts.find((c) => c && c.u === u);
    if (!chart) return;
    const width = u.over.clientWidth;
    const nodes = [];
    const flags = [];
    for (const m of this.markers) {
      const left = u.valToPos(m.step, "x");
      if (!(left >= 0 && left <= width)) continue;
      const line = document.createElement("div");
      line.className = `vline ${m.cls}`;
      line.style.left = `${left}px`;
      line.title = m.title;
      line.dataset.step = m.step;
      nodes.push(line);
      if (labelled && m.label) flags.push({ m, left });
    }
    if (chart.spec.levels) {
      for (const level of this.levels) {
        const top = u.valToPos(level.value, "y");
        if (!(top >= 0 && top <= u.over.clientHeight)) continue;
        const line = document.createElement("div");
        line.className = `hline ${level.cls}`;
        line.style.top = `${top}px`;
        line.dataset.level = level.value;
        if (top < 16) line.classList.add("label-below");
        const label = document.createElement("span");
        label.textContent = level.label;
        line.append(label);
        nodes.push(line);
      }
    }
    chart.layer.replaceChildren(...nodes);
    if (labelled) this.placeFlags(u, flags);
  }

  // Labels in the strip, left to right, each in the first row where it fits (at most
  // FLAG_ROWS rows; a label that fits nowhere is left out, its line and tooltip stay).
  placeFlags(u, flags) {
    const offset = u.over.getBoundingClientRect().left - this.strip.getBoundingClientRect().left;
    const width = u.over.clientWidth;
    const rowEnds = [];
    this.strip.replaceChildren();
    flags.sort((a, b) => a.left - b.left);
    for (const { m, left } of flags) {
      const flag = document.createElement("div");
      flag.className = `flag ${m.cls}`;
      flag.textContent = m.label;
      flag.title = m.title;
      Object.assign(flag.dataset, m.data || {});
      this.strip.append(flag);
      const w = flag.offsetWidth;
      const leftward = left + w > width; // near the right edge: on the line's left
      const from = offset + (leftward ? left - w : left);
      const row = rowEnds.findIndex((end) => from >= end + 4);
      const r = row >= 0 ? row : rowEnds.length;
      if (r >= FLAG_ROWS) {
        flag.remove();
        continue;
      }
      rowEnds[r] = from + w;
      flag.style.left = `${from}px`;
      flag.style.top = `${r * 18}px`;
    }
    this.strip.style.height = `${Math.max(1, rowEnds.length) * 18}px`;
  }

  resize() {
    for (const chart of this.charts) {
      if (chart) chart.u.setSize({ width: this.width(), height: HEIGHT });
    }
  }

  // What each chart draws: its series and how many points each has (tests read it; a
  // person can call it from the console).
  summary() {
    return this.charts.filter(Boolean).map(({ u, spec }) => ({
      chart: spec.id,
      log: this.built.get(spec.id),
      series: spec.series.map(([label], k) => ({
        label,
        points: u.data[k + 1].filter((y) => y !== null && y !== undefined).length,
      })),
      markers: [...u.over.querySelectorAll(".vline")].length,
      x: [u.scales.x.min, u.scales.x.max],
      y: this.built.get(spec.id) ? [10 ** u.scales.y.min, 10 ** u.scales.y.max] : [u.scales.y.min, u.scales.y.max],
    }));
  }
}
