// The page's cost in the browser, for `cargo xtask bench-page`:
//   node bench-page.mjs <agent URL> <seconds>
// Opens the tunnel table and reads Chromium's main-thread time (DevTools protocol
// Performance.getMetrics: TaskDuration, LayoutDuration, ScriptDuration) over <seconds>, first
// as the page opens (the first 200 rows drawn), then after "Show all" (every row): an A/B in one
// run. Then the same for a tunnel's page (its charts, live). Prints one JSON line.
import { chromium } from "playwright-core";

const [url, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  const metrics = async () =>
    Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
  const window = async () => {
    const a = await metrics();
    await page.waitForTimeout(Number(seconds) * 1000);
    const b = await metrics();
    const per = (k) => (b[k] - a[k]) / Number(seconds);
    return { task: per("TaskDuration"), layout: per("LayoutDuration"), script: per("ScriptDuration") };
  };
  await page.goto(url);
  await page.locator("#tunnels tbody tr").first().waitFor({ timeout: 60000 });
  await page.waitForTimeout(2000);
  out.tunnels = await page.evaluate(() => document.getElementById("count").textContent);
  out.rows_default = await page.locator("#tunnels tbody tr").count();
  out.default = await window();
  if (await page.locator("#more").isVisible()) {
    await page.locator("#more").click();
    await page.waitForTimeout(2000);
  }
  out.rows_all = await page.locator("#tunnels tbody tr").count();
  out.all = await window();
  await page.locator("#tunnels tbody tr td.name a").first().click();
  await page.waitForFunction(() => window.moonfrpPanels?.data?.bandwidth, null, { timeout: 60000 });
  out.tunnel_page = await window();
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
