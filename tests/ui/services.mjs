// Opens the agent's host page in headless Chromium (Debian's) for tests/tests/services.rs:
//   node services.mjs <agent URL> <name>...
// waits until the "Services and containers now" table has a row for every name, and prints one
// JSON line: each row's cells by name. Fails on any console error or request to another origin.
import { chromium } from "playwright-core";

const [url, ...names] = process.argv.slice(2);
const origin = new URL(url).origin;
const problems = [];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let rows = {};
try {
  const page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    if (!r.url().startsWith(origin + "/")) problems.push(`request elsewhere: ${r.url()}`);
  });
  await page.goto(new URL("#/host", url).href);
  await page.waitForFunction((want) => {
    const have = [...document.querySelectorAll("#services tbody tr")].map((r) => r.dataset.name);
    return want.every((n) => have.includes(n));
  }, names, { timeout: 20000 });
  rows = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("#services tbody tr")]
    .map((r) => [r.dataset.name, [...r.cells].map((c) => c.textContent)])));
} catch (e) {
  problems.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(rows));
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
