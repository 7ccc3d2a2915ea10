// @rudderstack/rudder-sdk-node against sessionizer serve: POST /v1/batch,
// gzip with a form Content-Type, Basic auth.
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { test } from 'node:test';
import Analytics from '@rudderstack/rudder-sdk-node';
import {
  blockedConnections,
  checkAllSessions,
  checkEvents,
  scenario,
  startProxy,
  startServer,
} from '../lib.mjs';

/** Only the data plane URL and the write key differ from RudderStack's defaults. Without an
 * `errorHandler` a failed first flush is an unhandled rejection (see the clients README). */
function rudderstack(dataPlaneUrl, writeKey) {
  const errors = [];
  const client = new Analytics(writeKey, { dataPlaneUrl, logLevel: 'error', errorHandler: (error) => errors.push(error) });
  return { client, errors };
}

/**
 * Tracks the events and flushes; each event's callback error. Alice's events
 * carry `timestamp` (the SDK also sets `originalTimestamp` to now), the others
 * only `originalTimestamp` = the event time: both must give the event time.
 */
async function track({ client }, events, alice) {
  const done = events.map(
    (e) =>
      new Promise((resolve) => {
        const time = new Date(e.timeMs);
        const when = e.userId === alice ? { timestamp: time } : { originalTimestamp: time };
        client.track({ userId: e.userId, event: e.eventType, properties: { plan: 'pro', note: e.name }, messageId: e.insertId, ...when }, resolve);
      }),
  );
  // The SDK sends its very first event alone at once; flush() sends up to flushAt (20) queued events.
  while (client.queue.length > 0) await client.flush();
  await client.flush();
  return Promise.all(done);
}

const ok = (events) => events.map(() => undefined);
const bodyOf = (request) => JSON.parse(zlib.gunzipSync(request.body));

test('@rudderstack/rudder-sdk-node', async (t) => {
  const server = await startServer('rudderstack');
  t.after(() => server.stop());
  const plan = scenario('rs');
  const { alice } = plan.users;
  const sdk = rudderstack(server.url, server.writeKey);

  await t.test('events arrive once with their times; a 40-minute gap makes two sessions', async () => {
    assert.deepEqual(await track(sdk, plan.first, alice), ok(plan.first));
    await checkEvents(server, plan, plan.first, { sessions: plan.sessionsBeforeLate });
    await checkAllSessions(server, plan.sessionsBeforeLate);
  });

  await t.test('late events join their session, and one merges two sessions', async () => {
    assert.deepEqual(await track(sdk, plan.late, alice), ok(plan.late));
    const { users } = plan;
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
    await checkAllSessions(server, { [users.alice]: plan.sessions[users.alice], [users.bob]: plan.sessions[users.bob] });
  });

  await t.test('the same batch sent again is not stored twice', async () => {
    const before = await server.metric('sessionizer_duplicate_events_total');
    const again = [...plan.first, ...plan.late];
    assert.deepEqual(await track(sdk, again, alice), ok(again));
    assert.equal(await server.metric('sessionizer_duplicate_events_total'), before + again.length);
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
  });

  await t.test('a lost answer: the SDK retries the batch (gzip, form Content-Type), stored once', async () => {
    const proxy = await startProxy(server.url, { failAfterStoring: [1] });
    try {
      const viaProxy = rudderstack(proxy.url, server.writeKey);
      // The SDK flushes its very first event alone: send one already stored event first (a duplicate),
      // then the three events as one batch, whose answer (the second request) is lost.
      assert.deepEqual(await track(viaProxy, plan.first.slice(0, 1), alice), [undefined]);
      assert.deepEqual(await track(viaProxy, plan.retried, alice), ok(plan.retried));
      assert.deepEqual(viaProxy.errors, []);
      const carrying = proxy.requests.filter((r) => bodyOf(r).batch.some((m) => m.messageId === plan.retried[0].insertId));
      assert.equal(carrying.length, 2, 'sent, answer lost, sent again');
      assert.equal(carrying[0].upstream.status, 200, 'the first request was stored');
      assert.ok(carrying[0].failed);
      assert.ok(!carrying[1].failed);
      for (const request of proxy.requests) {
        assert.equal(request.headers['content-encoding'], 'gzip');
        assert.equal(request.headers['content-type'], 'application/x-www-form-urlencoded');
        assert.match(request.headers.authorization, /^Basic /);
      }
      assert.deepEqual(
        bodyOf(carrying[1]).batch.map((m) => m.messageId),
        bodyOf(carrying[0]).batch.map((m) => m.messageId),
        'the retry carries the same message ids',
      );
    } finally {
      await proxy.close();
    }
    await checkEvents(server, plan, plan.all);
    await checkAllSessions(server, plan.sessions);
  });

  await t.test('a batch with an invalid event: the valid events are kept, the invalid one dropped', async () => {
    const now = Date.now();
    const dave = 'rs-dave';
    const batch = [
      { name: 'd1', userId: dave, eventType: 'Page Viewed', timeMs: now - 60_000, insertId: 'rs-d1' },
      { name: 'd2', userId: dave, eventType: 'From The Future', timeMs: now + 2 * 3_600_000, insertId: 'rs-d2' },
      { name: 'd3', userId: dave, eventType: 'Checkout', timeMs: now - 30_000, insertId: 'rs-d3' },
    ];
    assert.deepEqual(await track(sdk, batch, dave), ok(batch));
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === dave);
    assert.deepEqual(stored.map((e) => e.insert_id), ['rs-d1', 'rs-d3']);
    assert.deepEqual(stored.map((e) => e.time_ms), [batch[0].timeMs, batch[2].timeMs]);
  });

  await t.test('no SDK errors; only loopback was contacted', () => {
    assert.deepEqual(sdk.errors, []);
    assert.deepEqual(blockedConnections, []);
  });
});
