// One job's page: latest values and forecast, the charts over steps, alerts, live updates.
//
// Data: the whole job once (the server cuts long ranges down to min/max per pixel), then
// each poll appends what is new (steps after the last one shown, sharpness after the
// last estimate shown). A zoom into a downsampled range fetches that range in detail.

import { ChartStack } from "./charts.js";
import {
  POLL_MS,
  apiJobPath,
  el,
  fmt,
  fmtAgo,
  fmtSteps,
  fmtTime,
  getJSON,
  poll,
  showError,
  stateBadge,
} from "./common.js";

const jobId = decodeURIComponent(location.pathname.replace(/^\/jobs\//, ""));
const api = apiJobPath(jobId);
const STEP_COLUMNS = ["step", "lr", "loss", "grad_norm", "stability_threshold"];
const SHARPNESS_COLUMNS = ["step", "value", "stability_threshold", "stability_ratio"];

const page = {
  job: null,
  data: null, // the whole job: {steps, sharpness, first_step, last_step}
  detail: null, // a zoomed range fetched in detail, or null
  plan: null,
  alerts: [],
  view: null, // {min, max} in steps, null: follow the job
};
let charts = null;

function seriesPath(start, end, tables) {
  const query = new URLSearchParams({ points: String(charts.plotWidth()) });
  if (start !== undefined) query.set("start", String(Math.floor(start)));
  if (end !== undefined) query.set("end", String(Math.ceil(end)));
  if (tables) query.set("tables", tables);
  return `${api}/series?${query}`;
}

function lastOf(table) {
  return table.step.length ? table.step[table.step.length - 1] : null;
}

function append(target, tail, columns) {
  for (const c of columns) target[c] = target[c].concat(tail[c] || []);
  target.rows += tail.rows;
  target.downsampled = target.downsampled || tail.downsampled;
}

// How far the step axis reaches: the job, and while it runs, ahead of its last step by a
// fifth of the job as far as the plan goes (at least 10 steps), and to the forecast
// crossing (plus a quarter) when it is no further ahead than the job is long: a crossing
// is drawn where it is forecast even without a plan.
function fullView() {
  const first = page.data.first_step ?? 0;
  const last = page.job.last_step ?? page.data.last_step ?? first;
  const planEnd = page.plan?.curve.step.length ? page.plan.curve.step.at(-1) : last;
  let ahead = Math.min(last + Math.max(10, 0.2 * (last - first)), Math.max(planEnd, last + 10));
  const toGo = page.job.analysis.steps_to_instability;
  if (toGo !== null && toGo !== undefined && toGo <= Math.max(100, last - first)) {
    ahead = Math.max(ahead, last + 1.25 * toGo);
  }
  if (page.job.status !== "running") ahead = last;
  return { min: first, max: Math.max(ahead, first + 1) };
}

function markers() {
  const out = page.alerts.map((a) => {
    const advice = [];
    if (a.recommended_lr !== null) advice.push(`lr ≤ ${fmt(a.recommended_lr, 3)}`);
    if (a.recommended_warmup_steps) advice.push(`warmup ${fmtSteps(a.recommended_warmup_steps)} steps`);
    if (a.resume_step !== null && a.resume_step !== undefined) advice.push(`resume ≤ step ${fmtSteps(a.resume_step)}`);
    return {
      step: a.step,
      cls: `alert-marker state-${a.state}`,
      label: [a.state, ...advice].join(" · "),
      title: `step ${fmtSteps(a.step)}: ${a.state}\n${a.reason}` + (advice.length ? `\nrecommended: ${advice.join(", ")}` : ""),
      data: { state: a.state, step: String(a.step), recommendedLr: String(a.recommended_lr) },
    };
  });
  const job = page.job;
  if (job.last_step !== null && job.status === "running") {
    out.push({ step: job.last_step, cls: "now", label: "now", title: `last step ${fmtSteps(job.last_step)}` });
  }
  const toGo = job.analysis.steps_to_instability;
  if (toGo !== null && toGo > 0 && job.last_step !== null) {
    out.push({
      step: job.last_step + toGo,
      cls: "crossing",
      label: `forecast crossing (${fmtSteps(toGo)} steps ahead)`,
      title: job.analysis.reason,
    });
  }
  return out;
}

// The ratio chart's markers: each alert's own ratio (the forecast's, at the planned LR),
// and where the forecast crosses its alarm ratio.
function ratioMarks() {
  const alerts = page.alerts.filter((a) => a.stability_ratio !== null);
  const a = page.job.analysis;
  const crossing = { step: [], stability_ratio: [] };
  if (a.steps_to_instability !== null && a.steps_to_instability > 0 && page.job.last_step !== null) {
    crossing.step.push(page.job.last_step + a.steps_to_instability);
    crossing.stability_ratio.push(a.alarm_ratio ?? 1);
  }
  return { alerts: { step: alerts.map((x) => x.step), stability_ratio: alerts.map((x) => x.stability_ratio) }, crossing };
}

function levels() {
  const alarm = page.job.analysis.alarm_ratio;
  const out = [{ value: 1, cls: "edge", label: "1.0: the edge of stability" }];
  if (alarm && Math.abs(alarm - 1) > 1e-9) out.push({ value: alarm, cls: "alarm", label: `alarm ratio ${fmt(alarm, 3)}` });
  return out;
}

function draw() {
  if (!charts || !page.data) return;
  const shown = page.detail ?? page.data;
  const plan = page.plan ? page.plan.curve : null;
  const view = page.view ?? fullView();
  const sources = { steps: shown.steps, sharpness: shown.sharpness, plan, ...ratioMarks() };
  const span = (page.data.last_step ?? 0) - (page.data.first_step ?? 0);
  charts.update(sources, view, markers(), levels(), span);
  const down = ["steps", "sharpness"].filter((t) => shown[t].downsampled);
  document.getElementById("detail").textContent = down.length
    ? `${down.join(" and ")}: min/max of ${fmtSteps(shown[down[0]].rows)} rows per pixel`
    : "";
}

async function loadAll() {
  const [data, plan, alerts] = await Promise.all([getJSON(seriesPath()), getJSON(`${api}/plan`), getJSON(`${api}/alerts`)]);
  page.data = data;
  page.plan = plan;
  page.alerts = alerts;
}

// What arrived since the last poll: new steps, new sharpness estimates, the plan, alerts.
async function loadNew(job) {
  const data = page.data;
  const lastStep = lastOf(data.steps);
  const lastSharp = lastOf(data.sharpness);
  const wanted = [getJSON(`${api}/plan`), getJSON(`${api}/alerts`)];
  const stepsNew = job.last_step !== null && (lastStep === null || job.last_step > lastStep);
  const sharpNew = job.sharpness_step !== null && (lastSharp === null || job.sharpness_step > lastSharp);
  wanted.push(stepsNew ? getJSON(seriesPath(lastStep === null ? undefined : lastStep + 1, undefined, "steps")) : null);
  wanted.push(sharpNew ? getJSON(seriesPath(lastSharp === null ? undefined : lastSharp + 1, undefined, "sharpness")) : null);
  const [plan, alerts, stepsTail, sharpTail] = await Promise.all(wanted);
  page.plan = plan;
  page.alerts = alerts;
  for (const target of [page.data, page.detail].filter(Boolean)) {
    if (stepsTail) append(target.steps, stepsTail.steps, STEP_COLUMNS);
    if (sharpTail) append(target.sharpness, sharpTail.sharpness, SHARPNESS_COLUMNS);
  }
  data.last_step = job.last_step;
  if (data.first_step === null) data.first_step = stepsTail?.first_step ?? sharpTail?.first_step ?? null;
  // Appended tails add up: past three points per pixel, fetch the whole job again.
  if (data.steps.step.length > 6 * charts.plotWidth()) page.data = await getJSON(seriesPath());
}

async function tick() {
  let job;
  try {
    job = await getJSON(api);
  } catch (error) {
    if (/: 404 /.test(error.message)) showError(error.message);
    throw error;
  }
  const changed = !page.job || job.records !== page.job.records || job.status !== page.job.status;
  page.job = job;
  renderSummary(job);
  if (!charts) return;
  const first = !page.data;
  if (first) await loadAll();
  else if (changed) await loadNew(job);
  else return;
  renderAlerts();
  draw();
  // When the page became useful: bench/web.py reads it (performance.getEntriesByName).
  if (first) performance.mark("edgewatch-charts-drawn");
}

let viewTimer = null;
function onView(min, max) {
  page.view = { min, max };
  clearTimeout(viewTimer);
  viewTimer = setTimeout(async () => {
    const whole = page.data;
    if (!whole.steps.downsampled && !whole.sharpness.downsampled) return;
    page.detail = await getJSON(seriesPath(min, max));
    draw();
  }, 200);
}

function onReset() {
  page.view = null;
  page.detail = null;
  draw();
}

function card(label, value, title) {
  return el("div", { class: "card", title }, el("span", { class: "label", text: label }), el("span", { class: "value", text: value }));
}

// The pre-flight the job attached with (edgewatch.preflight): verdict, margin, fix.
function preflightCard(p) {
  if (!p) return [];
  const margin = p.margin === null ? "" : `, margin ×${fmt(p.margin, 3)}`;
  const fix = p.fix ? ` · fix: peak LR ${fmt(p.fix.peak_lr, 3)}, warmup ${fmtSteps(p.fix.warmup_steps)}` : "";
  const c = card("pre-flight", `${p.verdict}${margin}${fix}`, p.reason);
  c.id = "preflight";
  c.dataset.verdict = p.verdict;
  return [c];
}

function renderSummary(job) {
  const a = job.analysis;
  document.title = `edgewatch: ${job.job_id}`;
  document.getElementById("job-id").textContent = job.job_id;
  document.getElementById("state").replaceChildren(stateBadge(a.state));
  const status = document.getElementById("status");
  status.textContent = job.status;
  status.className = `status status-${job.status}`;
  document.getElementById("summary").replaceChildren(
    card("step", fmtSteps(job.last_step)),
    card("loss", fmt(job.loss)),
    card("learning rate", fmt(job.lr)),
    card("grad norm", fmt(job.grad_norm)),
    card("sharpness", fmt(job.sharpness), job.sharpness_step !== null ? `measured at step ${job.sharpness_step}` : ""),
    card("threshold", fmt(job.stability_threshold)),
    card("stability ratio", fmt(job.stability_ratio, 3)),
    card("steps to instability", a.steps_to_instability === null ? "none forecast" : fmtSteps(a.steps_to_instability)),
    card("recommended LR", a.recommended_lr === null ? "–" : `≤ ${fmt(a.recommended_lr, 3)}`),
    a.resume_step !== null && a.resume_step !== undefined
      ? card("resume from", `checkpoint ≤ step ${fmtSteps(a.resume_step)}`, "the last checkpoint at or before the last healthy step")
      : card("recommended warmup", a.recommended_warmup_steps ? `${fmtSteps(a.recommended_warmup_steps)} steps` : "–"),
    card("last seen", fmtAgo(job.last_seen), fmtTime(job.last_seen)),
    ...preflightCard(job.preflight),
  );
  document.getElementById("forecast").replaceChildren(stateBadge(a.state), " ", a.reason || "");
  renderCurvature(job);
  const optimizer = Object.entries(job.optimizer || {})
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
  const info = [
    ["status", job.status],
    ["host", job.host || "–"],
    ["world size", String(job.world_size)],
    ["optimizer", optimizer],
    ["planned LR", a.planned_lr ? `from the scheduler${page.plan?.source ? ` (${page.plan.source})` : ""}` : "none sent"],
    ["total steps", fmtSteps(job.total_steps)],
    ["records", fmtSteps(job.records) + (job.dropped ? ` (${fmtSteps(job.dropped)} dropped by the client)` : "")],
    ["started", fmtTime(job.started_at)],
    ["ended", fmtTime(job.ended_at)],
  ];
  document.getElementById("info").replaceChildren(...info.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

// Fewer estimates than this and the page says why, and which option gives more.
const FEW_ESTIMATES = 20;

// How many sharpness estimates the job got, what its budget allowed, and why so few.
function renderCurvature(job) {
  const line = document.getElementById("curvature");
  line.hidden = job.estimates === undefined; // a daemon that does not say
  if (line.hidden) return;
  const n = job.estimates;
  const wall = (job.last_seen ?? 0) - (job.started_at ?? 0);
  const spent = wall > 0 ? `, ${fmt((100 * job.curvature_seconds) / wall, 2)}% spent` : "";
  const budget = job.budget === null ? "" : ` · budget ${fmt(100 * job.budget, 3)}% of training time${spent}`;
  const parts = [
    el("strong", { text: `${fmtSteps(n)} sharpness estimate${n === 1 ? "" : "s"}` }),
    ` by step ${fmtSteps(job.last_step)}${budget}.`,
  ];
  if (n < FEW_ESTIMATES) {
    const why = [n === 0 ? " None: the client measures sharpness only with a probe (probe= in edgewatch.attach)." : " Few: estimates are paced to stay within the budget."];
    if (job.settle_steps) why.push(` Adam-type optimizers: the forecast ignores estimates before step ${fmtSteps(job.settle_steps)} (the second moment settles).`);
    why.push(" More: raise ");
    parts.push(...why, el("code", { text: "budget=" }), " in ", el("code", { text: "edgewatch.attach" }), " (HF Trainer, Lightning: ", el("code", { text: "EdgewatchCallback(budget=…)" }), ").");
  }
  line.dataset.estimates = String(n);
  line.replaceChildren(...parts);
}

function renderAlerts() {
  const rows = [...page.alerts].reverse().map((a) =>
    el(
      "tr",
      { dataset: { step: String(a.step), state: a.state } },
      el("td", { class: "num", text: fmtSteps(a.step) }),
      el("td", {}, stateBadge(a.state)),
      el("td", { class: "num", text: a.steps_to_instability === null ? "–" : fmtSteps(a.steps_to_instability) }),
      el("td", { class: "num", text: fmt(a.stability_ratio, 3) }),
      el("td", { class: "num", text: a.recommended_lr === null ? "–" : `≤ ${fmt(a.recommended_lr, 3)}` }),
      el("td", { class: "num", text: a.recommended_warmup_steps ? fmtSteps(a.recommended_warmup_steps) : "–" }),
      el("td", { text: a.reason }),
      el("td", { text: fmtTime(a.wall_time) }),
    ),
  );
  document.querySelector("#alerts tbody").replaceChildren(...rows);
  document.getElementById("no-alerts").hidden = rows.length > 0;
}

if (typeof uPlot === "undefined") {
  showError(
    "The charting library (uPlot) is missing from this installation, so the charts cannot be drawn. " +
      "Reinstall edgewatch: its build fetches uPlot from the npm registry into edgewatch/server/web/vendor/.",
  );
} else {
  charts = new ChartStack(document.getElementById("charts"), { onView, onReset });
  document.getElementById("reset").addEventListener("click", onReset);
}
window.edgewatch = { page, charts: () => (charts ? charts.summary() : []), plot: (id) => charts?.plot(id) ?? null };
const stop = poll(tick, document.getElementById("live"), POLL_MS);
window.addEventListener("pagehide", stop);
