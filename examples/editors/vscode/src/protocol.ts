// The rwkv-hub daemon's WebSocket protocol, version 1 (docs/protocol.md in the repository), without
// VS Code: message builders, event parsing, the token, and a client that runs many requests on one
// socket. Kept free of `vscode` so the tests run under plain Node.

import { readFile } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import WebSocket from 'ws';

// ---- client -> server messages ----

export interface Cursor {
  line: number;
  character: number;
}

export interface CompleteFields {
  prefix: string;
  suffix?: string;
  language?: string;
  path?: string;
  cursor?: Cursor;
  maxLines?: number;
  preset?: string;
}

export type SelectionCommand = 'explain' | 'docstring' | 'rewrite' | 'translate';

export interface SelectionFields {
  command: SelectionCommand;
  text: string;
  language?: string;
  path?: string;
  instruction?: string; // rewrite only, and required there
  target?: string; // translate only
  preset?: string;
}

export type ClientMessage = { type: string; id: string } & Record<string, unknown>;

function checkId(id: string): string {
  if (id.length < 1 || id.length > 128) throw new RangeError(`a request id has 1-128 characters, not ${id.length}`);
  return id;
}

// The schema refuses empty names and unknown fields, so unset optional fields are left out entirely.
function withOptional(msg: ClientMessage, fields: Record<string, unknown>): ClientMessage {
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined && value !== '') msg[key] = value;
  }
  return msg;
}

export function helloMessage(id: string): ClientMessage {
  return { type: 'hello', id: checkId(id), client: 'rwkv-hub-vscode' };
}

export function completeMessage(id: string, f: CompleteFields): ClientMessage {
  // The daemon takes 1-200 lines; a setting outside that is clamped rather than refused.
  const maxLines = f.maxLines === undefined ? undefined : Math.min(200, Math.max(1, Math.trunc(f.maxLines)));
  return withOptional(
    { type: 'complete', id: checkId(id), prefix: f.prefix },
    { suffix: f.suffix, language: f.language, path: f.path, cursor: f.cursor, max_lines: maxLines, preset: f.preset },
  );
}

export function selectionMessage(id: string, f: SelectionFields): ClientMessage {
  if (f.command === 'rewrite' && !f.instruction?.trim()) throw new TypeError('rewrite needs an instruction');
  return withOptional(
    { type: 'selection', id: checkId(id), command: f.command, text: f.text },
    {
      language: f.language,
      path: f.path,
      instruction: f.command === 'rewrite' ? f.instruction : undefined,
      target: f.command === 'translate' ? f.target : undefined,
      preset: f.preset,
    },
  );
}

export function cancelMessage(id: string): ClientMessage {
  return { type: 'cancel', id: checkId(id) };
}

// ---- server -> client events ----

export interface DeltaEvent {
  type: 'delta';
  id: string;
  text: string;
}

export interface DoneEvent {
  type: 'done';
  id: string;
  finish_reason: string; // "stop", "length" or "cancelled"
  usage?: { prompt_tokens?: number; completion_tokens?: number };
  timings?: Record<string, number>;
}

export interface ErrorEvent {
  type: 'error';
  id: string | null; // null when the daemon could not read an id from the message
  code: string;
  message: string;
}

export interface HelloEvent {
  type: 'hello';
  id?: string;
  protocol: number;
  model: { name?: string; [key: string]: unknown };
  [key: string]: unknown;
}

export type ServerEvent = DeltaEvent | DoneEvent | ErrorEvent | HelloEvent;

export class ProtocolError extends Error {}

/** Parses one text frame from the daemon; throws ProtocolError when it is not a valid event. */
export function parseEvent(raw: string): ServerEvent {
  let ev: unknown;
  try {
    ev = JSON.parse(raw);
  } catch {
    throw new ProtocolError('the daemon sent a frame that is not JSON');
  }
  if (typeof ev !== 'object' || ev === null || Array.isArray(ev)) throw new ProtocolError('an event is not an object');
  const e = ev as Record<string, unknown>;
  const need = (key: string, type: string) => {
    if (typeof e[key] !== type) throw new ProtocolError(`a ${String(e.type)} event lacks a ${type} "${key}"`);
  };
  switch (e.type) {
    case 'delta':
      need('id', 'string');
      need('text', 'string');
      break;
    case 'done':
      need('id', 'string');
      need('finish_reason', 'string');
      break;
    case 'error':
      if (e.id !== null) need('id', 'string');
      need('code', 'string');
      need('message', 'string');
      break;
    case 'hello':
      need('protocol', 'number');
      need('model', 'object');
      break;
    default:
      throw new ProtocolError(`unknown event type ${JSON.stringify(e.type)}`);
  }
  return e as unknown as ServerEvent;
}

// ---- errors a request can end with ----

/** The daemon answered a request with an error event; `code` is one of the protocol's stable codes. */
export class DaemonError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/** No connection to the daemon: it is not running, it refused us, or the connection dropped. */
export class DaemonUnavailableError extends Error {
  constructor(
    message: string,
    readonly refused = false,
  ) {
    super(message);
  }
}

// ---- the token ----

