#!/usr/bin/env node
// Drive the page in headless Chromium and print what it ranked, as JSON on stdout:
//
//   node examples/web/check_page.mjs URL [--chromium /usr/bin/chromium] [--screenshot OUT.png]
//
// URL is the page served over HTTP (e.g. http://127.0.0.1:8000/examples/web/). For every shopper it reads
// the ranking the page shows by default, then two more: the regular (the longest history) after clicking
// a new arrival (an unseen id at the end of a history longer than max_len), and the new visitor with
// every category chosen (the whole catalogue). Each entry: {shopper, request, rows: [{item_id, cate_id,
// price, score, oov}]}, score being the page's float32 in its shortest form. tests/test_embed_web.py
// rescores the same rows in Python. --screenshot saves the page as it first opens. Exit status 1 when the
// page reports an error or logs one.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import process from "node:process";
import puppeteer from "puppeteer-core";

const WAIT_MS = 60_000;

function parseArgs(argv) {
  const opts = { url: null, chromium: "/usr/bin/chromium", screenshot: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--chromium" || argv[i] === "--screenshot") {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      opts[argv[i].slice(2)] = argv[++i];
    } else if (opts.url === null && !argv[i].startsWith("-")) {
      opts.url = argv[i];
    } else {
      throw new Error(`unexpected argument ${argv[i]}`);
    }
  }
  if (!opts.url) throw new Error("usage: node check_page.mjs URL [--chromium PATH] [--screenshot OUT.png]");
  return opts;
}

/** Waits until the table was rendered more than `after` times, or the page failed. */
async function rendered(page, after) {
  await page.waitForFunction((n) => document.body.dataset.error
    || Number(document.getElementById("ranking").dataset.generation) > n, { timeout: WAIT_MS }, after);
  const error = await page.evaluate(() => document.body.dataset.error);
  if (error) throw new Error(`the page failed: ${error}`);
}

const generation = (page) => page.$eval("#ranking", (t) => Number(t.dataset.generation));

/** Does `act` on the page and waits for the ranking it causes. */
async function after(page, act) {
  const n = await generation(page);
  await act();
  await rendered(page, n);
}

function readRanking(page, shopper) {
  return page.evaluate((name) => {
    const table = document.getElementById("ranking");
    const rows = [...table.tBodies[0].rows].map((tr) => ({
      item_id: tr.dataset.item, cate_id: tr.dataset.cate, price: Number(tr.dataset.price),
      score: tr.dataset.score, oov: Number(tr.dataset.oov) }));
    return { shopper: name, request: JSON.parse(table.dataset.request), rows };
  }, shopper);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const profile = mkdtempSync(path.join(tmpdir(), "din-web-chromium-"));
  const problems = [];
  const browser = await puppeteer.launch({
    executablePath: opts.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", `--user-data-dir=${profile}`],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1180, height: 760 });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
    await page.goto(opts.url, { waitUntil: "load" });
    await rendered(page, 0);
    if (opts.screenshot) {
      await page.select("#shopper", "2");
      await rendered(page, 1);
      await page.screenshot({ path: opts.screenshot, type: "png" });
    }

    const shoppers = await page.$$eval("#shopper option", (os) => os.map((o) => ({ value: o.value, name: o.textContent })));
    const rankings = [];
    for (const s of shoppers) {
      await after(page, () => page.select("#shopper", s.value));
      rankings.push(await readRanking(page, s.name));
    }
    // The regular: click the first new arrival, so the history (longer than max_len) ends with an unseen id.
    const longest = shoppers.at(-1);
    await after(page, () => page.select("#shopper", longest.value));
    await after(page, () => page.$eval("#ranking tbody tr:has(.tag)", (tr) => tr.click()));
    rankings.push(await readRanking(page, `${longest.name}, after clicking a new arrival`));
    // The new visitor with every category: the whole catalogue, empty history.
    await after(page, () => page.select("#shopper", shoppers[0].value));
    for (const chip of await page.$$("#categories button[aria-pressed='false']")) {
      await after(page, () => chip.click());
    }
    rankings.push(await readRanking(page, `${shoppers[0].name}, every category`));

    const error = await page.evaluate(() => document.body.dataset.error);
    if (error) problems.push(`the page failed: ${error}`);
    process.stdout.write(`${JSON.stringify({ url: opts.url, browser: await browser.version(), rankings })}\n`);
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
  if (problems.length) throw new Error(problems.join("\n"));
}

main().catch((e) => {
  process.stderr.write(`Error: ${e.message}\n`);
  process.exit(1);
});
