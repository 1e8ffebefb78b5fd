// A group of history charts sharing one time range (the tunnel and host pages): the range
// buttons (1 h … 90 d, pan, back to now), one history API request per query of each chart for
// the range shown, and live updates while the range ends now. Zooming or panning one chart
// moves them all, and asks the API for the new range (raw or rollups, as the API picks).
import { Chart } from "./chart.js";
import { el, status } from "./common.js";

export const RANGES = [["1h", 3600], ["6h", 6 * 3600], ["24h", 86400], ["7d", 7 * 86400], ["90d", 90 * 86400]];

/// The API's history URL for one query over from..to (Unix s).
export function historyUrl(q, from, to, format) {
  const p = new URLSearchParams({ metric: q.metric, from: String(from), to: String(to) });
  if (q.rate) p.set("rate", "true");
  for (const [k, v] of Object.entries(q.match ?? {})) p.set(k, v);
  if (format) p.set("format", format);
  return `/api/v1/history?${p}`;
}

/// A chart's series from one API answer: one per stored series, named by the query and the
/// labels that tell them apart.
function named(q, data) {
  return data.series.map((s) => {
    const extra = (q.by ?? []).map((k) => s.labels[k]).filter((v) => v !== undefined && v !== "");
    return { name: [q.name, ...extra].join(" ").trim() || s.metric, points: s.samples, labels: s.labels };
  });
}

/// Charts over a shared range. `specs`: [{id, title, format, queries: [{name, metric, rate,
/// match, by}], derive?: (series by query index) => series}].
export class Panels {
  constructor(parent, specs, fileStem) {
    this.specs = specs;
    this.fileStem = fileStem;
    this.range = 3600;
    this.live = true;
    this.from = 0;
    this.to = 0;
    this.timer = null;
    this.generation = 0;
    this.data = {};

    const bar = el("div", "range");
    bar.setAttribute("role", "toolbar");
    bar.setAttribute("aria-label", "Time range");
    this.buttons = RANGES.map(([label, secs]) => {
      const b = el("button", "preset", label);
      b.type = "button";
      b.dataset.range = label;
      b.addEventListener("click", () => { this.range = secs; this.live = true; this.load(); });
      bar.append(b);
      return b;
    });
    const pan = (dir, label, text) => {
      const b = el("button", "pan", text);
      b.type = "button";
      b.title = label;
      b.setAttribute("aria-label", label);
      b.addEventListener("click", () => {
        const span = this.to - this.from;
        this.setRange(this.from + dir * span / 2, this.to + dir * span / 2);
      });
      bar.append(b);
    };
    pan(-1, "Earlier", "◀");
    pan(1, "Later", "▶");
    this.shown = el("span", "shown");
    bar.append(this.shown);
    parent.append(bar);

    const grid = el("div", "charts");
    parent.append(grid);
    this.charts = specs.map((s) => new Chart(grid, {
      id: s.id, title: s.title, format: s.format, onRange: (a, b) => this.setRange(a, b),
    }));
  }

  /// A range chosen by zoom or pan: no longer live unless it ends now.
  setRange(from, to) {
    const now = Date.now() / 1000;
    if (to > now) { from -= to - now; to = now; }
    this.live = false;
    this.load(Math.floor(from), Math.floor(to));
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.generation++;
  }

  /// Stops for good: no more loads, the charts let go of their elements.
  destroy() {
    this.stop();
    for (const c of this.charts) c.destroy();
  }

  /// Loads every chart for from..to (default: the preset range ending now); while live,
  /// again every `every` seconds.
  async load(from, to, every) {
    this.stop();
    if (every) this.every = every;
    const gen = this.generation;
    if (from === undefined) {
      to = Math.floor(Date.now() / 1000);
      from = to - this.range;
    }
    this.from = from;
    this.to = to;
    for (const b of this.buttons) {
      const on = this.live && RANGES.find((r) => r[0] === b.dataset.range)[1] === this.range;
      b.setAttribute("aria-pressed", on ? "true" : "false");
    }
    this.shown.textContent = this.live ? "live" : `${new Date(from * 1000).toLocaleString()} – ${new Date(to * 1000).toLocaleString()}`;
    try {
      await Promise.all(this.specs.map((spec, i) => this.loadChart(spec, this.charts[i], from, to, gen)));
      if (gen === this.generation) status(`history loaded ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (gen === this.generation) status(`history: ${e.message}`, true);
    }
    if (gen === this.generation && this.live) {
      this.timer = setTimeout(() => this.load(), Math.max(10, this.every ?? 60) * 1000);
    }
  }

  async loadChart(spec, chart, from, to, gen) {
    const answers = await Promise.all(spec.queries.map(async (q) => {
      const r = await fetch(historyUrl(q, from, to), { headers: { Accept: "application/json" } });
      const body = await r.json().catch(() => null);
      // 404: nothing stored under that name yet (e.g. no TCP tunnel); an empty chart.
      if (r.status === 404) return { series: [] };
      if (!r.ok || body?.status !== "success") throw new Error(body?.error ?? `HTTP ${r.status}`);
      return body.data;
    }));
    if (gen !== this.generation) return;
    const parts = spec.queries.map((q, i) => named(q, answers[i]));
    const series = spec.derive ? spec.derive(parts) : parts.flat();
    this.data[spec.id] = { answers, series };
    chart.setData(series, from, to);
    chart.setCsv(spec.queries.map((q) => ({
      name: q.name || q.metric,
      href: historyUrl(q, from, to, "csv"),
      file: `${this.fileStem}-${q.metric}-${from}-${to}.csv`,
    })));
  }
}
