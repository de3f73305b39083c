// Foresight for VS Code: starts `foresight serve` with vscode-languageclient, whose proposed
// features carry textDocument/inlineCompletion (ghost text). Settings go to the server as
// initializationOptions and, live, through workspace/didChangeConfiguration. A status bar item
// shows the model, the last latency and tokens per forward pass, and toggles suggestions.
import * as vscode from "vscode";
import * as os from "os";
import * as path from "path";
import { spawn } from "child_process";
import { LanguageClient, LanguageClientOptions, ServerOptions, State } from "vscode-languageclient/node";

/** The reply to foresight/stats (camelCase; older servers used snake_case). */
interface WorkerStats {
  completions?: number;
  generatedTokens?: number;
  generated_tokens?: number;
  forwards?: number;
  model?: { dir: string; heads: number; load_ms?: number; loadMs?: number } | null;
}

function tokensPerForward(s: WorkerStats | undefined): string | undefined {
  const tokens = s?.generatedTokens ?? s?.generated_tokens ?? 0;
  return s?.forwards ? (tokens / s.forwards).toFixed(2) : undefined;
}

/** What the extension gives other extensions (and the end-to-end test). */
export interface ForesightApi {
  client(): LanguageClient | undefined;
  serverSettings(): Record<string, unknown>;
  statusText(): string;
  lastLatencyMs(): number | undefined;
}

let client: LanguageClient | undefined;
let output: vscode.OutputChannel;
let status: vscode.StatusBarItem;
let lastLatencyMs: number | undefined;
let lastStats: WorkerStats | undefined;

function cfg() {
  return vscode.workspace.getConfiguration("foresight");
}

function expandHome(p: string): string {
  return p.startsWith("~/") ? path.join(os.homedir(), p.slice(2)) : p;
}

/** The server settings: initializationOptions and the `foresight` section of didChangeConfiguration. */
export function serverSettings(): Record<string, unknown> {
  const c = cfg();
  const s: Record<string, unknown> = { ...(c.get<Record<string, unknown>>("settings") ?? {}) };
  const model = c.get<string>("model");
  if (model) s.model = expandHome(model);
  const device = c.get<string>("device");
  if (device) s.device = device;
  const maxTokens = c.get<number | null>("maxTokens");
  if (maxTokens) s.maxTokens = maxTokens;
  return s;
}

function enabled(): boolean {
  return cfg().get<boolean>("enable", true);
}

function statusText(): string {
  if (!enabled()) return "$(circle-slash) Foresight";
  if (!client || client.state !== State.Running) return "$(sync~spin) Foresight";
  const parts: string[] = [];
  const dir = lastStats?.model?.dir;
  parts.push(dir ? path.basename(dir) : "no model");
  if (lastLatencyMs !== undefined) parts.push(`${lastLatencyMs} ms`);
  const tpf = tokensPerForward(lastStats);
  if (tpf) parts.push(`${tpf} tok/fwd`);
  return `$(sparkle) Foresight: ${parts.join(" · ")}`;
}

function updateStatus() {
  status.text = statusText();
  const m = lastStats?.model;
  status.tooltip = new vscode.MarkdownString(
    [
      enabled() ? "Suggestions on (click to turn off)" : "Suggestions off (click to turn on)",
      m ? `Model: \`${m.dir}\` (${m.heads} heads, loaded in ${Math.round(m.loadMs ?? m.load_ms ?? 0)} ms)` : "Model: not loaded yet",
      lastLatencyMs !== undefined ? `Last suggestion: ${lastLatencyMs} ms` : "",
      tokensPerForward(lastStats) ? `Tokens per forward pass: ${tokensPerForward(lastStats)} (over ${lastStats?.forwards} forwards)` : "",
    ].filter(Boolean).join("\n\n"),
  );
}

async function refreshStats() {
  if (!client || client.state !== State.Running) return updateStatus();
  try {
    // No params at all: the server rejects `{}` for this method.
    lastStats = await client.sendRequest<WorkerStats>("foresight/stats");
  } catch {
    // an older server without foresight/stats: keep what we have
  }
  updateStatus();
}

function makeClient(): LanguageClient {
  const command = expandHome(cfg().get<string>("serverPath") || "foresight");
  const serverOptions: ServerOptions = { command, args: ["serve"] };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: serverSettings(),
    outputChannel: output,
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!enabled()) return null;
        const t0 = Date.now();
        const result = await next(document, position, context, token);
        if (!token.isCancellationRequested) {
          lastLatencyMs = Date.now() - t0;
          void refreshStats();
        }
        return result;
      },
      provideCompletionItem: async (document, position, context, token, next) => {
        if (!enabled() || !cfg().get<boolean>("completionMenu", false)) return null;
        return next(document, position, context, token);
      },
    },
  };
  const c = new LanguageClient("foresight", "Foresight", serverOptions, clientOptions);
  c.registerProposedFeatures(); // textDocument/inlineCompletion (LSP 3.18)
  c.onDidChangeState(() => void refreshStats());
  return c;
}

