// The protocol client against a scripted WebSocket server on 127.0.0.1: no daemon, no VS Code.

import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import {
  ConnectionState,
  DaemonClient,
  DaemonError,
  DaemonUnavailableError,
  completeMessage,
  parseEvent,
  readToken,
  selectionMessage,
} from '../protocol';

type Msg = Record<string, unknown> & { type: string; id: string };

/** A server that hands each connection, its upgrade request and a queue of its messages to the test. */
class Script {
  readonly wss: WebSocketServer;
  readonly sockets: { ws: WebSocket; req: IncomingMessage; next: () => Promise<Msg> }[] = [];
  private waiters: (() => void)[] = [];

  private constructor(wss: WebSocketServer) {
    this.wss = wss;
    wss.on('connection', (ws, req) => {
      const queue: Msg[] = [];
      let wake: (() => void) | undefined;
      ws.on('message', (data) => {
        queue.push(JSON.parse(data.toString()));
        wake?.();
      });
      const next = async (): Promise<Msg> => {
        while (!queue.length) await new Promise<void>((r) => (wake = r));
        return queue.shift()!;
      };
      this.sockets.push({ ws, req, next });
      this.waiters.splice(0).forEach((w) => w());
    });
  }

  static async start(port = 0, options: Partial<ConstructorParameters<typeof WebSocketServer>[0]> = {}): Promise<Script> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port, ...options });
    await new Promise((r) => wss.once('listening', r));
    const script = new Script(wss);
    servers.add(script);
    return script;
  }

  get port(): number {
    return (this.wss.address() as AddressInfo).port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** The n-th connection (0-based), once it is there. */
  async connection(n = 0) {
    while (this.sockets.length <= n) await new Promise<void>((r) => this.waiters.push(r));
    return this.sockets[n];
  }

  async stop(): Promise<void> {
    servers.delete(this);
    for (const { ws } of this.sockets) ws.terminate();
    await new Promise((r) => this.wss.close(r));
  }
}

function send(ws: WebSocket, ev: object): void {
  ws.send(JSON.stringify(ev));
}

function done(id: string, finish_reason = 'stop'): object {
  return { type: 'done', id, finish_reason, usage: { prompt_tokens: 3, completion_tokens: 2 }, timings: {} };
}

/** Resolves when `predicate` holds, checking every few milliseconds. */
async function until(predicate: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
}

// Closed at the end even when a test failed half-way: an open socket would keep the test process alive.
const servers = new Set<Script>();
const clients: DaemonClient[] = [];
function client(url: string, states: ConnectionState[] = [], token = 'secret'): DaemonClient {
  const c = new DaemonClient({ url, token: async () => token, minBackoffMs: 20, maxBackoffMs: 100, onState: (s) => states.push(s) });
  clients.push(c);
  return c;
}
after(async () => {
  clients.forEach((c) => c.dispose());
  await Promise.all([...servers].map((s) => s.stop()));
});

describe('messages', () => {
  it('builds a complete message with only the fields that are set', () => {
    assert.deepEqual(completeMessage('c1', { prefix: 'x = ', preset: '', maxLines: 500 }), {
      type: 'complete',
      id: 'c1',
      prefix: 'x = ',
      max_lines: 200,
    });
    assert.throws(() => completeMessage('', { prefix: '' }), RangeError);
    assert.throws(() => completeMessage('x'.repeat(129), { prefix: '' }), RangeError);
  });

  it('builds selection messages with each command its own fields', () => {
    assert.throws(() => selectionMessage('s1', { command: 'rewrite', text: 'x', instruction: ' ' }), TypeError);
    assert.deepEqual(selectionMessage('s1', { command: 'rewrite', text: 'x', instruction: 'shorter', target: 'French' }), {
      type: 'selection',
      id: 's1',
      command: 'rewrite',
      text: 'x',
      instruction: 'shorter',
    });
    assert.deepEqual(selectionMessage('s2', { command: 'translate', text: 'hallo', target: 'English', language: 'plaintext' }), {
      type: 'selection',
      id: 's2',
      command: 'translate',
      text: 'hallo',
      target: 'English',
      language: 'plaintext',
    });
  });

  it('parses events and refuses malformed ones', () => {
    assert.deepEqual(parseEvent('{"type":"delta","id":"c1","text":"a"}'), { type: 'delta', id: 'c1', text: 'a' });
    assert.equal(parseEvent('{"type":"error","id":null,"code":"bad_json","message":"m"}').type, 'error');
    assert.throws(() => parseEvent('not json'), /not JSON/);
    assert.throws(() => parseEvent('{"type":"delta","id":"c1"}'), /text/);
    assert.throws(() => parseEvent('{"type":"done","id":"c1"}'), /finish_reason/);
    assert.throws(() => parseEvent('{"type":"surprise","id":"c1"}'), /unknown event/);
  });
});

