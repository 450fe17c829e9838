// Grayscale's status page: reads /status and each route's /routes/{name}/verdicts every 2 s and
// draws them. Everything from the API is inserted as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "grayscale-admin-token";
const SVG = "http://www.w3.org/2000/svg";

function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function s(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
const ms = (v) => (v === null || v === undefined ? "–" : `${(v * 1000).toFixed(0)} ms`);
const time = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

async function get(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const answer = await fetch(path, { headers, cache: "no-store" });
  if (answer.status === 401 || answer.status === 403) {
    document.getElementById("login").hidden = false;
    throw new Error("this API needs the admin token to be read");
  }
  if (!answer.ok) throw new Error(`${path}: HTTP ${answer.status}`);
  return answer.json();
}

function rampCurve(route, now) {
  // The ramp's share over wall time from its start, as it goes on if not held again.
  const ramp = route.ramp;
  const held = route.rollout.held_seconds || 0;
  const start = (ramp.start ?? route.rollout.started_at) + held;
  const fixed = ["rolled_back", "promoted"].includes(route.state) || route.share_override !== null;
  const shareAt = (t) => fixed ? route.share :
    Math.min(ramp.max, Math.max(0, ramp.base + (ramp.slope * (t - start)) / ramp.per_seconds));
  const reaches = ramp.reaches_max_at;
  const end = Math.max(now, reaches || now) + Math.max(60, 0.15 * (Math.max(now, reaches || now) - start));
  const width = 600, height = 170, left = 36, right = 10, top = 12, bottom = 22;
  const x = (t) => left + ((t - start) / Math.max(1, end - start)) * (width - left - right);
  const y = (v) => top + (1 - v) * (height - top - bottom);
  const svg = s("svg", { class: "ramp", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `ramp of ${route.name}` });
  for (const v of [0, 0.5, 1]) {
    svg.append(s("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), stroke: "#e5e7eb" }));
    svg.append(s("text", { x: 4, y: y(v) + 4 }, `${v * 100}%`));
  }
  const points = [];
  for (let i = 0; i <= 120; i++) {
    const t = start + ((end - start) * i) / 120;
    points.push(`${x(t).toFixed(1)},${y(shareAt(t)).toFixed(1)}`);
  }
  svg.append(s("polyline", { class: "curve", points: points.join(" ") }));
  svg.append(s("line", { class: "now", x1: x(now), x2: x(now), y1: top, y2: height - bottom }));
  svg.append(s("text", { x: x(now) + 4, y: height - 6 }, "now"));
  svg.append(s("circle", { class: "dot", cx: x(now), cy: y(route.share), r: 4 }));
  if (reaches && reaches > now) {
    svg.append(s("line", { class: "max", x1: x(reaches), x2: x(reaches), y1: top, y2: height - bottom }));
    svg.append(s("text", { x: Math.min(x(reaches) + 4, width - 120), y: top + 10 },
      `max ${Math.round(ramp.max * 100)}% at ${time(reaches)}`));
  }
  return svg;
}

function latencyOf(route) {
  const verdict = route.analysis && route.analysis.last_verdict;
  const check = verdict && verdict.checks.find((c) => c.check === "latency");
  return {
    stable: check ? check.stable.latency_quantile_seconds : null,
    candidate: check ? check.candidate.latency_quantile_seconds : null,
  };
}

function variants(route) {
  const latency = latencyOf(route);
  const rows = ["stable", "candidate"].map((variant) => {
    const counts = route.requests[variant] || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    return h("tr", { "data-variant": variant },
      h("td", { class: `variant-${variant}` }, variant),
      h("td", { class: "num" }, total.toLocaleString()),
      h("td", { class: "num" }, percent(route.error_rate[variant])),
      h("td", { class: "num" }, ms(latency[variant])),
      h("td", { class: "muted" }, route[variant]));
  });
  return h("table", {}, h("tr", {}, h("th", {}, "variant"), h("th", {}, "requests"),
    h("th", {}, "error rate"), h("th", {}, "latency (last verdict)"), h("th", {}, "upstream")), rows);
}

function verdictTable(verdicts) {
  if (!verdicts.length) return h("p", { class: "muted" }, "No verdict yet.");
  return h("table", { "data-field": "verdicts" },
    h("tr", {}, h("th", {}, "at"), h("th", {}, "result"), h("th", {}, "then"), h("th", {}, "checks")),
    verdicts.slice(0, 8).map((v) => h("tr", {},
      h("td", { class: "num" }, time(v.at)),
      h("td", { class: v.result }, v.result),
      h("td", {}, [v.action || "", v.why ? h("span", { class: "muted" }, ` (${v.why})`) : null]),
      h("td", {}, v.checks.filter((c) => c.result !== "pass")
        .map((c) => `${c.check} ${c.result}: ${c.note}`).join("; ") || v.note || "all passed"))));
}

function historyTable(history) {
  if (!history.length) return h("p", { class: "muted" }, "No action yet.");
  return h("table", { "data-field": "history" },
    h("tr", {}, h("th", {}, "at"), h("th", {}, "action"), h("th", {}, "by"), h("th", {}, "state"),
      h("th", {}, "reason")),
    history.slice(0, 8).map((t) => h("tr", {},
      h("td", { class: "num" }, when(t.at)),
      h("td", {}, t.action),
      h("td", {}, t.actor),
      h("td", {}, `${t.before} → ${t.after}`),
      h("td", {}, t.reason || ""))));
}

function routeSection(route, verdicts, now) {
  const analysis = route.analysis;
  const ejection = route.ejection;
  const shadow = route.shadow;
  const reaches = route.ramp.reaches_max_at;
  return h("section", { class: "route", "data-route": route.name },
    h("div", { class: "head" },
      h("h2", {}, route.name),
      h("span", { class: `badge ${route.state}`, "data-field": "state" }, route.state),
      h("span", { class: "share", "data-field": "share" }, percent(route.share)),
      h("span", { class: "muted" }, `to the candidate · ${route.path_prefix}`),
      analysis && analysis.holding ? h("span", { class: "alert" }, "ramp held by the analysis") : null,
      ejection && ejection.ejected ? h("span", { class: "alert", "data-field": "ejected" },
        `candidate ejected until ${time(ejection.until)}`) : null),
    h("div", { class: "grid" },
      h("div", {},
        h("h3", {}, "Ramp"),
        rampCurve(route, now),
        h("p", { class: "muted" },
          `base ${percent(route.ramp.base)}, +${percent(route.ramp.slope)} per ${route.ramp.per_seconds} s, ` +
          `max ${percent(route.ramp.max)}` + (reaches && reaches > now ? `; reaches max at ${when(reaches)}` : "") +
          (route.share_override !== null ? `; share set by hand to ${percent(route.share_override)}` : "")),
        h("h3", {}, "Traffic"),
        variants(route)),
      h("div", {},
        h("h3", {}, "Segments"),
        route.segments.length
          ? h("ul", {}, route.segments.map((seg) => h("li", {}, seg.name, ": ",
              seg.variant ? `pinned to ${seg.variant}` : percent(seg.share))))
          : h("p", { class: "muted" }, "None."),
        shadow ? [h("h3", {}, "Shadow"), h("p", {},
          `${percent(shadow.agreement)} of ${(shadow.comparisons.agree || 0) + (shadow.comparisons.differ || 0)} comparisons agree` +
          (shadow.gate ? `; gate ${shadow.gate.open ? "open" : "closed"}` : ""))] : null,
        h("h3", {}, "Analysis"),
        analysis ? h("p", { class: analysis.alarm ? "alert" : "muted" },
          `every ${analysis.interval_seconds} s, ${analysis.consecutive_failures} of ` +
          `${analysis.failures_before_rollback} failures, ${analysis.errors_in_a_row} of ` +
          `${analysis.max_errors_in_a_row} errors in a row (then ${analysis.on_error})`)
          : h("p", { class: "muted" }, "None."))),
    analysis ? [h("h3", {}, "Recent verdicts"), verdictTable(verdicts)] : null,
    h("h3", {}, "Actions"),
    historyTable(route.history || []));
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const status = await get("status");
    const now = Date.now() / 1000;
    const verdicts = await Promise.all(status.routes.map((route) =>
      route.analysis ? get(`routes/${encodeURIComponent(route.name)}/verdicts`).then((v) => v.verdicts)
        : Promise.resolve([])));
    const sections = status.routes.map((route, i) => routeSection(route, verdicts[i], now));
    document.getElementById("routes").replaceChildren(...sections);
    const store = status.state.healthy ? "state store healthy" : `state store unavailable: ${status.state.error}`;
    document.getElementById("summary").textContent =
      `${status.routes.length} route${status.routes.length === 1 ? "" : "s"} · ${store} · config ${status.config.hash.slice(0, 12)}`;
    document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    problem.hidden = true;
    document.getElementById("login").hidden = true;
  } catch (error) {
    problem.textContent = String(error.message || error);
    problem.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
