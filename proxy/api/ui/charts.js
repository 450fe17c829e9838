// Grayscale's status page: its charts, drawn as inline SVG from the numbers the API returns
// (text goes in as text nodes, never as markup).
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const TICKS = [10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600];

function timeTicks(from, to) {
  // At most three round UTC times between `from` and `to` (their labels need the room).
  const step = TICKS.find((seconds) => (to - from) / seconds <= 3) || 3600;
  const ticks = [];
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) ticks.push(t);
  return { ticks, seconds: step < 60 };
}

function timeChart({ name, label, from, to, series, top: yTop, shown, marks }) {
  // Lines over time: `series` [{ key, values: [[t, v or null], ...] }] (a null breaks the line),
  // from 0 to `yTop`, values written by `shown`; `marks` [{ at, text }]: the rollout's actions.
  const width = 420, height = 150, left = 52, right = 10, top = 10, bottom = 22;
  const x = (t) => left + ((t - from) / Math.max(1, to - from)) * (width - left - right);
  const y = (v) => top + (1 - Math.min(v, yTop) / yTop) * (height - top - bottom);
  let drawn = 0;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "data-chart": name, "aria-label": label });
  for (const v of [0, yTop / 2, yTop]) {
    svg.append(s("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, shown(v)));
  }
  const { ticks, seconds } = timeTicks(from, to);
  for (const t of ticks) {
    svg.append(s("line", { class: "tick", x1: x(t), x2: x(t), y1: height - bottom, y2: height - bottom + 4 }));
    svg.append(s("text", { class: "time", x: x(t), y: height - 6, "text-anchor": "middle" },
      utcTime(t, seconds)));
  }
  for (const mark of marks) {
    if (mark.at < from || mark.at > to) continue;
    svg.append(s("line", { class: "mark", x1: x(mark.at), x2: x(mark.at), y1: top, y2: height - bottom }));
    svg.append(s("text", { class: "mark", x: x(mark.at) + 3, y: top + 9 }, mark.text));
  }
  for (const line of series) {
    // Runs of values between nulls: a line each, and a dot at every value (with its time and
    // value as a tooltip) or, when there are many, at each run's ends.
    const runs = [[]];
    for (const [t, v] of line.values) {
      if (missing(v)) runs.push([]);
      else runs.at(-1).push([t, v]);
    }
    const all = line.values.filter(([, v]) => !missing(v)).length <= 60;
    for (const run of runs.filter((r) => r.length)) {
      drawn += run.length;
      if (run.length > 1) {
        svg.append(s("polyline", { class: `line ${line.key}`, "data-series": line.key,
          points: run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
      }
      for (const [i, [t, v]] of run.entries()) {
        if (!all && i !== 0 && i !== run.length - 1) continue;
        const dot = s("circle", { class: `point ${line.key}`, "data-series": line.key,
          cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5 });
        dot.append(s("title", {}, `${utcTime(t)} · ${line.key} ${shown(v)}`));
        svg.append(dot);
      }
    }
  }
  svg.setAttribute("data-points", drawn);
  return svg;
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
  const last = Math.max(now, reaches || now);
  const end = last + Math.max(60, 0.15 * (last - start));
  const width = 600, height = 170, left = 36, right = 10, top = 12, bottom = 22;
  const x = (t) => left + ((t - start) / Math.max(1, end - start)) * (width - left - right);
  const y = (v) => top + (1 - v) * (height - top - bottom);
  const svg = s("svg", { class: "ramp", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `ramp of ${route.name}` });
  for (const v of [0, 0.5, 1]) {
    svg.append(s("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: 4, y: y(v) + 4 }, `${v * 100}%`));
  }
  const curve = [];
  for (let i = 0; i <= 120; i++) {
    const t = start + ((end - start) * i) / 120;
    curve.push(`${x(t).toFixed(1)},${y(shareAt(t)).toFixed(1)}`);
  }
  svg.append(s("polyline", { class: "curve", points: curve.join(" ") }));
  svg.append(s("line", { class: "now", x1: x(now), x2: x(now), y1: top, y2: height - bottom }));
  svg.append(s("text", { x: x(now) + 4, y: height - 6 }, `now, ${utcTime(now, false)}`));
  svg.append(s("circle", { class: "dot", cx: x(now), cy: y(route.share), r: 4 }));
  if (reaches && reaches > now) {
    svg.append(s("line", { class: "max", x1: x(reaches), x2: x(reaches), y1: top, y2: height - bottom }));
    svg.append(s("text", { x: Math.min(x(reaches) + 4, width - 150), y: top + 10 },
      `max ${Math.round(ramp.max * 100)}% at ${utcTime(reaches, false)}`));
  }
  return svg;
}
