// node-redis (pinned in package.json) against a crema node: scanIterator, with and without
// MATCH, returns every key once. node-redis v4 reads SCAN cursors with Number(): found from
// outside, cursors above 2^53 were rounded and the iterator skipped keys without an error.
// Run by crates/crema-server/tests/clients.rs: node scan.mjs HOST:PORT
import assert from 'node:assert/strict';
import { createClient } from 'redis';

const client = createClient({ url: `redis://${process.argv[2]}` });
client.on('error', (e) => { console.error(e); process.exit(2); });
await client.connect();

const KEYS = 2000;
const written = [];
for (let i = 0; i < KEYS; i += 100) {
  const batch = [];
  for (let j = i; j < i + 100; j++) {
    batch.push([`scan:${j}`, `${j}`]);
    written.push(`scan:${j}`);
  }
  await client.mSet(batch);
}

async function collect(options) {
  const seen = [];
  for await (const key of client.scanIterator(options)) {
    seen.push(key);
  }
  return seen;
}

for (const COUNT of [1, 7, 100]) {
  const seen = await collect({ COUNT });
  assert.equal(new Set(seen).size, seen.length, `COUNT ${COUNT}: a key returned twice`);
  assert.deepEqual(seen.sort(), [...written].sort(), `COUNT ${COUNT}: every key once`);
}
const matched = await collect({ MATCH: 'scan:1*', COUNT: 10 });
assert.deepEqual(matched.sort(), written.filter((k) => k.startsWith('scan:1')).sort());

await client.quit();
console.log('ok');
