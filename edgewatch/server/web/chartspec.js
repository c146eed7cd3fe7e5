// The job page's charts: which quantities, from which API tables, drawn how.

import { RUNAWAY } from "./chartdata.js";
import { fmt, fmtSteps } from "./common.js";

const COLORS = {
  loss: "#2563eb",
  lr: "#0f766e",
  planned: "#0f766e",
  grad: "#7c3aed",
  sharpness: "#dc2626",
  threshold: "#111827",
  ratio: "#ea580c",
  off: "#b91c1c",
  alert: "#111827",
};

// Markers only, no line: a value at one step (an alert's ratio, a forecast, off the scale).
const marker = (color, size, fill = "#fff") => ({
  stroke: color, // the legend's swatch; paths: none, so no line is drawn
  paths: () => null,
  points: { show: true, size, width: 2, stroke: color, fill },
});
// Estimates: a point each, a line only between estimates close enough (chartdata.js).
const estimates = (color) => ({ stroke: color, spanGaps: false, points: { show: true, size: 5 } });

// id: chart id; series: [label, source table, column, style]; log: y on a log scale when
// every value is positive; levels: the stability ratio's horizontal lines; clip: values
// past the running minimum's RUNAWAY times go off the scale (chartdata.js clipRunaway),
// marked by the series after the first.
export const CHARTS = [
  {
    id: "loss",
    title: "loss",
    log: true,
    clip: true,
    series: [
      ["loss", "steps", "loss", { stroke: COLORS.loss }],
      ["off scale", null, null, marker(COLORS.off, 7, COLORS.off)],
    ],
  },
  {
    id: "lr",
    title: "learning rate (actual, and planned ahead)",
    series: [
      ["LR", "steps", "lr", { stroke: COLORS.lr }],
      ["planned LR", "plan", "lr", { stroke: COLORS.planned, dash: [6, 4] }],
    ],
  },
  { id: "grad", title: "gradient norm (before clipping)", log: true, series: [["grad norm", "steps", "grad_norm", { stroke: COLORS.grad }]] },
  {
    id: "sharpness",
    title: "sharpness against its stability threshold",
    log: true,
    series: [
      ["sharpness", "sharpness", "value", estimates(COLORS.sharpness)],
      ["threshold", "steps", "stability_threshold", { stroke: COLORS.threshold, width: 1 }],
      ["planned threshold", "plan", "stability_threshold", { stroke: COLORS.threshold, width: 1, dash: [6, 4] }],
    ],
  },
  {
    id: "ratio",
    title: "stability ratio (sharpness / threshold)",
    levels: true,
    series: [
      ["stability ratio", "sharpness", "stability_ratio", estimates(COLORS.ratio)],
      // The ratio each alert was raised on: the forecast's, at the planned LR.
      ["alert ratio (planned LR)", "alerts", "stability_ratio", marker(COLORS.alert, 10)],
      ["forecast crossing", "crossing", "stability_ratio", marker(COLORS.sharpness, 12)],
    ],
  },
];

// The loss chart's note on what is off its scale.
export function offNote(off, log) {
  if (!off) return "";
  const what = log ? `NaN/Inf or above ${fmt(RUNAWAY)}× the running minimum` : "NaN/Inf";
  const highest = off.highest === null ? "" : `, up to ${fmt(off.highest, 3)}`;
  return `▲ ${fmtSteps(off.count)} steps off the scale (${what}${highest}), drawn at its top; the first at step ${fmtSteps(off.first)}.`;
}
