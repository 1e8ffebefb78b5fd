// Drives headless Chromium (Debian's) against the agent's page, for tests/tests/ui.rs:
//   node overview.mjs <agent URL> <tunnel> <payload bytes> <screenshot dir>
// Checks the tunnel row shows the exact payload bytes, then prints "ready" and waits for a line
// on stdin (the test closes the tunnel's listener meanwhile) and checks the row turns down with
// its reason, without a reload. Fails on any console error or any request to another origin.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, tunnel, payload, shots] = process.argv.slice(2);
const origin = new URL(url).origin;
const problems = [];

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    if (!r.url().startsWith(origin + "/")) problems.push(`request elsewhere: ${r.url()}`);
  });
  await page.goto(url);
  const row = page.locator(`tr[data-tunnel="${tunnel}"]`);
  const want = Number(payload).toLocaleString("en-US");
  await row.locator("td.payload-in").filter({ hasText: want }).waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/overview-1280x800.png` });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${shots}/overview-390x844.png` });
  await page.setViewportSize({ width: 1280, height: 800 });
  // Sorting by a header is a click (and a key press) away.
  await page.locator('th button[data-key="up"]').focus();
  await page.keyboard.press("Enter");
  const sorted = await page.locator('th[aria-sort]').count();
  if (sorted !== 1) problems.push(`sorting: ${sorted} sorted columns`);
  console.log("ready");

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) { if (line.trim() === "closed") break; }
  const started = Date.now();
  await row.locator("td span.down").waitFor({ timeout: 15000 });
  const reason = (await row.locator("td span.reason").textContent()) ?? "";
  console.log(JSON.stringify({ down_after_ms: Date.now() - started, reason }));
  if (!reason) problems.push("down without a reason");
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