/** Where the daemon keeps its token: $XDG_CONFIG_HOME/rwkv-hub/token, else ~/.config/rwkv-hub/token. */
export function defaultTokenFile(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(base, 'rwkv-hub', 'token');
}

export interface TokenSource {
  token?: string; // explicit, wins over everything
  tokenFile?: string; // empty: the default file
  env?: NodeJS.ProcessEnv;
}

/** The token to send, found as the daemon's own tools find it: explicit, $RWKV_HUB_TOKEN, then the file. */
export async function readToken(src: TokenSource): Promise<string | undefined> {
  const env = src.env ?? process.env;
  if (src.token?.trim()) return src.token.trim();
  if (env.RWKV_HUB_TOKEN) return env.RWKV_HUB_TOKEN;
  let file = src.tokenFile || defaultTokenFile(env);
  if (file === '~' || file.startsWith('~/')) file = path.join(os.homedir(), file.slice(1));
  try {
    return (await readFile(file, 'utf8')).trim() || undefined;
  } catch (e) {
    // No file yet: the daemon makes it on its first start. Connect without a token and let it say 401.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

// ---- the client ----

export type ConnectionState =
  | { connected: true }
  | { connected: false; reason: string; refused: boolean };

export interface DaemonClientOptions {
  url: string;
  /** Called before every connection attempt, so a token file made or changed meanwhile is picked up. */
  token: () => Promise<string | undefined>;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Called when the connection comes up or goes down (not on every failed retry). */
  onState?: (state: ConnectionState) => void;
  /** Frames that could not be routed or parsed. */
  log?: (line: string) => void;
}

export interface RequestOptions {
  signal?: AbortSignal;
  onDelta?: (text: string) => void;
  /** While waiting to retry, try to connect now instead of failing at once (for commands a user asked for). */
  retryNow?: boolean;
}

export interface StreamResult {
  text: string;
  finishReason: string;
  done?: DoneEvent; // absent when the request was aborted here
}

interface Pending {
  onEvent(ev: ServerEvent): void;
  fail(err: Error): void;
}

/**
 * One WebSocket to the daemon carrying any number of requests, routed by id. It connects on first use;
 * after that a lost connection fails the running requests and is retried in the background with
 * exponential backoff. Aborting a request sends `cancel` and resolves it at once as "cancelled".
 */
export class DaemonClient {
  private socket?: WebSocket;
  private opening?: Promise<WebSocket>;
  private retryTimer?: NodeJS.Timeout;
  private started = false;
  private disposed = false;
  private backoffMs: number;
  private lastState?: string;
  private nextId = 1; // never reset, so a late event from an old connection cannot hit a new request
  private readonly pending = new Map<string, Pending>();

  constructor(private readonly options: DaemonClientOptions) {
    this.backoffMs = options.minBackoffMs ?? 500;
  }

  get connected(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Connects now rather than on first use (at startup, so the user hears early that the daemon is down). */
  async connect(): Promise<void> {
    await this.ready(true);
  }

  /** Asks for the daemon's hello: the model, formats, presets and limits. */
  hello(options: RequestOptions = {}): Promise<HelloEvent> {
    return this.request('h', helloMessage, options, (ev, resolve) => {
      if (ev.type === 'hello') resolve(ev);
    });
  }

  complete(fields: CompleteFields, options: RequestOptions = {}): Promise<StreamResult> {
    return this.stream('c', (id) => completeMessage(id, fields), options);
  }

  selection(fields: SelectionFields, options: RequestOptions = {}): Promise<StreamResult> {
    return this.stream('s', (id) => selectionMessage(id, fields), options);
  }

  dispose(): void {
    this.disposed = true;
    clearTimeout(this.retryTimer);
    this.failAll(new DaemonUnavailableError('the client was closed'));
    this.socket?.close();
    this.socket = undefined;
  }

  private stream(kind: string, build: (id: string) => ClientMessage, options: RequestOptions): Promise<StreamResult> {
    let text = '';
    return this.request<StreamResult>(
      kind,
      build,
      options,
      (ev, resolve) => {
        if (ev.type === 'delta') {
          text += ev.text;
          options.onDelta?.(ev.text);
        } else if (ev.type === 'done') {
          resolve({ text, finishReason: ev.finish_reason, done: ev });
        }
      },
      () => ({ text, finishReason: 'cancelled' }),
    );
  }

  /**
   * Sends one request and feeds its events to `handle` until it resolves, an error event rejects it, or
   * the connection drops. With `onAbort`, aborting the signal cancels it on the daemon and resolves with
   * what `onAbort` returns; without, it rejects.
   */
  private async request<T>(
    kind: string,
    build: (id: string) => ClientMessage,
    options: RequestOptions,
    handle: (ev: ServerEvent, resolve: (value: T) => void) => void,
    onAbort?: () => T,
  ): Promise<T> {
    const { signal } = options;
    const aborted = () => {
      if (onAbort) return onAbort();
      throw new DaemonError('cancelled', 'the request was aborted');
    };
    if (signal?.aborted) return aborted();
    const id = `${kind}${this.nextId++}`;
    const message = JSON.stringify(build(id)); // a bad field throws here, before anything is sent
    const socket = await this.ready(options.retryNow ?? false);
    if (signal?.aborted) return aborted();
    // The socket may have closed while we awaited; its close handler has then already failed `pending`.
    if (socket.readyState !== WebSocket.OPEN) throw new DaemonUnavailableError('the connection to the daemon was lost');

    return new Promise<T>((resolve, reject) => {
      const finish = () => {
        this.pending.delete(id);
        signal?.removeEventListener('abort', abort);
      };
      const abort = () => {
        finish();
        this.sendQuietly(cancelMessage(id));
        try {
          resolve(aborted());
        } catch (e) {
          reject(e);
        }
      };
      const entry: Pending = {
        onEvent: (ev) => {
          if (ev.type === 'error') {
            finish();
            reject(new DaemonError(ev.code, ev.message));
            return;
          }
          handle(ev, (value) => {
            finish();
            resolve(value);
          });
        },
        fail: (err) => {
          finish();
          reject(err);
        },
      };
      this.pending.set(id, entry);
      signal?.addEventListener('abort', abort, { once: true });
      socket.send(message, (err) => {
        if (err) entry.fail(new DaemonUnavailableError('the connection to the daemon was lost'));
      });
    });
  }

  /** The open socket; connects on first use and waits for an attempt in progress. */
  private ready(retryNow: boolean): Promise<WebSocket> {
    if (this.disposed) return Promise.reject(new DaemonUnavailableError('the client was closed'));
    if (this.socket && this.connected) return Promise.resolve(this.socket);
    if (this.opening) return this.opening;
    if (!this.started || retryNow) {
      this.started = true;
      clearTimeout(this.retryTimer);
      return this.attempt();
    }
    // Waiting for the next retry: fail fast so that typing never waits on a daemon that is down.
    return Promise.reject(new DaemonUnavailableError(`no rwkv-hub daemon at ${this.options.url}`));
  }

  private attempt(): Promise<WebSocket> {
    this.opening ??= this.open().finally(() => (this.opening = undefined));
    return this.opening;
  }

  private async open(): Promise<WebSocket> {
    const { url } = this.options;
    try {
      const token = await this.options.token();
      // `ws` sends no Origin header unless asked to, which the daemon requires of non-browser clients.
      const ws = new WebSocket(url, {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        handshakeTimeout: 5000,
      });
      await new Promise<void>((resolve, reject) => {
        ws.on('error', reject); // stays attached: errors after the handshake end in 'close'
        ws.once('open', () => resolve());
        ws.once('unexpected-response', (_req, res) => {
          reject(new DaemonUnavailableError(`the daemon at ${url} refused the connection (HTTP ${res.statusCode})`, true));
          ws.terminate();
        });
      });
      if (this.disposed) {
        ws.close();
        throw new DaemonUnavailableError('the client was closed');
      }
      ws.on('message', (data, isBinary) => {
        if (!isBinary) this.route(data.toString());
      });
      ws.on('close', () => this.closed(ws));
      this.socket = ws;
      this.backoffMs = this.options.minBackoffMs ?? 500;
      this.report({ connected: true });
      return ws;
    } catch (e) {
      const err =
        e instanceof DaemonUnavailableError
          ? e
          : new DaemonUnavailableError(`no rwkv-hub daemon at ${url} (${(e as Error).message})`);
      if (!this.disposed) {
        this.report({ connected: false, reason: err.message, refused: err.refused });
        this.retryLater();
      }
      throw err;
    }
  }

  private closed(ws: WebSocket): void {
    if (this.socket !== ws) return;
    this.socket = undefined;
    this.failAll(new DaemonUnavailableError('the connection to the daemon was lost'));
    if (this.disposed) return;
    this.report({ connected: false, reason: `the connection to ${this.options.url} was lost`, refused: false });
    this.retryLater();
  }

  private retryLater(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.attempt().catch(() => undefined), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, this.options.maxBackoffMs ?? 15000);
  }

  private report(state: ConnectionState): void {
    // Tell only about changes: a daemon that stays down is retried quietly.
    const key = state.connected ? 'up' : state.refused ? 'refused' : 'down';
    if (key === this.lastState) return;
    this.lastState = key;
    this.options.onState?.(state);
  }

  private route(raw: string): void {
    let ev: ServerEvent;
    try {
      ev = parseEvent(raw);
    } catch (e) {
      this.options.log?.((e as Error).message);
      return;
    }
    const entry = typeof ev.id === 'string' ? this.pending.get(ev.id) : undefined;
    if (entry) entry.onEvent(ev);
    else if (ev.type === 'error' && ev.id === null) this.options.log?.(`daemon error: ${ev.code}: ${ev.message}`);
    // Anything else is about a request already aborted here (a late delta, done, or not_found): dropped.
  }

  private failAll(err: Error): void {
    for (const entry of [...this.pending.values()]) entry.fail(err);
  }

  private sendQuietly(msg: ClientMessage): void {
    if (this.connected) this.socket?.send(JSON.stringify(msg), () => undefined);
  }
}