// A timeout, so that a message the server waits for and never gets fails the test instead of hanging.
describe('DaemonClient', { timeout: 10_000 }, () => {
  it('sends the token, no Origin, and a complete message of the protocol shape', async () => {
    const server = await Script.start();
    const c = client(server.url);
    const reply = c.complete({
      prefix: 'def f():\n    ',
      suffix: '\n',
      language: 'python',
      path: '/abs/file.py',
      cursor: { line: 1, character: 4 },
      maxLines: 8,
      preset: 'code',
    });
    const { ws, req, next } = await server.connection();
    assert.equal(req.headers.authorization, 'Bearer secret');
    assert.equal(req.headers.origin, undefined);
    const msg = await next();
    assert.match(msg.id, /^.{1,128}$/);
    assert.deepEqual(msg, {
      type: 'complete',
      id: msg.id,
      prefix: 'def f():\n    ',
      suffix: '\n',
      language: 'python',
      path: '/abs/file.py',
      cursor: { line: 1, character: 4 },
      max_lines: 8,
      preset: 'code',
    });
    send(ws, { type: 'delta', id: msg.id, text: 'return 1' });
    send(ws, done(msg.id));
    const result = await reply;
    assert.equal(result.text, 'return 1');
    assert.equal(result.finishReason, 'stop');
    assert.equal(result.done?.usage?.completion_tokens, 2);
    await server.stop();
  });

  it('answers hello', async () => {
    const server = await Script.start();
    const c = client(server.url);
    const hello = c.hello();
    const { ws, next } = await server.connection();
    const msg = await next();
    assert.equal(msg.type, 'hello');
    send(ws, { type: 'hello', id: msg.id, protocol: 1, model: { name: 'tiny.pth' }, presets: [] });
    assert.equal((await hello).model.name, 'tiny.pth');
    await server.stop();
  });

  it('assembles interleaved deltas of several requests in order', async () => {
    const server = await Script.start();
    const c = client(server.url);
    const seen: string[] = [];
    const one = c.complete({ prefix: 'a', path: '/one.py' }, { onDelta: (t) => seen.push(`1${t}`) });
    const two = c.selection({ command: 'explain', text: 'b' }, { onDelta: (t) => seen.push(`2${t}`) });
    const { ws, next } = await server.connection();
    const [m1, m2] = [await next(), await next()];
    const first = m1.type === 'complete' ? m1 : m2;
    const second = first === m1 ? m2 : m1;
    assert.equal(second.type, 'selection');
    assert.notEqual(first.id, second.id);
    for (const [id, text] of [[first.id, 'x'], [second.id, 'P'], [first.id, 'y'], [second.id, 'Q'], [first.id, 'z']]) {
      send(ws, { type: 'delta', id, text });
    }
    send(ws, done(second.id));
    send(ws, done(first.id, 'length'));
    assert.deepEqual(await two, { text: 'PQ', finishReason: 'stop', done: done(second.id) });
    const r1 = await one;
    assert.equal(r1.text, 'xyz');
    assert.equal(r1.finishReason, 'length');
    assert.deepEqual(seen, ['1x', '2P', '1y', '2Q', '1z']);
    await server.stop();
  });

  it('sends cancel when aborted and resolves as cancelled', async () => {
    const server = await Script.start();
    const c = client(server.url);
    const controller = new AbortController();
    const reply = c.complete({ prefix: 'x' }, { signal: controller.signal, onDelta: () => controller.abort() });
    const { ws, next } = await server.connection();
    const msg = await next();
    send(ws, { type: 'delta', id: msg.id, text: 'partial' });
    assert.deepEqual(await next(), { type: 'cancel', id: msg.id });
    const result = await reply;
    assert.equal(result.text, 'partial');
    assert.equal(result.finishReason, 'cancelled');
    // The daemon's own done for it comes later and is dropped; the connection goes on.
    send(ws, done(msg.id, 'cancelled'));
    const again = c.complete({ prefix: 'y' });
    const msg2 = await next();
    send(ws, done(msg2.id));
    assert.equal((await again).finishReason, 'stop');
    await server.stop();
  });

  it('sends nothing for a request aborted before it starts', async () => {
    const c = client('ws://127.0.0.1:9/never');
    const result = await c.complete({ prefix: 'x' }, { signal: AbortSignal.abort() });
    assert.equal(result.finishReason, 'cancelled');
  });

  it('rejects a request with the code of its error event', async () => {
    const server = await Script.start();
    const c = client(server.url);
    const reply = c.selection({ command: 'docstring', text: 'def f(): pass' });
    const { ws, next } = await server.connection();
    const msg = await next();
    send(ws, { type: 'error', id: msg.id, code: 'busy', message: 'at most 16 requests per connection' });
    await assert.rejects(reply, (e: unknown) => e instanceof DaemonError && e.code === 'busy');
    await server.stop();
  });

  it('fails pending requests when the connection drops, and reconnects', async () => {
    const server = await Script.start();
    const states: ConnectionState[] = [];
    const c = client(server.url, states);
    const reply = c.complete({ prefix: 'x' });
    const first = await server.connection(0);
    await first.next();
    first.ws.terminate();
    await assert.rejects(reply, DaemonUnavailableError);
    assert.deepEqual(states.map((s) => s.connected), [true, false]);
    // The backoff retry finds the server still up.
    await server.connection(1);
    await until(() => c.connected);
    assert.deepEqual(states.map((s) => s.connected), [true, false, true]);
    await server.stop();
  });

  it('reports a daemon that is down once, fails fast meanwhile, and reconnects when it returns', async () => {
    const server = await Script.start();
    const port = server.port;
    await server.stop();
    const states: ConnectionState[] = [];
    const c = client(`ws://127.0.0.1:${port}/ws`, states);
    await assert.rejects(c.connect(), DaemonUnavailableError);
    await new Promise((r) => setTimeout(r, 300)); // several retries
    assert.equal(states.length, 1);
    assert.equal(states[0].connected, false);
    await assert.rejects(c.complete({ prefix: 'x' }), /no rwkv-hub daemon/);

    const back = await Script.start(port);
    await until(() => c.connected);
    assert.deepEqual(states.map((s) => s.connected), [false, true]);
    const reply = c.complete({ prefix: 'x' });
    const { ws, next } = await back.connection();
    const msg = await next();
    send(ws, done(msg.id));
    assert.equal((await reply).finishReason, 'stop');
    await back.stop();
  });

  it('reports a refused token as refused', async () => {
    const server = await Script.start(0, { verifyClient: (_info, cb) => cb(false, 401) });
    const states: ConnectionState[] = [];
    const c = client(server.url, states, 'wrong');
    await assert.rejects(c.connect(), (e: unknown) => e instanceof DaemonUnavailableError && e.refused && /401/.test(e.message));
    assert.deepEqual(states, [{ connected: false, reason: `the daemon at ${server.url} refused the connection (HTTP 401)`, refused: true }]);
    c.dispose();
    await server.stop();
  });
});

describe('readToken', () => {
  it('reads the file under XDG_CONFIG_HOME, and lets the setting and $RWKV_HUB_TOKEN win', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'rwkv-hub-token-'));
    try {
      await mkdir(path.join(dir, 'rwkv-hub'));
      await writeFile(path.join(dir, 'rwkv-hub', 'token'), 'from-file\n');
      const env = { XDG_CONFIG_HOME: dir };
      assert.equal(await readToken({ env }), 'from-file');
      assert.equal(await readToken({ env: { ...env, RWKV_HUB_TOKEN: 'from-env' } }), 'from-env');
      assert.equal(await readToken({ env: { ...env, RWKV_HUB_TOKEN: 'from-env' }, token: 'explicit' }), 'explicit');

      const other = path.join(dir, 'other');
      await writeFile(other, '  elsewhere  \n');
      assert.equal(await readToken({ env, tokenFile: other }), 'elsewhere');
      assert.equal(await readToken({ env: { XDG_CONFIG_HOME: path.join(dir, 'missing') } }), undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