async function startClient() {
  client = makeClient();
  updateStatus();
  try {
    await client.start();
  } catch (e) {
    vscode.window.showErrorMessage(`Foresight: cannot start ${cfg().get<string>("serverPath")}: ${e}`);
  }
  await refreshStats();
}

async function restart() {
  const old = client;
  client = undefined;
  if (old) {
    try {
      await old.stop();
    } catch {
      // already gone
    }
  }
  await startClient();
}

async function toggle() {
  await cfg().update("enable", !enabled(), vscode.ConfigurationTarget.Global);
  updateStatus();
}

/** Finetunes the current model on the workspace with `foresight train`, with a progress notification. */
async function finetune() {
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!folder || folder.uri.scheme !== "file") {
    vscode.window.showErrorMessage("Foresight: open a folder to finetune on.");
    return;
  }
  const exe = expandHome(cfg().get<string>("serverPath") || "foresight");
  const base = serverSettings().model as string | undefined;
  const out = path.join(folder.uri.fsPath, ".foresight", "finetuned");
  const steps = cfg().get<number>("finetune.steps", 200);
  const args = ["train", "--repo", folder.uri.fsPath, "--out", out, "--steps", String(steps)];
  if (base) args.push("--base", base);
  args.push(...cfg().get<string[]>("finetune.extraArgs", []));
  output.appendLine(`$ ${exe} ${args.join(" ")}`);
  const ok = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: "Foresight: finetuning", cancellable: true },
    (progress, token) =>
      new Promise<boolean>((resolve) => {
        const child = spawn(exe, args, { cwd: folder.uri.fsPath });
        token.onCancellationRequested(() => child.kill("SIGINT")); // train writes a checkpoint on SIGINT
        let done = 0;
        const onData = (buf: Buffer) => {
          const text = buf.toString();
          output.append(text);
          const lines = text.split(/\r?\n/).filter((l) => l.trim());
          const last = lines[lines.length - 1];
          if (!last) return;
          const m = /step\D{0,3}(\d+)\s*\/\s*(\d+)/i.exec(last);
          if (m) {
            const pct = (100 * Number(m[1])) / Number(m[2]);
            progress.report({ message: last.slice(0, 120), increment: Math.max(0, pct - done) });
            done = Math.max(done, pct);
          } else {
            progress.report({ message: last.slice(0, 120) });
          }
        };
        child.stdout.on("data", onData);
        child.stderr.on("data", onData);
        child.on("error", (e) => {
          output.appendLine(`cannot run ${exe}: ${e.message}`);
          resolve(false);
        });
        child.on("close", (code) => resolve(code === 0));
      }),
  );
  if (!ok) {
    const pick = await vscode.window.showErrorMessage("Foresight: finetuning failed or was stopped.", "Show Log");
    if (pick) output.show();
    return;
  }
  const use = await vscode.window.showInformationMessage(`Foresight: finetuned model written to ${out}.`, "Use It");
  if (use) await cfg().update("model", out, vscode.ConfigurationTarget.Workspace);
}

export async function activate(context: vscode.ExtensionContext): Promise<ForesightApi> {
  output = vscode.window.createOutputChannel("Foresight");
  status = vscode.window.createStatusBarItem("foresight.status", vscode.StatusBarAlignment.Right, 100);
  status.name = "Foresight";
  status.command = "foresight.toggle";
  status.show();
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("foresight.toggle", toggle),
    vscode.commands.registerCommand("foresight.restart", restart),
    vscode.commands.registerCommand("foresight.finetune", finetune),
    vscode.commands.registerCommand("foresight.showOutput", () => output.show()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration("foresight")) return;
      if (e.affectsConfiguration("foresight.serverPath")) {
        await restart();
      } else if (client && client.state === State.Running) {
        await client.sendNotification("workspace/didChangeConfiguration", { settings: { foresight: serverSettings() } });
      }
      updateStatus();
    }),
    { dispose: () => void client?.stop() },
  );
  await startClient();
  return {
    client: () => client,
    serverSettings,
    statusText: () => status.text,
    lastLatencyMs: () => lastLatencyMs,
  };
}

export async function deactivate() {
  if (client) await client.stop();
}
