// Time-series charts on a canvas, moonfrp's own (no library): lines with gaps where samples are
// missing, time and value axes, hover values with their timestamp, drag (or keys) to zoom and
// pan, and PNG export. Sparklines for the tunnel table. Labels are drawn as canvas text or set
// as text nodes, never as HTML.

import { el } from "./common.js";

const PAD = { left: 64, right: 12, top: 10, bottom: 26 };

/// The page's colours (light or dark, from style.css).
export function palette() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return {
    bg: v("--bg"), fg: v("--fg"), muted: v("--muted"), line: v("--line"), accent: v("--accent"),
    series: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((i) => v(`--s${i}`)),
  };
}

/// Ticks for a value axis from 0 (or the minimum) to max: about `n` round steps.
function valueTicks(lo, hi, n) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
  if (out[out.length - 1] < hi) out.push(out[out.length - 1] + step);
  return out;
}

const MIN = 60;
const TIME_STEPS = [10, 30, MIN, 5 * MIN, 15 * MIN, 30 * MIN, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
  86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];

/// Ticks for the time axis (Unix seconds), aligned to local midnight for days.
function timeTicks(from, to, n) {
  const step = TIME_STEPS.find((s) => (to - from) / s <= n) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const offset = new Date(from * 1000).getTimezoneOffset() * 60;
  const first = Math.ceil((from - offset) / step) * step + offset;
  const out = [];
  for (let t = first; t <= to; t += step) out.push(t);
  return { ticks: out, step };
}

const pad2 = (n) => String(n).padStart(2, "0");

/// A tick label: the time of day for short ranges, the date (and time) for long ones.
function timeLabel(t, step) {
  const d = new Date(t * 1000);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  if (step < 60) return `${hm}:${pad2(d.getSeconds())}`;
  if (step < 86400) return d.getHours() === 0 && d.getMinutes() === 0 ? `${d.getMonth() + 1}/${d.getDate()}` : hm;
  return `${d.getMonth() + 1}/${d.getDate()}`;
}

/// A full timestamp for hover values.
export function stamp(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/// Index of the sample nearest to time t in a sorted list.
function nearest(points, t) {
  let lo = 0;
  let hi = points.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < t) lo = mid + 1; else hi = mid;
  }
  if (lo > 0 && Math.abs(points[lo - 1][0] - t) <= Math.abs(points[lo][0] - t)) lo--;
  return lo;
}

/// The usual distance between samples, to tell a gap (agent down) from a step.
function spacing(points) {
  const d = [];
  for (let i = 1; i < points.length; i++) d.push(points[i][0] - points[i - 1][0]);
  d.sort((a, b) => a - b);
  return d.length ? d[d.length >> 1] : Infinity;
}

/// A chart in `parent`. `format(v)` writes a value; `onRange(from, to)` is called when the
/// user zooms or pans (the owner then asks the API for that range and calls `setData`).
export class Chart {
  constructor(parent, { id, title, format, onRange }) {
    this.id = id;
    this.title = title;
    this.format = format;
    this.onRange = onRange;
    this.series = [];
    this.from = 0;
    this.to = 1;
    this.hover = null;
    this.drag = null;

    this.figure = el("figure", "chart");
    this.figure.id = `chart-${id}`;
    const head = el("figcaption");
    head.append(el("span", "title", title));
    this.legend = el("span", "legend");
    head.append(this.legend);
    this.tools = el("span", "tools");
    const png = el("button", "png", "PNG");
    png.type = "button";
    png.title = `Save "${title}" as a PNG image`;
    png.addEventListener("click", () => this.savePng());
    this.tools.append(png);
    this.csv = el("span", "csv");
    this.tools.append(this.csv);
    head.append(this.tools);
    this.figure.append(head);

    this.box = el("div", "plot");
    this.canvas = el("canvas");
    this.canvas.setAttribute("aria-hidden", "true");
    this.overlay = el("canvas", "overlay");
    this.overlay.tabIndex = 0;
    this.overlay.setAttribute("role", "img");
    this.overlay.setAttribute("aria-label", `${title}; drag to zoom, shift-drag to pan; arrow keys pan, + and - zoom`);
    this.tip = el("div", "tip");
    this.tip.hidden = true;
    this.empty = el("div", "empty", "no data in this range");
    this.empty.hidden = true;
    this.box.append(this.canvas, this.overlay, this.tip, this.empty);
    this.figure.append(this.box);
    parent.append(this.figure);

    this.overlay.addEventListener("pointerdown", (e) => this.down(e));
    this.overlay.addEventListener("pointermove", (e) => this.move(e));
    this.overlay.addEventListener("pointerup", (e) => this.up(e));
    this.overlay.addEventListener("pointerleave", () => { this.hover = null; this.drawOverlay(); });
    this.overlay.addEventListener("keydown", (e) => this.key(e));
    this.resizer = new ResizeObserver(() => this.draw());
    this.resizer.observe(this.box);
  }

  /// Stops following the chart's size (the page dropped it).
  destroy() {
    this.resizer.disconnect();
  }

