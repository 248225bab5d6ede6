// Drives Debian's Chromium (headless, through playwright-core) against a running
// `keyturn serve`, for crates/keyturn-cli/tests/serve.rs: open the token URL, find the
// due user on the fleet page, open it, click Rotate now, wait for the outcome, take
// screenshots. Prints one JSON line with what it saw; exits non-zero on any failure.
//
// Env: KEYTURN_URL (the URL serve printed, with ?token=), KEYTURN_USER,
// KEYTURN_SHOTS (screenshot directory), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const url = process.env.KEYTURN_URL;
const user = process.env.KEYTURN_USER;
const shots = process.env.KEYTURN_SHOTS;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!url || !user || !shots) {
  console.error("KEYTURN_URL, KEYTURN_USER and KEYTURN_SHOTS are required");
  process.exit(2);
}
fs.mkdirSync(shots, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "keyturn-chromium-"));

const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const seen = { consoleErrors: [] };
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") seen.consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => seen.consoleErrors.push(String(e)));
  await page.goto(url);
  // The token was traded for a cookie and dropped from the address bar.
  seen.fleetUrl = page.url();
  const row = page.locator(`#fleet tr[data-user="${user}"]`);
  await row.waitFor({ timeout: 30000 });
  seen.fleetOutcome = await row.locator(".badge").getAttribute("data-outcome");
  seen.fleetBadge = await row.locator(".badge").textContent();
  seen.scripts = await page.locator("script").count();
  await page.screenshot({ path: path.join(shots, "fleet.png"), fullPage: true });

  await row.locator("a").first().click();
  await page.locator("#rotate").waitFor({ timeout: 30000 });
  seen.userOutcomeBefore = await page.locator("#outcome .badge").textContent();
  await page.screenshot({ path: path.join(shots, "user-before.png"), fullPage: true });

  await page.locator("#rotate").click();
  await page.waitForFunction(
    () => /^(finished|error)/.test(document.getElementById("progress").textContent),
    null,
    { timeout: 120000 }
  );
  seen.progress = await page.locator("#progress").textContent();
  seen.steps = await page.locator("#steps li").allTextContents();
  seen.userOutcomeAfter = await page.locator("#outcome .badge").textContent();
  await page.screenshot({ path: path.join(shots, "user-after.png"), fullPage: true });

  // A reload shows the journal's history of the new run.
  await page.reload();
  seen.historyRows = await page.locator("table.runs tbody tr").count();
  await page.screenshot({ path: path.join(shots, "user-reloaded.png"), fullPage: true });
  await page.goto(new URL("/runs", url).toString());
  await page.screenshot({ path: path.join(shots, "runs.png"), fullPage: true });
  console.log(JSON.stringify(seen));
} catch (e) {
  console.log(JSON.stringify(seen));
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
