// The benchmark's peer: N notifications through @parse/node-apn (the APNs client Parse Server
// uses) to the APNs simulator, with the relay's payload shape, tokens and ids.
// Usage: node send.js SPEC.json (the same spec as bench/loadgen.py's aioapns mode); the result
// is written as JSON to the spec's result_file.
'use strict';

const fs = require('fs');
const apn = require('@parse/node-apn');

const ACTION = 'wait-for-agent';

function deviceTokens(count, seed) {
  const prefix = seed.toString(16).padStart(8, '0');
  return Array.from({ length: count }, (_, i) => prefix + i.toString(16).padStart(56, '0'));
}

function gmsId(prefix, index) {
  return prefix + index.toString(16).toUpperCase().padStart(32 - prefix.length, '0');
}

function notificationFor(serviceId, topic) {
  const note = new apn.Notification();
  note.topic = topic;
  note.pushType = 'alert';
  note.priority = 10;
  note.expiry = Math.floor(Date.now() / 1000) + 3600;
  note.alert = {
    title: 'You are in the queue',
    body: 'We will notify you when an agent is available.',
  };
  note.sound = 'default';
  note.payload = { message: { _id: serviceId, _action: ACTION } };
  return note;
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const target = spec.target;
  const provider = new apn.MultiProvider({
    token: { key: fs.readFileSync(target.key_file), keyId: target.key_id, teamId: target.team_id },
    production: false,
    address: target.host,
    port: target.port,
    ca: [fs.readFileSync(target.ca)],
    clientCount: spec.connections,
  });
  const tokens = deviceTokens(spec.devices, spec.seed);
  const statuses = {};
  let next = 0;
  async function sender() {
    while (next < spec.n) {
      const index = next++;
      const note = notificationFor(gmsId(spec.id_prefix, index), target.topic);
      const result = await provider.send(note, tokens[index % tokens.length]);
      const key = result.sent.length ? '200' : String(result.failed[0].status || 'error');
      statuses[key] = (statuses[key] || 0) + 1;
    }
  }
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: spec.concurrency }, sender));
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  provider.shutdown();
  fs.writeFileSync(
    spec.result_file,
    JSON.stringify({ sent: spec.n, ok: statuses['200'] || 0, statuses, elapsed_s: elapsed }),
  );
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
