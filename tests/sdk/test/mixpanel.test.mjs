// mixpanel (Node) against sessionizer serve: GET /track?data=<base64> (track)
// and POST /track with a form body data=<base64> (track_batch).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import Mixpanel from 'mixpanel';
import {
  blockedConnections,
  checkAllSessions,
  checkEvents,
  scenario,
  startProxy,
  startServer,
} from '../lib.mjs';

/** Only the host (and the protocol, http here) and the token differ from Mixpanel's defaults. */
const mixpanel = (baseUrl, token, extra = {}) =>
  Mixpanel.init(token, { host: new URL(baseUrl).host, protocol: 'http', keepAlive: false, ...extra });

// Runs of '>' make '+' in the base64 of every request (">>>" is "Pj4+"), which
// the POST body carries unescaped: it must not be read as a space.
const ARROWS = '>>>>>>>>>';

const properties = (e, time) => ({
  distinct_id: e.userId,
  time,
  $insert_id: e.insertId,
  plan: 'pro',
  note: e.name,
  arrows: ARROWS,
});

/** `track`: one GET per event. Resolves with each callback's error (undefined when the answer was `1`). */
const trackEach = (mp, events) =>
  Promise.all(events.map((e) => new Promise((resolve) => mp.track(e.eventType, properties(e, new Date(e.timeMs)), resolve))));

/** `track_batch`: one form POST; times in seconds, as Mixpanel documents them. Resolves with the callback's errors. */
const trackBatch = (mp, events) =>
  new Promise((resolve) =>
    mp.track_batch(
      events.map((e) => ({ event: e.eventType, properties: properties(e, Math.floor(e.timeMs / 1000)) })),
      (errors) => resolve(errors),
    ),
  );

const base64Data = (request) => {
  const text = request.method === 'GET' ? new URL(request.url, 'http://x').searchParams.get('data') : null;
  if (text !== null) return text;
  const body = request.body.toString();
  assert.ok(body.startsWith('data='), body);
  return body.slice('data='.length); // as sent: not URL-encoded
};

test('mixpanel', async (t) => {
  const server = await startServer('mixpanel');
  t.after(() => server.stop());
  const plan = scenario('mp');
  const mp = mixpanel(server.url, server.writeKey);

  await t.test('track_batch (POST): events arrive once with their times; a 40-minute gap makes two sessions', async () => {
    assert.equal(await trackBatch(mp, plan.first), null);
    await checkEvents(server, plan, plan.first, { sessions: plan.sessionsBeforeLate });
    await checkAllSessions(server, plan.sessionsBeforeLate);
  });

  await t.test('track (GET): late events join their session, and one merges two sessions', async () => {
    assert.deepEqual(await trackEach(mp, plan.late), [undefined, undefined]);
    const { users } = plan;
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
    await checkAllSessions(server, { [users.alice]: plan.sessions[users.alice], [users.bob]: plan.sessions[users.bob] });
  });

  await t.test('the same events sent again (both paths) are not stored twice', async () => {
    const before = await server.metric('sessionizer_duplicate_events_total');
    assert.equal(await trackBatch(mp, [...plan.first, ...plan.late]), null);
    assert.deepEqual(await trackEach(mp, plan.first), plan.first.map(() => undefined));
    const resent = plan.first.length * 2 + plan.late.length;
    assert.equal(await server.metric('sessionizer_duplicate_events_total'), before + resent);
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
  });

  await t.test("'+' in the base64: unescaped in the POST body, %2B in the GET query; a batch sent twice is stored once", async () => {
    const proxy = await startProxy(server.url);
    try {
      const viaProxy = mixpanel(proxy.url, server.writeKey);
      // Mixpanel's SDK never retries: an app that resends sends the same batch again.
      assert.equal(await trackBatch(viaProxy, plan.retried), null);
      assert.equal(await trackBatch(viaProxy, plan.retried), null);
      assert.deepEqual(await trackEach(viaProxy, plan.retried.slice(0, 1)), [undefined]);
      const [post, again, get] = proxy.requests;
      assert.equal(post.method, 'POST');
      assert.equal(post.headers['content-type'], 'application/x-www-form-urlencoded');
      assert.ok(base64Data(post).includes('+'), 'the POST body carries a raw +');
      assert.deepEqual(post.body, again.body);
      assert.equal(get.method, 'GET');
      assert.ok(get.url.includes('%2B'), 'the GET query carries %2B');
      assert.ok(base64Data(get).includes('+'));
      for (const request of proxy.requests) {
        assert.equal(request.upstream.status, 200);
        assert.equal(request.upstream.body, '1');
      }
      const decoded = JSON.parse(Buffer.from(base64Data(post), 'base64'));
      assert.equal(decoded[0].properties.arrows, ARROWS);
    } finally {
      await proxy.close();
    }
    await checkEvents(server, plan, plan.all);
    await checkAllSessions(server, plan.sessions);
  });

  await t.test('verbose: the answer is {"status":1,"error":null}', async () => {
    const verbose = mixpanel(server.url, server.writeKey, { verbose: true });
    assert.deepEqual(await trackEach(verbose, plan.first.slice(0, 1)), [undefined]);
    await checkEvents(server, plan, plan.all);
  });

  await t.test('a batch with an invalid event is rejected whole: the callback reports the error', async () => {
    const now = Date.now();
    const dave = 'mp-dave';
    const batch = [
      { name: 'd1', userId: dave, eventType: 'Page Viewed', timeMs: now - 60_000, insertId: 'mp-d1' },
      { name: 'd2', userId: dave, eventType: 'From The Future', timeMs: now + 2 * 3_600_000, insertId: 'mp-d2' },
    ];
    const errors = await trackBatch(mp, batch);
    assert.equal(errors?.length, 1);
    assert.match(String(errors[0]), /Mixpanel Server Error: 0/);
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === dave);
    assert.deepEqual(stored, []);
    // The same batch without the invalid event goes through.
    assert.equal(await trackBatch(mp, batch.slice(0, 1)), null);
  });

  await t.test('import (GET) and import_batch (POST) with the write key as the `key` option (api_key)', async () => {
    const now = Date.now();
    const erin = 'mp-erin';
    const importer = mixpanel(server.url, server.writeKey, { key: server.writeKey });
    const e1 = { userId: erin, eventType: 'Imported', timeMs: now - 120_000, insertId: 'mp-e1' };
    const e2 = { userId: erin, eventType: 'Imported Batch', timeMs: now - 60_000, insertId: 'mp-e2' };
    const single = await new Promise((resolve) =>
      importer.import(e1.eventType, new Date(e1.timeMs), { distinct_id: erin, $insert_id: e1.insertId }, resolve),
    );
    assert.equal(single, undefined);
    const batch = await new Promise((resolve) =>
      importer.import_batch([{ event: e2.eventType, properties: { distinct_id: erin, time: e2.timeMs, $insert_id: e2.insertId } }], resolve),
    );
    assert.equal(batch, null);
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === erin);
    assert.deepEqual(stored.map((e) => [e.insert_id, e.time_ms]), [[e1.insertId, e1.timeMs], [e2.insertId, e2.timeMs]]);
  });

  await t.test('a wrong token is refused', async () => {
    const wrong = mixpanel(server.url, 'not-a-key');
    const [error] = await trackEach(wrong, plan.first.slice(0, 1));
    assert.match(String(error), /Mixpanel Server Error: 0/);
  });

  await t.test('only loopback was contacted', () => {
    assert.deepEqual(blockedConnections, []);
  });
});
