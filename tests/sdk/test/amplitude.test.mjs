// @amplitude/analytics-node against sessionizer serve: POST /2/httpapi.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createInstance } from '@amplitude/analytics-node';
import {
  blockedConnections,
  checkAllSessions,
  checkEvents,
  scenario,
  startProxy,
  sleep,
  startServer,
} from '../lib.mjs';

/** An SDK instance pointed at `baseUrl`: only the server URL and the key differ from Amplitude's defaults
 * (plus a short flush interval so the test does not wait 10 s per batch). */
async function amplitude(baseUrl, key) {
  const client = createInstance();
  await client.init(key, { serverUrl: `${baseUrl}/2/httpapi`, flushIntervalMillis: 100, logLevel: 0 }).promise;
  return client;
}

/** Tracks the events in one batch; the SDK's results. */
async function track(client, events) {
  const pending = events.map(
    (e) => client.track(e.eventType, { plan: 'pro', note: e.name }, { user_id: e.userId, time: e.timeMs, insert_id: e.insertId }).promise,
  );
  return Promise.all(pending);
}

const codes = (results) => results.map((r) => r.code);

test('@amplitude/analytics-node', async (t) => {
  const server = await startServer('amplitude');
  t.after(() => server.stop());
  const plan = scenario('amp');
  const client = await amplitude(server.url, server.writeKey);

  await t.test('events arrive once with their times; a 40-minute gap makes two sessions', async () => {
    const results = await track(client, plan.first);
    assert.deepEqual(codes(results), plan.first.map(() => 200), JSON.stringify(results.map((r) => r.message)));
    await checkEvents(server, plan, plan.first, { sessions: plan.sessionsBeforeLate });
    await checkAllSessions(server, plan.sessionsBeforeLate);
  });

  await t.test('late events join their session, and one merges two sessions', async () => {
    const results = await track(client, plan.late);
    assert.deepEqual(codes(results), [200, 200]);
    const { users } = plan;
    await checkEvents(server, plan, [...plan.first, ...plan.late], { sessions: plan.sessions });
    await checkAllSessions(server, { [users.alice]: plan.sessions[users.alice], [users.bob]: plan.sessions[users.bob] });
  });

  await t.test('the same batch sent again is not stored twice', async () => {
    const before = await server.metric('sessionizer_duplicate_events_total');
    const again = [...plan.first, ...plan.late];
    const results = await track(client, again);
    assert.deepEqual(codes(results), again.map(() => 200));
    assert.equal(await server.metric('sessionizer_duplicate_events_total'), before + again.length);
    await checkEvents(server, plan, [...plan.first, ...plan.late]);
  });

  await t.test('a lost answer: the SDK retries the batch, stored once', async () => {
    const proxy = await startProxy(server.url, { failAfterStoring: 1 });
    try {
      const viaProxy = await amplitude(proxy.url, server.writeKey);
      const results = await track(viaProxy, plan.retried);
      assert.deepEqual(codes(results), [200, 200, 200]);
      assert.ok(proxy.requests.length >= 2, `${proxy.requests.length} requests`);
      assert.equal(proxy.requests[0].upstream.status, 200, 'the first request was stored');
      assert.ok(proxy.requests[0].failed);
      const resent = JSON.parse(proxy.requests[1].body).events.map((e) => e.insert_id);
      assert.deepEqual(resent, plan.retried.map((e) => e.insertId), 'the retry carries the same insert ids');
      assert.deepEqual(JSON.parse(proxy.requests[1].upstream.body).code, 200);
    } finally {
      await proxy.close();
    }
    await checkEvents(server, plan, plan.all);
    await checkAllSessions(server, plan.sessions);
  });

  await t.test('a batch with an invalid event: 400 lists it by index, the SDK drops it and resends the rest', async () => {
    const proxy = await startProxy(server.url);
    const now = Date.now();
    const dave = 'amp-dave';
    const batch = [
      { name: 'd1', userId: dave, eventType: 'Page Viewed', timeMs: now - 60_000, insertId: 'amp-d1' },
      { name: 'd2', userId: dave, eventType: 'From The Future', timeMs: now + 2 * 3_600_000, insertId: 'amp-d2' },
      { name: 'd3', userId: dave, eventType: 'Checkout', timeMs: now - 30_000, insertId: 'amp-d3' },
    ];
    try {
      const viaProxy = await amplitude(proxy.url, server.writeKey);
      const results = await track(viaProxy, batch);
      assert.deepEqual(codes(results), [200, 400, 200]);
      const first = JSON.parse(proxy.requests[0].upstream.body);
      assert.equal(proxy.requests[0].upstream.status, 400);
      assert.deepEqual(first.events_with_invalid_fields, { time: [1] });
      assert.equal(first.code, 400);
      const resent = JSON.parse(proxy.requests[1].body).events.map((e) => e.insert_id);
      assert.deepEqual(resent, ['amp-d1', 'amp-d3']);
    } finally {
      await proxy.close();
    }
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === dave);
    assert.deepEqual(stored.map((e) => e.insert_id), ['amp-d1', 'amp-d3']);
    assert.deepEqual(stored.map((e) => e.time_ms), [batch[0].timeMs, batch[2].timeMs]);
  });

  await t.test('the batch API (useBatch: POST /batch, shared with PostHog) answers the same way', async () => {
    const proxy = await startProxy(server.url);
    const now = Date.now();
    const erin = 'amp-erin';
    const batch = [
      { name: 'e1', userId: erin, eventType: 'Page Viewed', timeMs: now - 120_000, insertId: 'amp-e1' },
      { name: 'e2', userId: erin, eventType: 'Checkout', timeMs: now - 60_000, insertId: 'amp-e2' },
    ];
    try {
      const batchClient = createInstance();
      await batchClient.init(server.writeKey, { serverUrl: `${proxy.url}/batch`, useBatch: true, flushIntervalMillis: 100, logLevel: 0 })
        .promise;
      assert.deepEqual(codes(await track(batchClient, batch)), [200, 200]);
      assert.equal(proxy.requests.length, 1);
      assert.equal(proxy.requests[0].url, '/batch');
      assert.equal(JSON.parse(proxy.requests[0].upstream.body).events_ingested, 2);
    } finally {
      await proxy.close();
    }
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === erin);
    assert.deepEqual(stored.map((e) => [e.insert_id, e.time_ms]), batch.map((e) => [e.insertId, e.timeMs]));
  });

  await t.test('2,500 queued events in one flush: the server answers 413, the SDK halves its batch and resends, all stored once', async () => {
    // flushQueueSize above the server's 2,000 events per request. The 2,500 events are the SDK's own
    // backlog (unsent events its storageProvider kept, e.g. from a previous process), which `init`
    // queues all at once, so the first scheduled flush carries all of them. (Queuing them with track()
    // would take the SDK about 3.5 s: its timeline handles one event per setTimeout. And an explicit
    // flush() sends without retry handling, so a 413 there is final: only the scheduled flush halves.)
    // The server's own 413 answers the first request; the SDK halves flushQueueSize and resends 1,250 + 1,250.
    const proxy = await startProxy(server.url);
    const now = Date.now();
    const frank = 'amp-frank';
    const many = Array.from({ length: 2500 }, (_, i) => ({
      event_type: 'Bulk',
      user_id: frank,
      time: now - 3_600_000 + i * 1000,
      insert_id: `amp-f${i}`,
      event_properties: { n: i },
    }));
    const saved = [];
    const storageProvider = {
      isEnabled: async () => true,
      get: async (key) => (key.startsWith('AMP_') ? many.map((e) => ({ ...e })) : undefined),
      getRaw: async () => undefined,
      set: async (key, value) => {
        saved.push(value.length);
      },
      remove: async () => undefined,
      reset: async () => undefined,
    };
    try {
      const bulk = createInstance();
      await bulk.init(server.writeKey, {
        serverUrl: `${proxy.url}/2/httpapi`,
        flushQueueSize: 2500,
        flushIntervalMillis: 100,
        storageProvider,
        logLevel: 0,
      }).promise;
      const deadline = Date.now() + 20_000;
      while (saved.at(-1) !== 0 && Date.now() < deadline) await sleep(20);
      assert.equal(saved.at(-1), 0, `the SDK's queue is empty at the end (saved sizes ${saved.slice(-5)})`);
      const sent = proxy.requests.map((r) => [JSON.parse(r.body).events.length, r.upstream.status]);
      assert.deepEqual(sent, [
        [2500, 413],
        [1250, 200],
        [1250, 200],
      ]);
      assert.deepEqual(JSON.parse(proxy.requests[0].upstream.body), { code: 413, error: 'Payload too large' });
      const resent = proxy.requests.slice(1).flatMap((r) => JSON.parse(r.body).events.map((e) => e.insert_id));
      assert.deepEqual(resent, many.map((e) => e.insert_id), 'the halves carry every event once, in order');
    } finally {
      await proxy.close();
    }
    const stored = (await server.exportEvents(now - 2 * 3_600_000, now + 3_600_000)).filter((e) => e.user_id === frank);
    assert.equal(stored.length, 2500);
    assert.equal(new Set(stored.map((e) => e.insert_id)).size, 2500, 'each event stored once');
    const byId = new Map(stored.map((e) => [e.insert_id, e.time_ms]));
    for (const e of many) assert.equal(byId.get(e.insert_id), e.time, `${e.insert_id}: time`);
  });

  await t.test('only loopback was contacted', () => {
    assert.deepEqual(blockedConnections, []);
  });
});