  /// Series: [{name, points: [[unix s, value]…]}]; the range shown is from..to (Unix s).
  setData(series, from, to) {
    this.series = series;
    this.from = from;
    this.to = to;
    this.legend.replaceChildren();
    const colours = palette().series;
    series.forEach((s, i) => {
      s.color = colours[i % colours.length];
      const item = el("span", "key", s.name);
      item.style.setProperty("--key", s.color);
      this.legend.append(item);
    });
    this.empty.hidden = series.some((s) => s.points.length > 0);
    this.draw();
  }

  /// CSV downloads: [{name, href, file}], the API's own CSV of each query of the chart (one
  /// link, or a menu of them).
  setCsv(links) {
    const anchor = (l, text) => {
      const a = el("a", "csv-link", text);
      a.href = l.href;
      a.download = l.file;
      a.title = `Download ${l.name} as CSV (from the history API)`;
      return a;
    };
    if (links.length === 1) {
      this.csv.replaceChildren(anchor(links[0], "CSV"));
      return;
    }
    const menu = el("details", "menu");
    menu.append(el("summary", null, "CSV"));
    const list = el("div", "items");
    for (const l of links) list.append(anchor(l, l.name));
    menu.append(list);
    this.csv.replaceChildren(menu);
  }

  size() {
    const r = this.box.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    for (const c of [this.canvas, this.overlay]) {
      c.width = Math.max(1, Math.round(r.width * dpr));
      c.height = Math.max(1, Math.round(r.height * dpr));
    }
    return { w: r.width, h: r.height, dpr };
  }

  x(t) { return PAD.left + ((t - this.from) / (this.to - this.from)) * (this.w - PAD.left - PAD.right); }
  t(x) { return this.from + ((x - PAD.left) / (this.w - PAD.left - PAD.right)) * (this.to - this.from); }
  y(v) { return this.h - PAD.bottom - ((v - this.lo) / (this.hi - this.lo)) * (this.h - PAD.top - PAD.bottom); }

  draw() {
    const { w, h, dpr } = this.size();
    this.w = w;
    this.h = h;
    const g = this.canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.paint(g, palette());
    this.drawOverlay();
  }

