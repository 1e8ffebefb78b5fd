// Drives headless Chromium (Debian's) through every page of the agent, for tests/tests/ui.rs:
//   node pages.mjs <agent URL> <tunnel> <payload bytes> <screenshot dir> <hostile tunnel name>
// 1. Overview: the tunnel row shows the exact payload bytes; sorting works from the keyboard;
//    a tunnel named like markup shows as text and its page opens; dark by the system setting.
//    Prints "ready" and waits for "closed" on stdin (the test closes the tunnel's listener and
//    makes a refused connection meanwhile); the row turns down with its reason, no reload.
// 2. Tunnel page: the bandwidth chart's points are the history API's for the same range; a
//    drag (and a key) zooms, and the page asks the API for the narrower range; the CSV download
//    is the API's CSV byte for byte; the PNG download is a PNG.
// 3. Alerts page: the refused connection's alert is in the notification log.
// 4. Host page: CPU and filesystem charts have data.
// Screenshots of each page at 1280x800 and 390x844. Fails on any console error or any request
// to another origin. Prints one JSON line of findings at the end.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { readFile } from "node:fs/promises";

const [url, tunnel, payload, shots, hostile] = process.argv.slice(2);
const origin = new URL(url).origin;
const problems = [];
const found = {};
const check = (ok, what) => { if (!ok) problems.push(what); };
const until = async (cond, what) => {
  for (let i = 0; i < 150 && !cond(); i++) await new Promise((r) => setTimeout(r, 100));
  check(cond(), what);
};

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const history = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("dialog", (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  page.on("request", (r) => {
    if (!r.url().startsWith(origin + "/")) problems.push(`request elsewhere: ${r.url()}`);
    if (r.url().includes("/api/v1/history?metric=moonfrp_tunnel_receive_bytes_total&")) history.push(r.url());
  });
  const shoot = async (name) => {
    await page.screenshot({ path: `${shots}/${name}-1280x800.png` });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    await page.screenshot({ path: `${shots}/${name}-390x844.png` });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.waitForTimeout(300);
  };

  // 1. Overview.
  await page.goto(url);
  const row = page.locator(`tr[data-tunnel="${tunnel}"]`);
  const want = Number(payload).toLocaleString("en-US");
  await row.locator("td.payload-in").filter({ hasText: want }).waitFor({ timeout: 15000 });
  check(await row.locator("td.spark canvas").count() === 1, "no sparkline in the row");
  await page.locator('th button[data-key="up"]').focus();
  await page.keyboard.press("Enter");
  check(await page.locator("th[aria-sort]").count() === 1, "sorting from the keyboard");
  // The hostile name is text in its row, and its page opens from the link.
  const shown = await page.evaluate((name) => {
    const tr = [...document.querySelectorAll("#tunnels tbody tr")].find((r) => r.dataset.tunnel === name);
    return { text: tr?.querySelector("td.name").textContent, markup: document.querySelectorAll("#tunnels tbody img, #tunnels tbody b").length };
  }, hostile);
  check(shown.text === hostile && shown.markup === 0, `hostile name shown as ${JSON.stringify(shown)}`);
  await page.evaluate((name) => [...document.querySelectorAll("#tunnels tbody tr")].find((r) => r.dataset.tunnel === name).querySelector("a").click(), hostile);
  await page.locator("#view-tunnel:not([hidden])").waitFor();
  check(await page.locator("#tunnel-name").textContent() === hostile, "the hostile tunnel's page has another name");
  await page.waitForFunction(() => window.moonfrpPanels?.data?.bandwidth, null, { timeout: 15000 });
  const asked = history.filter((u) => new URL(u).searchParams.get("tunnel") === hostile).length;
  check(asked > 0, "the hostile tunnel's page asked for another tunnel's history");
  await page.goBack();
  await row.waitFor();
  // Light and dark follow the system setting.
  await page.emulateMedia({ colorScheme: "dark" });
  found.dark_background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: "light" });
  found.light_background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(found.dark_background !== found.light_background, "no dark scheme");
  await shoot("overview");
  console.log("ready");
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) { if (line.trim() === "closed") break; }
  const started = Date.now();
  await row.locator("td span.down").waitFor({ timeout: 15000 });
  found.down_after_ms = Date.now() - started;
  found.reason = (await row.locator("td span.reason").textContent()) ?? "";
  check(found.reason !== "", "down without a reason");

  // 2. The tunnel page, from the row's link.
  await row.locator("td.name a").click();
  await page.locator("#view-tunnel:not([hidden])").waitFor();
  const bandwidth = page.locator("#chart-bandwidth");
  await page.waitForFunction(() => window.moonfrpPanels?.data?.bandwidth?.series?.some((s) => s.points.length > 1),
    null, { timeout: 15000 });
  await page.locator("#peers tbody tr").first().waitFor({ timeout: 15000 });
  // A few seconds of samples (the 1h button reloads the range at once).
  for (let i = 0; i < 30; i++) {
    const n = await page.evaluate(() => window.moonfrpPanels.data.bandwidth.series.find((s) => s.name === "in")?.points.length ?? 0);
    if (n >= 6) break;
    await page.waitForTimeout(1000);
    await page.locator('.range button[data-range="1h"]').click();
    await page.waitForTimeout(300);
  }
  found.first_range = history[history.length - 1];
  await shoot("tunnel");
  // Drag from 60 px inside the plot's right end to past it: the last minutes, where the traffic is.
  const box = await bandwidth.locator("canvas.overlay").boundingBox();
  const before = history.length;
  await page.mouse.move(box.x + box.width - 72, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width - 40, box.y + box.height / 2, { steps: 4 });
  await page.mouse.move(box.x + box.width - 2, box.y + box.height / 2, { steps: 4 });
  await page.mouse.up();
  await until(() => history.length > before, "the zoom asked the API for nothing");
  const zoomed = history[history.length - 1];
  found.zoomed_range = zoomed;
  const range = (u) => { const p = new URL(u).searchParams; return [Number(p.get("from")), Number(p.get("to"))]; };
  const [f0, t0] = range(found.first_range);
  const [f1, t1] = range(zoomed);
  check(f1 > f0 && t1 <= t0 && t1 - f1 < (t0 - f0) / 5, `zoom: ${f0}..${t0} then ${f1}..${t1}`);
  await page.waitForFunction((f) => window.moonfrpPanels.from === f && window.moonfrpPanels.data.bandwidth.answers[0].from === f,
    range(zoomed)[0], { timeout: 15000 });
  // The chart's points are what the API answers for the same range.
  const api = await (await page.request.get(zoomed)).json();
  const drawn = await page.evaluate(() => window.moonfrpPanels.data.bandwidth.series.map((s) => ({ name: s.name, points: s.points })));
  const apiIn = api.data.series.map((s) => s.samples);
  const chartIn = drawn.filter((s) => s.name === "in").map((s) => s.points);
  found.points = chartIn.flat().length;
  check(found.points >= 5, `the zoomed chart has ${found.points} points`);
  check(JSON.stringify(apiIn) === JSON.stringify(chartIn), `chart points differ from the API's: ${JSON.stringify(chartIn).slice(0, 300)} vs ${JSON.stringify(apiIn).slice(0, 300)}`);
  // CSV: the API's own, byte for byte.
  await bandwidth.locator("details.menu summary").click();
  const link = bandwidth.locator("a.csv-link", { hasText: /^in$/ });
  const href = await link.getAttribute("href");
  const [csvDownload] = await Promise.all([page.waitForEvent("download"), link.click()]);
  const csv = await readFile(await csvDownload.path(), "utf8");
  const csvApi = await (await page.request.get(new URL(href, origin).href)).text();
  found.csv_lines = csv.trim().split("\n").length;
  check(found.csv_lines >= 6, `CSV of ${found.csv_lines} lines`);
  check(csv === csvApi && csv.startsWith("timestamp,time,metric,"), `CSV differs from the API's:\n${csv.slice(0, 200)}\n${csvApi.slice(0, 200)}`);
  const [pngDownload] = await Promise.all([page.waitForEvent("download"), bandwidth.locator("button.png").click()]);
  const png = await readFile(await pngDownload.path());
  found.png_bytes = png.length;
  check(png.subarray(1, 4).toString() === "PNG" && png.length > 2000, `PNG export: ${png.length} bytes`);

  // Hovering shows the values and their time.
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  const tip = bandwidth.locator(".tip");
  await tip.waitFor({ state: "visible", timeout: 5000 });
  found.hover = (await tip.textContent()) ?? "";
  check(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/.test(found.hover) && found.hover.includes("in"), `hover: ${found.hover}`);
  // The keyboard zooms too: + on the focused chart halves the range.
  const beforeKey = history.length;
  await bandwidth.locator("canvas.overlay").focus();
  await page.keyboard.press("+");
  await until(() => history.length > beforeKey, "the + key asked the API for nothing");
  if (history.length > beforeKey) {
    const [f2, t2] = range(history[history.length - 1]);
    check(t2 - f2 < t1 - f1, `+ key: ${f1}..${t1} then ${f2}..${t2}`);
  }

  // Longer ranges: the page asks for them (raw or rollups, as the API picks) and draws them.
  for (const [label, secs] of [["7d", 7 * 86400], ["90d", 90 * 86400]]) {
    const n = history.length;
    await page.locator(`.range button[data-range="${label}"]`).click();
    await until(() => history.length > n, `${label} asked the API for nothing`);
    const [f, t] = range(history[history.length - 1]);
    check(t - f === secs, `${label}: ${f}..${t}`);
    await page.waitForFunction((f) => window.moonfrpPanels.data.bandwidth.answers[0].from === f, f, { timeout: 15000 });
    const pts = await page.evaluate(() => window.moonfrpPanels.data.bandwidth.series.find((s) => s.name === "in")?.points.length ?? 0);
    check(pts > 0, `${label}: no points`);
  }

  // 3. Alerts.
  await page.locator('nav a[data-view="alerts"]').click();
  const logged = page.locator("#alerts-log tbody tr", { hasText: "TunnelConnectionsRefused" }).filter({ hasText: `tunnel=${tunnel}` });
  await logged.first().waitFor({ timeout: 15000 });
  found.alert_log_rows = await page.locator("#alerts-log tbody tr").count();
  await page.locator("#alerts-active tbody tr", { hasText: "TunnelDown" }).first().waitFor({ timeout: 15000 });
  await shoot("alerts");

  // 4. Host.
  await page.locator('nav a[data-view="host"]').click();
  await page.waitForFunction(() => window.moonfrpPanels?.data?.cpu?.series?.some((s) => s.points.length > 1)
    && window.moonfrpPanels?.data?.filesystems?.series?.length > 0, null, { timeout: 15000 });
  found.cpu_modes = await page.evaluate(() => window.moonfrpPanels.data.cpu.series.map((s) => s.name));
  check(await page.locator("#filesystems tbody tr").count() > 0, "no filesystem rows");
  await shoot("host");
} finally {
  await browser.close();
}
console.log(JSON.stringify(found));
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
