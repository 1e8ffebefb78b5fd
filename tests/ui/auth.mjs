// The page behind basic auth, for tests/tests/ui.rs:
//   node auth.mjs <agent URL> <user> <password>
// Without credentials the browser gets the agent's 401 and its Basic challenge (what makes it
// ask); with them the page loads and its own API calls work (the tunnel table fills).
import { chromium } from "playwright-core";

const [url, user, password] = process.argv.slice(2);
const problems = [];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  // Without credentials: the agent's challenge (the request a browser makes first), and a
  // navigation the browser cannot complete without asking.
  const anonymous = await browser.newContext();
  const r = await anonymous.request.get(url);
  const challenge = r.headers()["www-authenticate"] ?? "";
  if (r.status() !== 401 || !challenge.startsWith("Basic")) {
    problems.push(`without credentials: ${r.status()} ${challenge}`);
  }
  const refused = await (await anonymous.newPage()).goto(url).then(() => "loaded", (e) => e.message);
  if (!refused.includes("ERR_INVALID_AUTH_CREDENTIALS")) {
    problems.push(`without credentials the page ${refused}`);
  }
  const context = await browser.newContext({ httpCredentials: { username: user, password } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const ok = await page.goto(url);
  if (ok.status() !== 200) problems.push(`with credentials: ${ok.status()}`);
  await page.locator("#tunnels tbody tr").first().waitFor({ timeout: 15000 });
  console.log(JSON.stringify({ rows: await page.locator("#tunnels tbody tr").count() }));
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
