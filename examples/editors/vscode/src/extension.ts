// VS Code glue: inline completions, the selection commands and the status bar item, on top of the
// protocol client in protocol.ts.

import * as vscode from 'vscode';
import {
  ConnectionState,
  DaemonClient,
  DaemonError,
  DaemonUnavailableError,
  SelectionCommand,
  readToken,
} from './protocol';
import { clipPrefix, clipSuffix, docstringInsertion, fitReplacement } from './text';

const SERVE = 'rwkv-hub serve';

const COMMANDS: [string, SelectionCommand, string][] = [
  ['rwkvHub.explain', 'explain', 'RWKV: explaining the selection…'],
  ['rwkvHub.docstring', 'docstring', 'RWKV: writing a docstring…'],
  ['rwkvHub.rewrite', 'rewrite', 'RWKV: rewriting the selection…'],
  ['rwkvHub.translate', 'translate', 'RWKV: translating the selection…'],
];

function settings(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration('rwkvHub');
}

// The daemon uses the path to tell documents apart (a new completion cancels the last one for the same path).
function documentPath(document: vscode.TextDocument): string {
  return document.uri.scheme === 'file' ? document.uri.fsPath : document.uri.toString();
}

/** Waits `ms`; false when VS Code cancelled the request meanwhile (the user typed on). */
function pause(ms: number, token: vscode.CancellationToken): Promise<boolean> {
  if (ms <= 0 || token.isCancellationRequested) return Promise.resolve(!token.isCancellationRequested);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      sub.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
    const sub = token.onCancellationRequested(() => {
      clearTimeout(timer);
      sub.dispose();
      resolve(false);
    });
  });
}

function linkAbort(token: vscode.CancellationToken): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const sub = token.onCancellationRequested(() => controller.abort());
  return { signal: controller.signal, dispose: () => sub.dispose() };
}

