// Helpers shared by the jobs page and the job page: API access, DOM building, formatting.
// Every value from the API goes into the page as text (el() sets textContent), never as
// HTML: job ids and reasons come from clients.

export const STATES = ["stable", "approaching", "unstable", "diverged"];
export const SEVERITY = { stable: 0, approaching: 1, unstable: 2, diverged: 3 };
export const POLL_MS = 1000; // live updates: the issue asks for <= 2 s

export function apiJobPath(jobId) {
  return "/api/jobs/" + encodeURIComponent(jobId);
}

export function jobPagePath(jobId) {
  return "/jobs/" + encodeURIComponent(jobId);
}

export async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      // not JSON: keep the status text
    }
    throw new Error(`${path}: ${response.status} ${message}`);
  }
  return response.json();
}

// el("td", {class: "num", dataset: {step: 3}}, "text", childNode, ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function stateBadge(state) {
  return el("span", { class: `state state-${state}`, text: state });
}

// Numbers the way a person reads them: 4 significant digits, exponent when tiny or huge.
export function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "-∞";
  const size = Math.abs(value);
  if (size !== 0 && (size >= 1e6 || size < 1e-3)) return value.toExponential(digits - 2);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return String(Number(value.toPrecision(digits)));
}

export function fmtSteps(value) {
  if (value === null || value === undefined) return "–";
  return Math.round(value).toLocaleString("en-US");
}

export function fmtAgo(wallTime) {
  if (!wallTime) return "–";
  const seconds = Math.max(0, Date.now() / 1000 - wallTime);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${(seconds / 86400).toFixed(1)} d ago`;
}

export function fmtTime(wallTime) {
  return wallTime ? new Date(wallTime * 1000).toLocaleString() : "–";
}

// Calls fn now and then POLL_MS after each call has finished (never two at once); the
// status element says whether the daemon answers.
export function poll(fn, statusNode, intervalMs = POLL_MS) {
  let stopped = false;
  async function tick() {
    if (stopped) return;
    try {
      await fn();
      statusNode.textContent = "live";
      statusNode.className = "live ok";
      statusNode.title = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      statusNode.textContent = "daemon not answering";
      statusNode.className = "live down";
      statusNode.title = String(error.message || error);
    }
    setTimeout(tick, intervalMs);
  }
  tick();
  return () => {
    stopped = true;
  };
}

export function showError(message) {
  const banner = document.getElementById("error");
  banner.textContent = message;
  banner.hidden = false;
}
