// Browser side of the VS Code e2e test: opens code-server in headless Chromium (Debian's, through
// playwright-core), reads the ghost text off the page, tells the harness extension that it is
// shown, and checks what the harness reports after the commit.
// usage: node drive.js URL E2E_DIR SCREENSHOT.png
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, dir, shot] = process.argv.slice(2);
let passes = 0, failures = 0;
function check(name, ok, detail) {
  if (ok) { passes++; console.log(`PASS ${name}`); } else { failures++; console.log(`FAIL ${name}: ${detail}`); }
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(ms, fn) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(250);
  }
}
const readJson = (name) => {
  const f = path.join(dir, name);
  try { return JSON.parse(fs.readFileSync(f, "utf8")); } catch { return undefined; }
};

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
    check("the workbench loads", await waitFor(120000, () => page.locator(".monaco-workbench").count()), "no .monaco-workbench");

    const state = await waitFor(180000, () => readJson("state.json") || (readJson("result.json")?.error && readJson("result.json")));
    check("the harness got the server's suggestion through the extension's client", state && state.expected, JSON.stringify(state || readJson("log.json")));
    const expected = state && state.expected;
    console.log(`server suggests: ${JSON.stringify(expected)}`);

    // The ghost text is rendered as decorations after the cursor.
    const ghost = await waitFor(120000, async () => {
      const t = await page.evaluate(() =>
        Array.from(document.querySelectorAll(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview"))
          .map((e) => e.textContent).join(""));
      const text = (t || "").replace(/\u00a0/g, " ");
      return text && (!expected || text === expected) ? text : undefined;
    });
    if (shot) await page.screenshot({ path: shot });
    check("the inline suggestion is shown as ghost text", ghost !== undefined && ghost === expected,
      `ghost ${JSON.stringify(ghost)}, expected ${JSON.stringify(expected)}`);
    fs.writeFileSync(path.join(dir, "ghost.json"), JSON.stringify({ text: ghost ?? null }));

    const result = await waitFor(60000, () => { const r = readJson("result.json"); return r && (r.phase === "done" || r.error) && r; });
    console.log(`harness: ${JSON.stringify(result)}`);
    check("the harness finished", result && result.phase === "done", JSON.stringify(result));
    if (result) {
      check("the extension activates", result.activated === true, JSON.stringify(result));
      check("the document is python", result.languageId === "python", result.languageId);
      check("commit inserts the suggestion", result.lineAfter === result.lineBefore + expected,
        `line ${JSON.stringify(result.lineAfter)}, want ${JSON.stringify(result.lineBefore + expected)}`);
      check("the cursor ends after the suggestion", result.cursorAfter === (result.lineBefore + expected).length, String(result.cursorAfter));
      const model = path.basename(process.env.FORESIGHT_MODEL || "");
      check("the status bar item shows the model, the latency and tokens per forward",
        new RegExp(`Foresight: ${model} · \\d+ ms · \\d+\\.\\d\\d tok/fwd`).test(result.statusText || ""), result.statusText);
    }
    const bar = await page.evaluate(() =>
      Array.from(document.querySelectorAll(".statusbar-item")).map((e) => e.textContent).filter((t) => t.includes("Foresight")).join(" | "));
    console.log(`status bar on the page: ${JSON.stringify(bar)}`);
    check("the status bar item is on the page", bar.includes("Foresight"), bar);
    if (shot) await page.screenshot({ path: shot });
  } catch (e) {
    check("driver", false, e.stack || String(e));
  } finally {
    await browser.close();
  }
  console.log(`${passes} passed, ${failures} failed`);
  process.exit(failures === 0 && passes > 0 ? 0 : 1);
})();
