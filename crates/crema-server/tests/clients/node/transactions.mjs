// node-redis (pinned in package.json) against a crema node: multi().exec(), an aborted
// transaction, and WATCH with an isolated connection (WatchError on a conflict).
// Run by crates/crema-server/tests/clients.rs: node transactions.mjs HOST:PORT
import assert from 'node:assert/strict';
import { createClient, WatchError } from 'redis';

const url = `redis://${process.argv[2]}`;
const client = createClient({ url });
const other = createClient({ url });
client.on('error', (e) => { console.error(e); process.exit(2); });
other.on('error', (e) => { console.error(e); process.exit(2); });
await client.connect();
await other.connect();

// multi().exec(): MULTI ... EXEC, every reply in order.
const replies = await client.multi().set('n', '1').incr('n').get('n').mGet(['n', 'missing']).exec();
assert.deepEqual(replies, ['OK', 2, '2', ['2', null]]);

// A runtime error is an element (node-redis rejects with it; the rest applied).
await client.set('text', 'abc');
await assert.rejects(client.multi().set('m', 'x').incr('text').exec());
assert.equal(await client.get('m'), 'x');

// WATCH: a change by another connection makes exec() reject with WatchError; nothing applied.
await assert.rejects(
  client.executeIsolated(async (isolated) => {
    await isolated.watch('w');
    await other.set('w', 'theirs');
    return isolated.multi().set('w', 'mine').exec();
  }),
  WatchError,
);
assert.equal(await client.get('w'), 'theirs');

// Without a conflict the watched transaction applies.
const applied = await client.executeIsolated(async (isolated) => {
  await isolated.watch('w');
  const current = await isolated.get('w');
  return isolated.multi().set('w', current + '!').exec();
});
assert.deepEqual(applied, ['OK']);
assert.equal(await client.get('w'), 'theirs!');

await client.quit();
await other.quit();
console.log('ok');