  /// Axes, grid and lines on `g` (the chart's canvas, or the PNG's).
  paint(g, p) {
    const { w, h } = this;
    g.fillStyle = p.bg;
    g.fillRect(0, 0, w, h);
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of this.series) {
      for (const [t, v] of s.points) {
        if (t < this.from || t > this.to || !Number.isFinite(v)) continue;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (lo === Infinity) { lo = 0; hi = 1; }
    lo = Math.min(0, lo);
    const yt = valueTicks(lo, hi, Math.max(2, Math.floor(h / 50)));
    this.lo = yt[0];
    this.hi = yt[yt.length - 1];
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;
    g.strokeStyle = p.line;
    g.fillStyle = p.muted;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of yt) {
      const y = Math.round(this.y(v)) + 0.5;
      g.beginPath();
      g.moveTo(PAD.left, y);
      g.lineTo(w - PAD.right, y);
      g.stroke();
      g.fillText(this.format(v), PAD.left - 6, y);
    }
    const { ticks, step } = timeTicks(this.from, this.to, Math.max(2, Math.floor(w / 90)));
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const t of ticks) {
      const x = Math.round(this.x(t)) + 0.5;
      g.beginPath();
      g.moveTo(x, h - PAD.bottom);
      g.lineTo(x, h - PAD.bottom + 4);
      g.stroke();
      g.fillText(timeLabel(t, step), x, h - PAD.bottom + 6);
    }
    g.save();
    g.beginPath();
    g.rect(PAD.left, PAD.top, w - PAD.left - PAD.right, h - PAD.top - PAD.bottom);
    g.clip();
    g.lineWidth = 1.5;
    g.lineJoin = "round";
    for (const s of this.series) {
      const gap = spacing(s.points) * 2.5;
      g.strokeStyle = s.color;
      g.beginPath();
      let prev = null;
      for (const [t, v] of s.points) {
        if (!Number.isFinite(v)) { prev = null; continue; }
        const x = this.x(t);
        const y = this.y(v);
        if (prev === null || t - prev > gap) g.moveTo(x, y); else g.lineTo(x, y);
        if (prev === null || t - prev > gap) g.fillRect(x - 0.75, y - 0.75, 1.5, 1.5);
        prev = t;
      }
      g.stroke();
    }
    g.restore();
  }

  /// The crosshair, the hovered values and the zoom selection.
  drawOverlay() {
    const g = this.overlay.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, this.w, this.h);
    const p = palette();
    if (this.drag && Math.abs(this.drag.x1 - this.drag.x0) > 2) {
      g.fillStyle = p.accent;
      g.globalAlpha = 0.15;
      const a = Math.min(this.drag.x0, this.drag.x1);
      g.fillRect(a, PAD.top, Math.abs(this.drag.x1 - this.drag.x0), this.h - PAD.top - PAD.bottom);
      g.globalAlpha = 1;
    }
    if (this.hover === null || !this.series.some((s) => s.points.length)) {
      this.tip.hidden = true;
      return;
    }
    const t = this.t(this.hover);
    // The hovered time is the sample nearest to the pointer among all series.
    let at = null;
    for (const s of this.series) {
      if (!s.points.length) continue;
      const c = s.points[nearest(s.points, t)][0];
      if (at === null || Math.abs(c - t) < Math.abs(at - t)) at = c;
    }
    const x = Math.round(this.x(at)) + 0.5;
    g.strokeStyle = p.muted;
    g.beginPath();
    g.moveTo(x, PAD.top);
    g.lineTo(x, this.h - PAD.bottom);
    g.stroke();
    const rows = [el("div", "when", stamp(at))];
    for (const s of this.series) {
      if (!s.points.length) continue;
      const [ts, v] = s.points[nearest(s.points, at)];
      if (ts !== at) continue;
      g.fillStyle = s.color;
      g.beginPath();
      g.arc(x, this.y(v), 3, 0, 2 * Math.PI);
      g.fill();
      const row = el("div", "row");
      const key = el("span", "key", s.name);
      key.style.setProperty("--key", s.color);
      row.append(key, el("span", "val", this.format(v)));
      rows.push(row);
    }
    this.tip.replaceChildren(...rows);
    this.tip.hidden = false;
    const left = x + 12 + this.tip.offsetWidth > this.w ? x - 12 - this.tip.offsetWidth : x + 12;
    this.tip.style.left = `${Math.max(0, left)}px`;
    this.tip.style.top = `${PAD.top}px`;
  }

  pos(e) { return e.clientX - this.overlay.getBoundingClientRect().left; }

  down(e) {
    if (e.button !== 0) return;
    this.overlay.setPointerCapture(e.pointerId);
    const x = this.pos(e);
    this.drag = { x0: x, x1: x, pan: e.shiftKey };
  }

  move(e) {
    const x = this.pos(e);
    if (this.drag) this.drag.x1 = x;
    this.hover = x >= PAD.left && x <= this.w - PAD.right ? x : null;
    this.drawOverlay();
  }

  up(e) {
    const d = this.drag;
    this.drag = null;
    if (!d) return;
    const x = this.pos(e);
    if (Math.abs(x - d.x0) < 5) { this.drawOverlay(); return; }
    if (d.pan) {
      // Shift-drag pans: the time under the pointer follows it.
      const dt = this.t(d.x0) - this.t(x);
      this.onRange(this.from + dt, this.to + dt);
    } else {
      const a = Math.max(this.from, this.t(Math.min(d.x0, x)));
      const b = Math.min(this.to, this.t(Math.max(d.x0, x)));
      if (b - a >= 10) this.onRange(a, b);
    }
    this.drawOverlay();
  }

  key(e) {
    const span = this.to - this.from;
    const moves = {
      ArrowLeft: [-span / 4, -span / 4],
      ArrowRight: [span / 4, span / 4],
      "+": [span / 4, -span / 4],
      "=": [span / 4, -span / 4],
      "-": [-span / 2, span / 2],
    };
    const m = moves[e.key];
    if (!m) return;
    e.preventDefault();
    this.onRange(this.from + m[0], this.to + m[1]);
  }

  /// The chart with its title and legend, as a PNG download.
  savePng() {
    const p = palette();
    const dpr = window.devicePixelRatio || 1;
    const head = 28;
    const c = document.createElement("canvas");
    c.width = Math.round(this.w * dpr);
    c.height = Math.round((this.h + head) * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = p.bg;
    g.fillRect(0, 0, this.w, head);
    g.font = "600 13px system-ui, sans-serif";
    g.fillStyle = p.fg;
    g.textBaseline = "middle";
    g.fillText(this.title, 8, head / 2);
    let x = 16 + g.measureText(this.title).width;
    g.font = "12px system-ui, sans-serif";
    for (const s of this.series) {
      g.fillStyle = s.color;
      g.fillRect(x, head / 2 - 4, 8, 8);
      g.fillStyle = p.fg;
      g.fillText(s.name, x + 12, head / 2);
      x += 24 + g.measureText(s.name).width;
    }
    g.translate(0, head);
    this.paint(g, p);
    c.toBlob((blob) => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `moonfrp-${this.id}-${stamp(this.from).replace(/[ :]/g, "-")}.png`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }, "image/png");
  }
}

/// A small line of `points` ([[t, v]…]) on `canvas`, scaled to its own maximum.
export function sparkline(canvas, points, color) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 80;
  const h = canvas.clientHeight || 20;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  if (points.length < 2) return;
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 1e-9);
  g.strokeStyle = color;
  g.lineWidth = 1.25;
  g.beginPath();
  points.forEach(([t, v], i) => {
    const x = ((t - t0) / Math.max(1, t1 - t0)) * (w - 2) + 1;
    const y = h - 1 - (v / max) * (h - 2);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}
