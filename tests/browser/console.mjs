// The web console in a real browser: Debian's chromium, driven by playwright-core (nothing
// downloads a browser). tests/api/browser.rs starts a coordinator with API keys, real
// participants and the jobs named below, runs this script, then checks through the API what
// the clicks did. Every page also passes an axe-core accessibility check, and loads under its
// Content-Security-Policy (no inline code) with nothing refused: its stylesheet applied, its
// script running.
//
// Environment: TCC_BASE, TCC_USER and TCC_PASSWORD (an admin key, as HTTP Basic), CHROMIUM,
// JOB_LIVE and JOB_RESERVED (reserved jobs), JOB_HEURISTIC, JOB_COMPLETED, TAG (the tag of
// the live, reserved and completed jobs), NOTE (the resolution to record), DEFINITION (a job
// definition whose form takes hotel, nights, room and breakfast); SCREENSHOTS: a
// directory (relative to the repository's root) to write the README's screenshots to (optional).

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = require.resolve("axe-core/axe.min.js");

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
}

const base = env("TCC_BASE");
const [live, reserved, heuristic, completed] = ["JOB_LIVE", "JOB_RESERVED", "JOB_HEURISTIC", "JOB_COMPLETED"].map(env);
const tag = env("TAG");
const note = env("NOTE");
const definition = env("DEFINITION");
const secret = env("TCC_PASSWORD");

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

function step(name) {
  console.log(`step: ${name}`);
}

