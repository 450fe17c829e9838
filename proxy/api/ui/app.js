// Grayscale's status page: reads /status and, for each analysed route, its verdicts and its last
// hour of analysis rounds (/routes/{name}/verdicts, /routes/{name}/timeline) every 2 s, and draws
// them. Everything from the API is inserted as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "grayscale-admin-token";
const HOUR = 3600;
const VARIANTS = ["stable", "candidate"];

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
  const rows = VARIANTS.map((variant) => {
    const counts = route.requests[variant] || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    return h("tr", { "data-variant": variant },
      h("td", { class: `variant-${variant}` }, variant),
      h("td", { class: "num" }, total.toLocaleString("en")),
      h("td", { class: "num" }, percent(route.error_rate[variant])),
      h("td", { class: "num" }, ms(latency[variant])),
      h("td", { class: "muted" }, route[variant]));
  });
  return h("table", {}, h("tr", {}, h("th", {}, "variant"), h("th", {}, "requests"),
    h("th", {}, "error rate"), h("th", {}, "latency (last verdict)"), h("th", {}, "upstream")), rows);
}

function rampWords(route, now) {
  const ramp = route.ramp;
  const reaches = ramp.reaches_max_at;
  const held = route.rollout.held_seconds;
  return `base ${percent(ramp.base)}, +${percent(ramp.slope)} ${per(ramp.per_seconds)}, ` +
    `max ${percent(ramp.max)}` + (reaches && reaches > now ? `; reaches max at ${utcMoment(reaches)}` : "") +
    (held > 0 ? `; held for ${duration(held)} so far` : "") +
    (route.share_override !== null ? `; share set by hand to ${percent(route.share_override)}` : "");
}

const OVERRIDES = { rolled_back: "the rollback", promoted: "the promotion" };

function segmentWords(segment) {
  // What a segment serves now: a rolled-back or promoted rollout overrides every segment.
  const own = segment.variant ? `pin to ${segment.variant}` : "own ramp";
  if (segment.forced) {
    const serves = segment.share >= 1 ? "candidate" : "stable";
    return `${serves} — ${OVERRIDES[segment.forced] || segment.forced} overrides its ${own}`;
  }
  if (segment.variant) return `pinned to ${segment.variant}`;
  return `${percent(segment.share)} to the candidate (its own ramp)`;
}

function legend() {
  return h("span", { class: "legend" }, VARIANTS.map((variant) =>
    h("span", { class: `key ${variant}` }, variant)));
}

function timelineCharts(route, timeline, now) {
  // The last hour of analysis rounds: error rate and latency per variant, and the share.
  const shown = timeline.points.filter((p) => p.at >= now - HOUR);
  if (!shown.length) return h("p", { class: "muted" }, "No analysis round yet.");
  const from = Math.min(shown[0].at, now - 60);
  const marks = (route.history || []).map((t) => ({ at: t.at, text: t.action }));
  const of = (pick) => VARIANTS.map((key) =>
    ({ key, values: shown.map((p) => [p.at, p[key] ? pick(p[key]) : null]) }));
  const rate = (f) => (f.requests ? f.errors / f.requests : null);
  const latency = (f) => f.latency_seconds;
  const highest = (series) => Math.max(0, ...series.flatMap((l) => l.values.map(([, v]) => v || 0)));
  const rates = of(rate);
  const latencies = of(latency);
  const q = `p${Number((timeline.latency_quantile * 100).toFixed(2))}`;
  const covers = timeline.method === "sequential"
    ? `each point: the requests of its round (${duration(timeline.covers_seconds)})`
    : `each point: the analysis window (${duration(timeline.covers_seconds)}) up to its round`;
  return h("div", { "data-field": "timeline" },
    h("div", { class: "charts" },
      h("figure", {}, h("figcaption", {}, "Error rate"),
        timeChart({ name: "error_rate", label: `error rate per variant of ${route.name}`, from, to: now,
          series: rates, top: Math.max(0.01, 1.2 * highest(rates)), shown: (v) => percent(v), marks })),
      h("figure", {}, h("figcaption", {}, `Latency ${q}`),
        timeChart({ name: "latency", label: `latency per variant of ${route.name}`, from, to: now,
          series: latencies, top: Math.max(0.01, 1.2 * highest(latencies)), shown: ms, marks })),
      h("figure", {}, h("figcaption", {}, "Candidate's share"),
        timeChart({ name: "share", label: `candidate's share of ${route.name}`, from, to: now,
          series: [{ key: "candidate", values: shown.map((p) => [p.at, p.share]) }], top: 1,
          shown: (v) => percent(v, 0), marks }))),
    h("p", { class: "muted" }, legend(),
      ` ${covers}; a round every ${duration(timeline.interval_seconds)}; the last hour at most.`));
}

