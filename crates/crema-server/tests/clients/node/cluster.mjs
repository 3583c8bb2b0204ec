// node-redis (pinned in package.json) createCluster against a sharded crema: it reads CLUSTER
// SLOTS, routes each key to its shard's leader, and keeps hash-tagged keys (MSET, MULTI) on one
// shard. Run by crates/crema-server/tests/clients.rs: node cluster.mjs HOST:PORT [HOST:PORT ...]
import assert from 'node:assert/strict';
import { createCluster } from 'redis';

const rootNodes = process.argv.slice(2).map((addr) => ({ url: `redis://${addr}` }));
const cluster = createCluster({ rootNodes });
cluster.on('error', (e) => { console.error(e); process.exit(2); });
await cluster.connect();

for (let i = 0; i < 200; i++) await cluster.set(`key:${i}`, String(i));
for (let i = 0; i < 200; i++) assert.equal(await cluster.get(`key:${i}`), String(i));
assert.equal(cluster.masters.length >= 1, true);

// Hash tags keep related keys in one shard: MSET, MGET and MULTI work on them.
await cluster.mSet(['{user:1}:name', 'ann', '{user:1}:mail', 'ann@example.com']);
assert.deepEqual(await cluster.mGet(['{user:1}:name', '{user:1}:mail']), ['ann', 'ann@example.com']);
const replies = await cluster.multi('{user:1}').incr('{user:1}:n').incr('{user:1}:n').get('{user:1}:name').exec();
assert.deepEqual(replies, [1, 2, 'ann']);

await cluster.quit();
console.log('node-redis createCluster: 200 keys over the shards, MSET/MGET/MULTI on a hash tag');
