// What every view of the page shares: number formats, element helpers and the API fetch.
// Every name shown comes from whoever runs an frpc: text nodes only, never HTML.

export function bytes(v, perSecond) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  const s = i === 0 ? String(Math.round(x * 10) / 10) : x.toFixed(x >= 100 ? 0 : 1);
  return (v < 0 ? "-" : "") + s + " " + units[i] + (perSecond ? "/s" : "");
}

export const perSecond = (v) => bytes(v, true);

export function exact(v) {
  return v === null || v === undefined ? "–" : v.toLocaleString("en-US");
}

export function num(v, digits) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

/// A short number for an axis or a value: 1.5k, 2.3M, 0.25.
export function short(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || a === 0) return String(Math.round(v));
  if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
  return v.toPrecision(2);
}

/// Seconds as a duration: 850 ms, 12 s, 3.5 min, 2.1 h.
export function seconds(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  if (v < 1) return `${Math.round(v * 1000)} ms`;
  if (v < 120) return `${short(v)} s`;
  if (v < 7200) return `${(v / 60).toFixed(1)} min`;
  return `${(v / 3600).toFixed(1)} h`;
}

export const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

export function cell(text, cls, title) {
  const td = el("td", cls, text);
  if (title) td.title = title;
  return td;
}

/// The agent's answer to `path` (same origin), its `data` on success; otherwise an Error with
/// the API's own message and `status`.
export async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  if (!r.ok || !body || body.status !== "success") {
    const e = new Error(body?.error ?? `HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return body.data;
}

/// A link to a tunnel's page.
export function tunnelHref(name) {
  return `#/tunnel/${encodeURIComponent(name)}`;
}

/// Labels as `k=v, …` (for alert rows; the alert's name and severity have columns of their own).
export function labelText(labels) {
  return Object.entries(labels ?? {})
    .filter(([k]) => k !== "alertname" && k !== "severity")
    .map(([k, v]) => `${k}=${v}`).join(", ");
}

/// A Unix time in seconds as a local date and time.
export function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "–";
}

/// The line under the header: what was loaded and when, or what went wrong.
export function status(text, error) {
  const st = document.getElementById("state");
  st.className = error ? "state error" : "state";
  st.textContent = text;
}