function checksTable(route) {
  const analysis = route.analysis;
  const verdict = analysis && analysis.last_verdict;
  if (!verdict) return h("p", { class: "muted" }, "No verdict yet.");
  if (!verdict.checks.length) return h("p", { class: "muted" }, verdict.note || "No check made.");
  return h("table", { "data-field": "checks" },
    h("tr", {}, h("th", {}, "check"), h("th", {}, "result"), h("th", {}, "bound"), h("th", {}, "limit")),
    verdict.checks.map((check) => {
      const words = checkWords(check, analysis.latency_quantile);
      return h("tr", { "data-check": check.check },
        h("td", {}, words.name),
        h("td", { class: check.result }, check.result),
        h("td", {}, words.bound),
        h("td", {}, words.limit));
    }));
}

function verdictTable(verdicts) {
  if (!verdicts.length) return h("p", { class: "muted" }, "No verdict yet.");
  return h("table", { "data-field": "verdicts" },
    h("tr", {}, h("th", {}, "at"), h("th", {}, "result"), h("th", {}, "then"), h("th", {}, "checks")),
    verdicts.slice(0, 8).map((v) => h("tr", {},
      h("td", { class: "num" }, utcTime(v.at)),
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
      h("td", { class: "num" }, utcMoment(t.at)),
      h("td", {}, t.action),
      h("td", {}, t.actor),
      h("td", {}, `${t.before} → ${t.after}`),
      h("td", {}, t.reason || ""))));
}

function analysisWords(analysis) {
  return `every ${duration(analysis.interval_seconds)}, ${analysis.method} at ` +
    `${percent(analysis.confidence, 0)} confidence; ${analysis.consecutive_failures} of ` +
    `${analysis.failures_before_rollback} failures, ${analysis.errors_in_a_row} of ` +
    `${analysis.max_errors_in_a_row} errors in a row (then ${analysis.on_error})` +
    (analysis.promotes_at ? `; promotes at ${utcMoment(analysis.promotes_at)}` : "");
}

function routeSection(route, verdicts, timeline, now) {
  const analysis = route.analysis;
  const ejection = route.ejection;
  const shadow = route.shadow;
  return h("section", { class: "route", "data-route": route.name },
    h("div", { class: "head" },
      h("h2", {}, route.name),
      h("span", { class: `badge ${route.state}`, "data-field": "state" }, route.state),
      h("span", { class: "share", "data-field": "share" }, percent(route.share)),
      h("span", { class: "muted" }, `to the candidate · ${route.path_prefix}`),
      analysis && analysis.holding ? h("span", { class: "alert" }, "ramp held by the analysis") : null,
      ejection && ejection.ejected ? h("span", { class: "alert", "data-field": "ejected" },
        `candidate ejected until ${utcTime(ejection.until)}`) : null),
    h("div", { class: "grid" },
      h("div", {},
        h("h3", {}, "Ramp"),
        rampCurve(route, now),
        h("p", { class: "muted", "data-field": "ramp" }, rampWords(route, now)),
        h("h3", {}, "Traffic since the start"),
        variants(route)),
      h("div", {},
        h("h3", {}, "Segments"),
        route.segments.length
          ? h("ul", { "data-field": "segments" }, route.segments.map((seg) =>
              h("li", {}, `${seg.name}: ${segmentWords(seg)}`)))
          : h("p", { class: "muted" }, "None."),
        shadow ? [h("h3", {}, "Shadow"), h("p", {},
          `${percent(shadow.agreement)} of ${(shadow.comparisons.agree || 0) + (shadow.comparisons.differ || 0)} comparisons agree` +
          (shadow.gate ? `; gate ${shadow.gate.open ? "open" : "closed"}` : ""))] : null,
        h("h3", {}, "Analysis"),
        analysis ? h("p", { class: analysis.alarm ? "alert" : "muted", "data-field": "analysis" },
          analysisWords(analysis)) : h("p", { class: "muted" }, "None."))),
    analysis ? [
      h("h3", {}, "The last hour"), timelineCharts(route, timeline, now),
      h("h3", {}, `Checks of the last verdict${analysis.last_verdict ? `, at ${utcTime(analysis.last_verdict.at)}` : ""}`),
      checksTable(route),
      h("h3", {}, "Recent verdicts"), verdictTable(verdicts)] : null,
    h("h3", {}, "Actions"),
    historyTable(route.history || []));
}

async function analysed(route, what, empty) {
  if (!route.analysis) return empty;
  return get(`routes/${encodeURIComponent(route.name)}/${what}`);
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const status = await get("status");
    const now = Date.now() / 1000;
    const found = await Promise.all(status.routes.map((route) => Promise.all([
      analysed(route, "verdicts", { verdicts: [] }),
      analysed(route, "timeline", { points: [] })])));
    const sections = status.routes.map((route, i) =>
      routeSection(route, found[i][0].verdicts, found[i][1], now));
    document.getElementById("routes").replaceChildren(...sections);
    const store = status.state.healthy ? "state store healthy" : `state store unavailable: ${status.state.error}`;
    document.getElementById("summary").textContent =
      `${status.routes.length} route${status.routes.length === 1 ? "" : "s"} · ${store} · config ${status.config.hash.slice(0, 12)}`;
    document.getElementById("updated").textContent = `Updated ${utcTime(now)}.`;
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
