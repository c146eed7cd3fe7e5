// The jobs page: every job the daemon knows, its forecast state, sortable and filterable,
// refreshed every POLL_MS.

import {
  SEVERITY,
  STATES,
  el,
  fmt,
  fmtAgo,
  fmtSteps,
  getJSON,
  jobPagePath,
  poll,
  stateBadge,
} from "./common.js";

const view = { sortKey: "state", descending: true, text: "", states: new Set(STATES), finished: true };
let jobs = [];

// One row's values, flat, for sorting and display.
function row(job) {
  return {
    job_id: job.job_id,
    state: job.analysis.state,
    status: job.status,
    last_step: job.last_step,
    loss: job.loss,
    stability_ratio: job.stability_ratio,
    steps_to_instability: job.analysis.steps_to_instability,
    recommended_lr: job.analysis.recommended_lr,
    last_seen: job.last_seen,
    reason: job.analysis.reason,
  };
}

function compare(a, b) {
  const key = view.sortKey;
  let x = a[key];
  let y = b[key];
  if (key === "state") {
    x = SEVERITY[x] ?? -1;
    y = SEVERITY[y] ?? -1;
  }
  // Missing values sort last whichever the direction; ties by most recently seen.
  if (x === null || x === undefined) return y === null || y === undefined ? b.last_seen - a.last_seen : 1;
  if (y === null || y === undefined) return -1;
  const order = typeof x === "string" ? x.localeCompare(y) : x - y;
  return (view.descending ? -order : order) || b.last_seen - a.last_seen;
}

function visible(r) {
  if (!view.states.has(r.state)) return false;
  if (!view.finished && r.status !== "running") return false;
  return !view.text || r.job_id.toLowerCase().includes(view.text);
}

function render() {
  const rows = jobs.map(row).filter(visible).sort(compare);
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { dataset: { jobId: r.job_id, state: r.state }, class: `row-${r.state}` },
        el("td", {}, el("a", { href: jobPagePath(r.job_id), text: r.job_id })),
        el("td", { title: r.reason }, stateBadge(r.state)),
        el("td", { class: `status status-${r.status}`, text: r.status }),
        el("td", { class: "num", text: fmtSteps(r.last_step) }),
        el("td", { class: "num", text: fmt(r.loss) }),
        el("td", { class: "num", text: fmt(r.stability_ratio, 3) }),
        el("td", { class: "num", text: fmtSteps(r.steps_to_instability) }),
        el("td", { class: "num", text: fmt(r.recommended_lr, 3) }),
        el("td", { title: new Date(r.last_seen * 1000).toLocaleString(), text: fmtAgo(r.last_seen) }),
      ),
    ),
  );
  document.getElementById("empty").hidden = jobs.length > 0;
  document.getElementById("count").textContent = `${rows.length} of ${jobs.length} jobs`;
  for (const th of document.querySelectorAll("#jobs th")) {
    const sorted = th.dataset.key === view.sortKey;
    th.setAttribute("aria-sort", sorted ? (view.descending ? "descending" : "ascending") : "none");
  }
}

function setUp() {
  const states = document.getElementById("filter-state");
  for (const state of STATES) {
    const box = el("input", { type: "checkbox", value: state, checked: "" });
    box.addEventListener("change", () => {
      box.checked ? view.states.add(state) : view.states.delete(state);
      render();
    });
    states.append(el("label", {}, box, stateBadge(state)));
  }
  document.getElementById("filter-text").addEventListener("input", (event) => {
    view.text = event.target.value.trim().toLowerCase();
    render();
  });
  document.getElementById("show-finished").addEventListener("change", (event) => {
    view.finished = event.target.checked;
    render();
  });
  document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const th of document.querySelectorAll("#jobs th")) {
    th.tabIndex = 0;
    const sortBy = () => {
      view.descending = view.sortKey === th.dataset.key ? !view.descending : th.dataset.key !== "job_id";
      view.sortKey = th.dataset.key;
      render();
    };
    th.addEventListener("click", sortBy);
    th.addEventListener("keydown", (event) => event.key === "Enter" && sortBy());
  }
}

setUp();
poll(async () => {
  jobs = await getJSON("/api/jobs");
  render();
}, document.getElementById("live"), 2000);
