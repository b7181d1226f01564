// Gives the audit API something to answer with before the fuzzing: one
// WebSocket session (connect, subscribe, unsubscribe, disconnect), then waits
// until its rows are readable through GET /api/v1/audit. Node 20 needs
// --experimental-websocket for the global WebSocket.
const [base, adminToken] = process.argv.slice(2);
if (!base || !adminToken) {
  console.error('usage: node --experimental-websocket seed-audit.mjs <http base> <admin token>');
  process.exit(2);
}
const deadline = Date.now() + 20_000;
const fail = (why) => {
  console.error(`seed-audit: ${why}`);
  process.exit(1);
};
const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/ws/location`);
const next = () =>
  new Promise((resolve, reject) => {
    ws.addEventListener('message', (e) => resolve(JSON.parse(e.data)), { once: true });
    ws.addEventListener('close', () => reject(new Error('closed')), { once: true });
  });
await new Promise((resolve, reject) => {
  ws.addEventListener('open', resolve, { once: true });
  ws.addEventListener('error', () => reject(new Error('cannot connect')), { once: true });
}).catch((e) => fail(e.message));
for (const type of ['subscribe_location', 'unsubscribe_location']) {
  const answer = next();
  ws.send(JSON.stringify({ type, data: { vendorId: 'spec-vendor', userId: 'spec-user' }, id: type }));
  const msg = await answer.catch((e) => fail(e.message));
  if (msg.id !== type || !['subscribed', 'unsubscribed'].includes(msg.type)) fail(`unexpected answer ${JSON.stringify(msg)}`);
}
ws.close(1000);
for (;;) {
  const r = await fetch(`${base}/api/v1/audit?userId=spec-user`, { headers: { authorization: `Bearer ${adminToken}` } });
  const body = await r.json();
  if (r.status === 200 && body.rows.some((row) => row.action === 'disconnect')) {
    console.log(`seed-audit: ${body.rows.length} audit rows of user spec-user`);
    break;
  }
  if (Date.now() > deadline) fail(`audit rows not visible after 20 s (last: ${r.status} ${JSON.stringify(body)})`);
  await new Promise((res) => setTimeout(res, 100));
}