function showFailure(e: unknown): void {
  if (e instanceof DaemonUnavailableError) {
    const hint = e.refused ? 'check rwkvHub.token or the token file (`rwkv-hub token` prints it)' : `start it with \`${SERVE}\``;
    void vscode.window.showWarningMessage(`RWKV Hub: ${e.message}; ${hint}.`);
  } else if (e instanceof DaemonError && e.code === 'busy') {
    void vscode.window.showWarningMessage('RWKV Hub: the daemon is busy; try again in a moment.');
  } else {
    void vscode.window.showErrorMessage(`RWKV Hub: ${e instanceof Error ? e.message : String(e)}`);
  }
}

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel('RWKV Hub');
  const status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.name = 'RWKV Hub';
  status.command = { title: 'RWKV Hub settings', command: 'workbench.action.openSettings', arguments: ['rwkvHub'] };
  status.show();

  let state: ConnectionState | undefined;
  let model = '';
  let warnedAbout: 'down' | 'refused' | undefined; // the outage the user has been told about

  function render(): void {
    const url = settings().get<string>('url', '');
    const off = settings().get<boolean>('enable', true) ? '' : ' (inline completions off)';
    status.backgroundColor = undefined;
    if (!state) {
      status.text = '$(circle-outline) RWKV';
      status.tooltip = `rwkv-hub at ${url}: not connected yet${off}`;
    } else if (state.connected) {
      status.text = '$(sparkle) RWKV';
      status.tooltip = `rwkv-hub at ${url}${model ? `: ${model}` : ''}${off}`;
    } else {
      status.text = '$(debug-disconnect) RWKV';
      status.tooltip = `${state.reason}; retrying${off}`;
      status.backgroundColor = new vscode.ThemeColor('statusBarItem.warningBackground');
    }
  }

  function onState(c: DaemonClient, s: ConnectionState): void {
    state = s;
    model = '';
    render();
    if (s.connected) {
      c.hello().then(
        (h) => {
          model = h.model.name ?? '';
          render();
        },
        () => undefined,
      );
      if (warnedAbout) void vscode.window.showInformationMessage('RWKV Hub: the daemon is reachable again.');
      warnedAbout = undefined;
      return;
    }
    // One message per outage; the client keeps retrying quietly, and keystrokes say nothing.
    const kind = s.refused ? 'refused' : 'down';
    if (warnedAbout === kind) return;
    warnedAbout = kind;
    if (s.refused) {
      void vscode.window.showWarningMessage(
        `RWKV Hub: ${s.reason}. Check rwkvHub.token or the token file (\`rwkv-hub token\` prints the token).`,
      );
      return;
    }
    const run = `Run ${SERVE}`;
    void vscode.window
      .showWarningMessage(`RWKV Hub: ${s.reason}. Start the daemon with \`${SERVE}\`; retrying in the background.`, run)
      .then((choice) => {
        if (choice !== run) return;
        const terminal = vscode.window.createTerminal('rwkv-hub');
        terminal.show();
        terminal.sendText(SERVE);
      });
  }

  function makeClient(): DaemonClient {
    const c: DaemonClient = new DaemonClient({
      url: settings().get<string>('url', 'ws://127.0.0.1:8765/ws'),
      token: () => readToken({ token: settings().get('token'), tokenFile: settings().get('tokenFile') }),
      onState: (s) => onState(c, s),
      log: (line) => output.appendLine(line),
    });
    // With completions on, connect at once so that a daemon that is down is reported now, not mid-typing.
    if (settings().get<boolean>('enable', true)) c.connect().catch(() => undefined);
    return c;
  }

  let client = makeClient();
  render();

  const provider: vscode.InlineCompletionItemProvider = {
    async provideInlineCompletionItems(document, position, context, token) {
      const cfg = settings();
      if (!cfg.get<boolean>('enable', true)) return undefined;
      const automatic = context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic;
      if (automatic && !(await pause(cfg.get<number>('debounceMs', 150), token))) return undefined;
      const text = document.getText();
      const offset = document.offsetAt(position);
      const abort = linkAbort(token); // VS Code's cancellation becomes a `cancel` to the daemon
      try {
        const result = await client.complete(
          {
            prefix: clipPrefix(text.slice(0, offset)),
            suffix: clipSuffix(text.slice(offset)),
            language: document.languageId,
            path: documentPath(document),
            cursor: { line: position.line, character: position.character },
            maxLines: cfg.get<number>('maxLines', 8),
            preset: cfg.get<string>('preset', ''),
          },
          { signal: abort.signal },
        );
        if (result.finishReason === 'cancelled' || !result.text) return undefined;
        return [new vscode.InlineCompletionItem(result.text, new vscode.Range(position, position))];
      } catch (e) {
        // A daemon that is down is told once by onState, and busy passes with the next keystroke.
        const quiet = e instanceof DaemonUnavailableError || (e instanceof DaemonError && e.code === 'busy');
        if (!quiet) output.appendLine(`completion failed: ${(e as Error).message}`);
        return undefined;
      } finally {
        abort.dispose();
      }
    },
  };

  async function runSelection(command: SelectionCommand, title: string): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor || editor.selection.isEmpty) {
      void vscode.window.showInformationMessage('RWKV Hub: select some text first.');
      return;
    }
    const { document, selection } = editor;
    let instruction: string | undefined;
    if (command === 'rewrite') {
      instruction = await vscode.window.showInputBox({
        prompt: 'How should the selection be rewritten?',
        placeHolder: 'e.g. use a list comprehension',
        validateInput: (v) => (v.length > 2000 ? 'At most 2,000 characters.' : undefined), // the daemon's limit
      });
      if (!instruction?.trim()) return;
    }
    const cfg = settings();
    const selected = document.getText(selection);
    const version = document.version;
    // Read now: the editor may be closed or hidden by the time the answer comes.
    const { insertSpaces, tabSize } = editor.options;
    const indentUnit = insertSpaces === false ? '\t' : ' '.repeat(typeof tabSize === 'number' ? tabSize : 4);
    if (command === 'explain') {
      output.show(true);
      output.appendLine(`\n--- ${vscode.workspace.asRelativePath(document.uri)}:${selection.start.line + 1} ---`);
    }

    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title, cancellable: true },
      async (_progress, token) => {
        const abort = linkAbort(token);
        try {
          return await client.selection(
            {
              command,
              text: selected,
              language: document.languageId,
              path: documentPath(document),
              instruction,
              target: cfg.get<string>('translateTo', 'English'),
              preset: cfg.get<string>('preset', ''),
            },
            // An explanation streams into the output channel as it comes.
            { signal: abort.signal, retryNow: true, onDelta: command === 'explain' ? (t) => output.append(t) : undefined },
          );
        } catch (e) {
          showFailure(e);
          return undefined;
        } finally {
          abort.dispose();
        }
      },
    );
    if (command === 'explain') output.appendLine('');
    if (!result || result.finishReason === 'cancelled' || command === 'explain') return;
    if (!result.text.trim()) {
      void vscode.window.showWarningMessage('RWKV Hub: the model gave an empty answer.');
      return;
    }
    if (document.version !== version) {
      void vscode.window.showWarningMessage('RWKV Hub: the document changed while the model was writing; nothing was changed.');
      return;
    }

    const edit = new vscode.WorkspaceEdit();
    if (command === 'docstring') {
      // Python style: on the line after the selection's first line (the `def`/`class` line), one level deeper.
      const first = document.lineAt(selection.start.line);
      const lines = docstringInsertion(first.text, result.text, indentUnit);
      if (first.lineNumber + 1 < document.lineCount) edit.insert(document.uri, new vscode.Position(first.lineNumber + 1, 0), lines);
      else edit.insert(document.uri, first.range.end, '\n' + lines.slice(0, -1));
    } else {
      edit.replace(document.uri, selection, fitReplacement(selected, result.text));
    }
    await vscode.workspace.applyEdit(edit);
  }

  context.subscriptions.push(
    output,
    status,
    { dispose: () => client.dispose() },
    vscode.languages.registerInlineCompletionItemProvider([{ scheme: 'file' }, { scheme: 'untitled' }], provider),
    ...COMMANDS.map(([id, command, title]) => vscode.commands.registerCommand(id, () => runSelection(command, title))),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (['url', 'token', 'tokenFile'].some((key) => e.affectsConfiguration(`rwkvHub.${key}`))) {
        client.dispose();
        state = undefined;
        warnedAbout = undefined;
        client = makeClient();
      }
      if (e.affectsConfiguration('rwkvHub')) render();
    }),
  );
}