try {
  const context = await browser.newContext({
    httpCredentials: { username: env("TCC_USER"), password: secret },
    viewport: { width: 1180, height: 860 },
  });
  // Scripts added by the browser's driver are not the page's: the policy does not apply to them.
  await context.addInitScript({ path: axeSource });
  await context.addInitScript(() => {
    window.refusedByPolicy = [];
    document.addEventListener("securitypolicyviolation",
      (e) => window.refusedByPolicy.push(`${e.effectiveDirective}: ${e.blockedURI || "inline"}`));
  });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const scriptErrors = [];
  page.on("pageerror", (e) => scriptErrors.push(String(e)));
  // What the page did, shown when a step fails.
  const seen = [];
  page.on("console", (m) => seen.push(`console: ${m.text()}`));
  page.on("requestfailed", (r) => seen.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => seen.push(`${r.status()} ${r.request().method()} ${r.url()}`));

  const accessible = async (what) => {
    assert.deepEqual(await page.evaluate(() => window.refusedByPolicy), [],
      `${what}: nothing refused by the Content-Security-Policy`);
    assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector("header")).backgroundColor),
      "rgb(27, 31, 36)", `${what}: the stylesheet applies`);
    const violations = await page.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await axe.run(document, {
        runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
      });
      return r.violations.map((v) => `${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    });
    assert.deepEqual(violations, [], `${what}: accessibility violations`);
  };
  const screenshot = async (name) => {
    if (process.env.SCREENSHOTS) {
      // Relative to the repository's root.
      const dir = resolve(import.meta.dirname, "../..", process.env.SCREENSHOTS);
      await page.screenshot({ path: `${dir}/${name}.png`, fullPage: true });
    }
  };
  const jobsListed = async () =>
    page.locator("main tbody a code").allTextContents();
  const statusIs = async (status) => {
    try {
      await page.waitForFunction((s) => document.getElementById("job-status")?.textContent === s, status);
    } catch (e) {
      const shown = await page.textContent("#job-status").catch(() => "(none)");
      throw new Error(`${page.url()} shows ${shown}, not ${status}: ${e.message}\n${seen.slice(-30).join("\n")}`);
    }
  };

  step("the overview shows the unresolved heuristic first");
  let resp = await page.goto(`${base}/`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()["content-security-policy"] ?? "", /script-src 'self'/);
  assert.match(await page.locator("main h2").first().textContent(), /Unresolved heuristics: 1/);
  assert.ok(await page.locator(`main a[href$="/jobs/${heuristic}"]`).count() > 0, "the heuristic job is linked");
  await accessible("overview");

  step("the list shows every job, and filters");
  await page.click("header >> text=Jobs");
  await page.waitForURL(`${base}/jobs`);
  for (const id of [live, reserved, heuristic, completed]) {
    assert.ok((await jobsListed()).includes(id), `${id} is listed`);
  }
  await accessible("job list");
  await screenshot("console-jobs");
  await page.selectOption("#status", "reserved");
  await page.fill("#tag", tag);
  await page.click("form.filters button[type=submit]");
  await page.waitForURL(/status=reserved/);
  const filtered = await jobsListed();
  assert.deepEqual([...filtered].sort(), [live, reserved].sort(), "reserved jobs with the tag");
  assert.equal(await page.inputValue("#tag"), tag, "the form keeps the filter");
  await accessible("filtered job list");

  step("a running job's page turns completed without a reload");
  await page.click(`main a[href$="/jobs/${live}"]`);
  await page.waitForURL(`${base}/jobs/${live}`);
  assert.equal(await page.textContent("#job-status"), "reserved");
  await accessible("reserved job");
  await page.evaluate(() => { window.notReloaded = true; });
  // Confirmed by a client through the API, not by this page.
  const confirmed = await context.request.post(`${base}/jobs/${live}/confirm`, {
    headers: { Authorization: `Bearer ${secret}` },
  });
  assert.equal(confirmed.status(), 202);
  await statusIs("completed");
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  assert.equal(await page.getAttribute("#progress", "value"), "100");
  assert.ok((await page.textContent("#timeline")).includes("confirm by ops"), "the timeline shows who confirmed");
  await accessible("completed job");
  await screenshot("console-job");

  step("a reserved job is confirmed from its page");
  // The same job open in a browser without JavaScript: a page as it was loaded.
  const noScript = await browser.newContext({
    httpCredentials: { username: env("TCC_USER"), password: secret },
    javaScriptEnabled: false,
  });
  const stale = await noScript.newPage();
  await stale.goto(`${base}/jobs/${reserved}`);
  await page.goto(`${base}/jobs/${reserved}`);
  assert.equal(await page.locator("form.action-cancel input[name=confirmed][required]").count(), 1,
    "cancel asks for confirmation");
  await page.click("form.action-confirm button");
  await page.waitForURL(`${base}/jobs/${reserved}`);
  await statusIs("completed");

  step("an action the state no longer allows shows the problem's detail");
  await stale.check("form.action-cancel input[name=confirmed]");
  await stale.click("form.action-cancel button");
  await stale.waitForSelector(".refused");
  assert.match(await stale.textContent(".refused"), /already (confirming|completed)/);
  await noScript.close();

  step("a heuristic is resolved with a note from the heuristics page");
  await page.goto(`${base}/heuristics`);
  await accessible("heuristics");
  await screenshot("console-heuristics");
  const section = page.locator("section.heuristic", { has: page.locator(`a[href$="/jobs/${heuristic}"]`) });
  await section.locator("textarea[name=note]").fill(note);
  await section.locator("input[name=confirmed]").check();
  await section.locator("form.action-resolve button").click();
  await page.waitForURL(`${base}/jobs/${heuristic}`);
  assert.ok((await page.textContent("main blockquote")).includes(note), "the note is shown");
  assert.match(await page.textContent("main"), /By ops/);
  await accessible("resolved job");
  await page.goto(`${base}/heuristics`);
  assert.equal(await page.locator("section.heuristic").count(), 0, "no heuristic left");

  step("a completed job offers no action");
  await page.goto(`${base}/jobs/${completed}`);
  assert.equal(await page.textContent("#job-status"), "completed");
  assert.equal(await page.locator("main form").count(), 0, "no form");
  assert.match(await page.textContent("main"), /allows no action/);

  step("a task's page");
  await page.click("main tbody a");
  await page.waitForURL(/\/tasks\//);
  assert.match(await page.textContent("h1"), /Task/);
  await accessible("task");

  step("a job definition is listed, and its form is built from its parameter schema");
  await page.click("header >> text=Definitions");
  await page.waitForURL(`${base}/job-definitions`);
  await accessible("job definitions");
  await page.click(`main a[href$="/job-definitions/${definition}"]`);
  await page.waitForURL(`${base}/job-definitions/${definition}`);
  assert.match(await page.textContent("label[for=p-hotel]"), /required/, "hotel is marked required");
  assert.equal(await page.getAttribute("#p-hotel", "required"), "", "and the browser knows it");
  assert.doesNotMatch(await page.textContent("label[for=p-nights]"), /required/);
  assert.equal(await page.getAttribute("#p-nights", "type"), "number");
  assert.equal(await page.inputValue("#p-nights"), "2", "the default is filled in");
  assert.equal(await page.locator("select#p-room").count(), 1, "an enum is a select");
  assert.equal(await page.inputValue("#p-room"), "double", "the enum's default is chosen");
  assert.equal(await page.getAttribute("#p-breakfast", "type"), "checkbox");
  assert.match(await page.textContent("#p-hotel-help"), /lower-case letters/, "the description is the help");
  assert.match(await page.getAttribute("#p-hotel", "aria-describedby"), /p-hotel-help/);
  await accessible("job definition");
  await screenshot("console-definition");

  step("a value the schema refuses is shown beside its field");
  await page.fill("#p-hotel", "Sea Side");
  await page.fill("#p-nights", "3");
  await page.check("#p-breakfast");
  await page.click("form.start button[type=submit]");
  await page.waitForSelector("#p-hotel-error");
  assert.match(await page.textContent("#p-hotel-error"), /does not match/);
  assert.equal(await page.getAttribute("#p-hotel", "aria-invalid"), "true");
  assert.equal(await page.inputValue("#p-hotel"), "Sea Side", "what was entered is kept");
  assert.equal(await page.inputValue("#p-nights"), "3");
  assert.equal(await page.isChecked("#p-breakfast"), true);
  assert.equal(await page.locator("#p-nights-error").count(), 0, "nothing refused beside the others");
  await accessible("refused start");

  step("the form starts the job, and the browser follows it to its page");
  await page.fill("#p-hotel", "seaside");
  await page.click("form.start button[type=submit]");
  await page.waitForURL(/\/jobs\/[^/]+$/);
  await statusIs("completed");
  assert.match(await page.textContent("main"), new RegExp(`${definition}`), "the job names its definition");
  await accessible("job from a definition");

  step("a definition's versions, each a page");
  await page.click("main a >> text=" + definition);
  await page.waitForURL(`${base}/job-definitions/${definition}`);
  await page.click("text=Its versions");
  await page.waitForURL(`${base}/job-definitions/${definition}/versions`);
  await accessible("versions");
  await page.click("main tbody a");
  await page.waitForURL(`${base}/job-definitions/${definition}/versions/1`);
  assert.match(await page.textContent("h1"), /version 1/);
  await accessible("a version");

  step("a missing job is a page too");
  resp = await page.goto(`${base}/jobs/no-such-job`);
  assert.equal(resp.status(), 404);
  assert.match(await page.textContent("h1"), /404/);
  await accessible("problem");

  assert.deepEqual(scriptErrors, [], "no script failed");
  console.log("console: every step passed");
} finally {
  await browser.close();
}
