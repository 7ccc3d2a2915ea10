// @segment/analytics-node against sessionizer serve: POST /v1/batch.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Analytics } from '@segment/analytics-node';
import {
  blockedConnections,
  checkAllSessions,
  checkEvents,
  scenario,
  startProxy,
  startServer,
} from '../lib.mjs';

/** Only the host and the write key differ from Segment's defaults. */
const segment = (host, writeKey) => new Analytics({ writeKey, host, path: '/v1/batch' });

/** Tracks the events and flushes them as one batch; each event's callback error (undefined on success). */
async function track(analytics, events) {
  const done = events.map(
    (e) =>
      new Promise((resolve) =>
        analytics.track(
          {
            userId: e.userId,
            event: e.eventType,
            properties: { plan: 'pro', note: e.name },
            timestamp: new Date(e.timeMs),
            messageId: e.insertId,
          },
          (error) => resolve(error),
        ),
      ),
  );
  await analytics.flush();
  return Promise.all(done);
}

const ok = (events) => events.map(() => undefined);

test('@segment/analytics-node', async (t) => {
  const server = await startServer('segment');
  t.after(() => server.stop());
  const plan = scenario('seg');
  const analytics = segment(server.url, server.writeKey);
  const failures = [];
  analytics.on('error', (error) => failures.push(error));

  await t.test('events arrive once with their times; a 40-minute gap makes two sessions', async () => {
    assert.deepEqual(await track(analytics, plan.first), ok(plan.first));
    await checkEvents(server, plan, plan.first, { sessions: plan.sessionsBeforeLate });
    await checkAllSessions(server, plan.sessionsBeforeLate);
  });

  await t.test('late events join their session, and one merges two sessions', async () => {
    assert.deepEqual(await track(analytics, plan.late), ok(plan.late));
    const { users } = plan;
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
    await checkAllSessions(server, { [users.alice]: plan.sessions[users.alice], [users.bob]: plan.sessions[users.bob] });
  });

  await t.test('the same batch sent again is not stored twice', async () => {
    const before = await server.metric('sessionizer_duplicate_events_total');
    const again = [...plan.first, ...plan.late];
    assert.deepEqual(await track(analytics, again), ok(again));
    assert.equal(await server.metric('sessionizer_duplicate_events_total'), before + again.length);
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
  });

  await t.test('a lost answer: the SDK retries the batch, stored once', async () => {
    const proxy = await startProxy(server.url, { failAfterStoring: 1 });
    try {
      const viaProxy = segment(proxy.url, server.writeKey);
      assert.deepEqual(await track(viaProxy, plan.retried), ok(plan.retried));
      await viaProxy.closeAndFlush();
      assert.equal(proxy.requests.length, 2);
      assert.equal(proxy.requests[0].upstream.status, 200, 'the first request was stored');
      assert.ok(proxy.requests[0].failed);
      assert.equal(proxy.requests[1].headers['x-retry-count'], '1');
      const resent = JSON.parse(proxy.requests[1].body).batch.map((m) => m.messageId);
      assert.deepEqual(resent, plan.retried.map((e) => e.insertId), 'the retry carries the same message ids');
      assert.deepEqual(JSON.parse(proxy.requests[1].upstream.body), { success: true, accepted: 0, duplicates: 3, dropped: [] });
      assert.match(proxy.requests[1].headers.authorization, /^Basic /);
    } finally {
      await proxy.close();
    }
    await checkEvents(server, plan, plan.all);
    await checkAllSessions(server, plan.sessions);
  });

  await t.test('a batch with an invalid event: the valid events are kept, the invalid one dropped', async () => {
    const proxy = await startProxy(server.url);
    const now = Date.now();
    const dave = 'seg-dave';
    const batch = [
      { name: 'd1', userId: dave, eventType: 'Page Viewed', timeMs: now - 60_000, insertId: 'seg-d1' },
      { name: 'd2', userId: dave, eventType: 'From The Future', timeMs: now + 2 * 3_600_000, insertId: 'seg-d2' },
      { name: 'd3', userId: dave, eventType: 'Checkout', timeMs: now - 30_000, insertId: 'seg-d3' },
    ];
    try {
      const viaProxy = segment(proxy.url, server.writeKey);
      // Segment drops a whole batch on any 4xx, so the server answers 200 and drops only the invalid event.
      assert.deepEqual(await track(viaProxy, batch), ok(batch));
      await viaProxy.closeAndFlush();
      assert.equal(proxy.requests.length, 1);
      assert.equal(proxy.requests[0].upstream.status, 200);
      assert.deepEqual(JSON.parse(proxy.requests[0].upstream.body), { success: true, accepted: 2, duplicates: 0, dropped: [1] });
    } finally {
      await proxy.close();
    }
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === dave);
    assert.deepEqual(stored.map((e) => e.insert_id), ['seg-d1', 'seg-d3']);
    assert.deepEqual(stored.map((e) => e.time_ms), [batch[0].timeMs, batch[2].timeMs]);
  });

  await t.test('closeAndFlush; no SDK errors; only loopback was contacted', async () => {
    await analytics.closeAndFlush();
    assert.deepEqual(failures, []);
    assert.deepEqual(blockedConnections, []);
  });
});
