// Grayscale's status page: numbers and times in words. Times are UTC on a 24-hour clock and say
// so ("14:02:31 UTC"); durations are words ("3 min 20 s", "per day"), never bare seconds.
"use strict";

const missing = (v) => v === null || v === undefined || Number.isNaN(v);
const percent = (v, digits = 1) => (missing(v) ? "–" : `${(v * 100).toFixed(digits)} %`);
const ms = (v) => (missing(v) ? "–" : v < 10 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(1)} s`);

function utcTime(t, seconds = true) {
  if (!t) return "–";
  const text = new Date(t * 1000).toISOString().slice(11, seconds ? 19 : 16);
  return `${text} UTC`;
}

function utcMoment(t) {
  if (!t) return "–";
  const iso = new Date(t * 1000).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

const UNITS = [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]];

function duration(seconds) {
  // The two largest units that count: "3 min 20 s", "2 h", "1 d 4 h"; below a minute "1.5 s".
  if (missing(seconds) || !Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Number(seconds.toFixed(1))} s`;
  const first = UNITS.findIndex(([, size]) => seconds >= size);
  const [name, size] = UNITS[first];
  const [nextName, nextSize] = UNITS[first + 1];
  const rounded = Math.round(seconds / nextSize) * nextSize;
  const whole = Math.floor(rounded / size);
  const rest = Math.round((rounded - whole * size) / nextSize);
  return rest ? `${whole} ${name} ${rest} ${nextName}` : `${whole} ${name}`;
}

const PER = { 1: "second", 60: "minute", 3600: "hour", 86400: "day", 604800: "week" };
const per = (seconds) => `per ${PER[seconds] || duration(seconds)}`;

function signed(value, unit, digits) {
  const text = Math.abs(value).toFixed(digits);
  return `${value > 0 ? "+" : value < 0 ? "−" : "±"}${text}${unit}`;
}

function level(alpha) {
  // A bound at error rate alpha, as a confidence: 0.00625 -> "99.4 %" (never rounded to 100).
  const confidence = 100 * (1 - alpha);
  let digits = 1;
  while (digits < 6 && Number(confidence.toFixed(digits)) >= 100) digits += 1;
  return `${confidence.toFixed(digits)} %`;
}

const points = (v) => signed(v * 100, " pt", Math.abs(v * 100) < 1 ? 2 : 1);
const ratio = (v) => `${v.toFixed(2)}×`;
const plain = (v) => `${Number(v.toPrecision(3))}`;

function checkQuantity(check, quantile) {
  // What a check bounds, and how its values are written.
  const name = check.check;
  const q = quantile ? `p${Number((quantile * 100).toFixed(2))}` : "quantile";
  if (name === "error_rate") return { name: "errors", what: "candidate − stable", shown: points };
  if (name === "latency") return { name: `latency ${q}`, what: "candidate ÷ stable", shown: ratio };
  if (name.startsWith("outcome:")) {
    return { name: name.slice(8), what: "decrease, stable − candidate", shown: plain };
  }
  if (name.startsWith("metric:")) return { name: name.slice(7), what: "", shown: plain };
  return { name, what: name, shown: plain };
}

function checkWords(check, quantile) {
  // A check's bound against its limit: "candidate − stable ≤ +0.80 pt (99.4 % bound)" and
  // "limit +1.0 pt"; a check without bounds says why (its note).
  const { name, what, shown } = checkQuantity(check, quantile);
  if (check.check === "sample_ratio") {
    const bound = missing(check.bound) ? check.note : `p = ${check.bound.toPrecision(2)}`;
    return { name: "split", bound, limit: `fails below p = ${check.threshold}` };
  }
  const limit = missing(check.threshold) ? "–" : `limit ${shown(check.threshold)}`;
  if (check.check.startsWith("metric:")) return { name, bound: check.note, limit };  // (no bound)
  const low = check.bound;
  const high = check.upper;
  let bound;
  if (check.result === "pass" && !missing(high)) bound = `${what} ≤ ${shown(high)}`;
  else if (check.result === "fail" && !missing(low)) bound = `${what} ≥ ${shown(low)}`;
  else if (!missing(low) && !missing(high)) bound = `${what} between ${shown(low)} and ${shown(high)}`;
  else if (!missing(high)) bound = `${what} ≤ ${shown(high)}`;
  else if (!missing(low)) bound = `${what} ≥ ${shown(low)}`;
  else return { name, bound: check.note, limit };
  const about = [];
  if (!missing(check.alpha)) about.push(`${level(check.alpha)} bound`);
  if (check.scope === "recent") about.push("current epoch");
  return { name, bound: about.length ? `${bound} (${about.join(", ")})` : bound, limit };
}
