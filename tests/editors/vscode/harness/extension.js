// Test-only extension for tests/editors/vscode: runs in code-server's extension host next to the
// Foresight extension, when the workspace has a .foresight-e2e/ folder. It writes what it sees to
// .foresight-e2e/*.json, and waits for the browser-side driver (drive.js) where only the page can
// tell (whether the ghost text is on screen).
const vscode = require("vscode");
const fs = require("fs");
const path = require("path");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(ms, fn) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(200);
  }
}

async function run(dir) {
  const out = (name, obj) => fs.writeFileSync(path.join(dir, name), JSON.stringify(obj, null, 2));
  const log = [];
  const note = (s) => { log.push(s); out("log.json", log); };
  const result = { phase: "start" };
  try {
    const ext = vscode.extensions.getExtension("foresight.foresight");
    result.extensionFound = !!ext;
    const api = await ext.activate();
    result.activated = ext.isActive;
    note("foresight activated");

    const folder = vscode.workspace.workspaceFolders[0].uri;
    const doc = await vscode.workspace.openTextDocument(vscode.Uri.joinPath(folder, "sample.py"));
    const editor = await vscode.window.showTextDocument(doc);
    let row = doc.lineCount - 1;
    while (row > 0 && doc.lineAt(row).text === "") row--;
    const lineBefore = doc.lineAt(row).text;
    const pos = new vscode.Position(row, lineBefore.length);
    editor.selection = new vscode.Selection(pos, pos);
    result.lineBefore = lineBefore;
    result.languageId = doc.languageId;

    // What the server suggests here, asked directly through the extension's own client.
    const client = await waitFor(60000, () => { const c = api.client(); return c && c.isRunning() && c; });
    result.clientRunning = !!client;
    note("client running");
    const params = { textDocument: { uri: client.code2ProtocolConverter.asUri(doc.uri) }, position: { line: row, character: pos.character }, context: { triggerKind: 1 } };
    const items = await waitFor(90000, async () => {
      const r = await client.sendRequest("textDocument/inlineCompletion", params);
      const it = r && (r.items || r);
      return it && it.length ? it : undefined;
    });
    result.expected = items && items[0].insertText;
    note(`server suggests ${JSON.stringify(result.expected)}`);
    result.phase = "triggered";
    out("state.json", result);

    // Ghost text: trigger it until the driver reports it on screen.
    const ghost = await waitFor(120000, async () => {
      const f = path.join(dir, "ghost.json");
      if (fs.existsSync(f)) return JSON.parse(fs.readFileSync(f, "utf8"));
      if (!waitFor.last || Date.now() - waitFor.last > 5000) {
        waitFor.last = Date.now();
        editor.selection = new vscode.Selection(pos, pos);
        await vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
      }
      return undefined;
    });
    result.ghostReported = !!ghost;
    note("driver saw the ghost text: " + JSON.stringify(ghost));

    // Commit: the suggestion goes into the document.
    await vscode.commands.executeCommand("editor.action.inlineSuggest.commit");
    await waitFor(10000, () => doc.lineAt(row).text !== lineBefore);
    result.lineAfter = doc.lineAt(row).text;
    result.cursorAfter = editor.selection.active.character;
    result.statusText = api.statusText();
    result.lastLatencyMs = api.lastLatencyMs();
    result.settingsSent = api.serverSettings();
    result.phase = "done";
  } catch (e) {
    result.error = String(e && e.stack || e);
  }
  out("result.json", result);
}

function activate() {
  const folder = vscode.workspace.workspaceFolders && vscode.workspace.workspaceFolders[0];
  if (!folder) return;
  const dir = path.join(folder.uri.fsPath, ".foresight-e2e");
  if (!fs.existsSync(dir)) return;
  run(dir);
}

module.exports = { activate };
