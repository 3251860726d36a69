// Sends Segment messages to the ingest with Segment's own Node library, as an app would:
// node send.mjs <ingest url> <write key> <messages.json>. The file lists the calls to make, each
// {"call": "track" | "page" | "screen" | "identify" | "group" | "alias", "params": {...}} with the
// params of that call (messageId included, so that the test knows every message's id). Prints
// {"delivered": n, "failed": [reasons]} once the library has flushed every message.
import { readFileSync } from 'node:fs';
import { Analytics } from '@segment/analytics-node';

const [host, writeKey, file] = process.argv.slice(2);
const calls = JSON.parse(readFileSync(file, 'utf8'));
const analytics = new Analytics({ writeKey, host, flushAt: 100, flushInterval: 200, maxRetries: 5 });
const failed = [];
let delivered = 0;
analytics.on('error', (error) => failed.push(String(error?.reason ?? error?.message ?? error)));
const sent = calls.map(({ call, params }) => new Promise((resolve) => {
  analytics[call](params, (error) => {
    if (error) failed.push(String(error?.reason ?? error));
    else delivered += 1;
    resolve();
  });
}));
await Promise.all(sent);
await analytics.closeAndFlush({ timeout: 60000 });
console.log(JSON.stringify({ delivered, failed }));
