// Against a real daemon: the repository's pytest suite starts one and runs this file with
// RWKV_HUB_URL and RWKV_HUB_TOKEN set, and RWKV_HUB_EXPECTED_FILE: a JSON file holding the completion the
// daemon gives the same request from Python (greedy, so it is the same text). Without them it is skipped.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DaemonClient } from '../protocol';

const url = process.env.RWKV_HUB_URL;
const token = process.env.RWKV_HUB_TOKEN;

test(
  'hello and a Python completion from the daemon',
  { skip: url && token ? false : 'set RWKV_HUB_URL and RWKV_HUB_TOKEN to run against a daemon', timeout: 120_000 },
  async () => {
    const client = new DaemonClient({ url: url!, token: async () => token });
    try {
      const hello = await client.hello();
      assert.equal(hello.protocol, 1);
      const result = await client.complete({
        prefix: 'def add(a, b):\n    ',
        language: 'python',
        path: '/tmp/rwkv-hub-vscode-live.py',
        cursor: { line: 1, character: 4 },
        maxLines: 2,
        preset: 'exact',
      });
      assert.equal(typeof result.text, 'string');
      assert.equal(typeof result.done?.finish_reason, 'string');
      assert.ok(['stop', 'length'].includes(result.finishReason), result.finishReason);
      const expected = process.env.RWKV_HUB_EXPECTED_FILE;
      if (expected) assert.equal(result.text, JSON.parse(readFileSync(expected, 'utf8')));
    } finally {
      client.dispose();
    }
  },
);
