// posthog-node against sessionizer serve: POST /batch/ (gzip).
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import zlib from 'node:zlib';
import { test } from 'node:test';
import { PostHog } from 'posthog-node';
import {
  blockedConnections,
  checkAllSessions,
  checkEvents,
  scenario,
  startProxy,
  startServer,
} from '../lib.mjs';

// PostHog corrects the client's clock by `sent_at` (as PostHog's own ingestion
// does): a stored time is the event time plus the request's transit time
// (`now - sent_at` at the server), a few milliseconds on loopback.
const TOLERANCE_MS = 2000;

/** Only the host and the project key differ from PostHog's defaults. */
function posthog(host, key) {
  const client = new PostHog(key, { host });
  const errors = [];
  client.on('error', (error) => errors.push(error));
  return { client, errors };
}

/** Captures the events and flushes them as one batch. */
async function capture({ client, errors }, events) {
  for (const e of events) {
    client.capture({
      distinctId: e.userId,
      event: e.eventType,
      properties: { plan: 'pro', note: e.name },
      timestamp: new Date(e.timeMs),
      uuid: e.insertId,
    });
  }
  await client.flush();
  assert.deepEqual(errors, []);
}

const bodyOf = (request) => JSON.parse(zlib.gunzipSync(request.body));

test('posthog-node', async (t) => {
  const server = await startServer('posthog');
  t.after(() => server.stop());
  const ids = new Map();
  const plan = scenario('ph', (name) => ids.get(name) ?? ids.set(name, randomUUID()).get(name));
  const sdk = posthog(server.url, server.writeKey);
  const tolerance = { toleranceMs: TOLERANCE_MS };

  await t.test('events arrive once with their times; a 40-minute gap makes two sessions', async () => {
    await capture(sdk, plan.first);
    await checkEvents(server, plan, plan.first, { ...tolerance, sessions: plan.sessionsBeforeLate });
    await checkAllSessions(server, plan.sessionsBeforeLate, tolerance);
  });

  await t.test('late events join their session, and one merges two sessions', async () => {
    await capture(sdk, plan.late);
    const { users } = plan;
    await checkEvents(server, plan, [...plan.first, ...plan.late], tolerance);
    await checkAllSessions(server, { [users.alice]: plan.sessions[users.alice], [users.bob]: plan.sessions[users.bob] }, tolerance);
  });

  await t.test('the same batch sent again is not stored twice', async () => {
    const before = await server.metric('sessionizer_duplicate_events_total');
    const again = [...plan.first, ...plan.late];
    await capture(sdk, again);
    assert.equal(await server.metric('sessionizer_duplicate_events_total'), before + again.length);
    await checkEvents(server, plan, [...plan.first, ...plan.late], tolerance);
  });

  await t.test('a lost answer: the SDK retries the batch (gzip), stored once', async () => {
    const proxy = await startProxy(server.url, { failAfterStoring: 1 });
    try {
      const viaProxy = posthog(proxy.url, server.writeKey);
      await capture(viaProxy, plan.retried);
      await viaProxy.client.shutdown();
      assert.equal(proxy.requests.length, 2);
      assert.equal(proxy.requests[0].url, '/batch/');
      assert.equal(proxy.requests[0].headers['content-encoding'], 'gzip');
      assert.equal(proxy.requests[0].upstream.status, 200, 'the first request was stored');
      assert.ok(proxy.requests[0].failed);
      const resent = bodyOf(proxy.requests[1]).batch.map((m) => m.uuid);
      assert.deepEqual(resent, plan.retried.map((e) => e.insertId), 'the retry carries the same uuids');
    } finally {
      await proxy.close();
    }
    await checkEvents(server, plan, plan.all, tolerance);
    await checkAllSessions(server, plan.sessions, tolerance);
  });

  await t.test('a batch with an invalid event: the valid events are kept, the invalid one dropped', async () => {
    const proxy = await startProxy(server.url);
    const now = Date.now();
    const dave = 'ph-dave';
    const batch = [
      { name: 'd1', userId: dave, eventType: 'Page Viewed', timeMs: now - 60_000, insertId: randomUUID() },
      { name: 'd2', userId: dave, eventType: 'From The Future', timeMs: now + 2 * 3_600_000, insertId: randomUUID() },
      { name: 'd3', userId: dave, eventType: 'Checkout', timeMs: now - 30_000, insertId: randomUUID() },
    ];
    try {
      const viaProxy = posthog(proxy.url, server.writeKey);
      await capture(viaProxy, batch);
      await viaProxy.client.shutdown();
      assert.equal(proxy.requests.length, 1);
      assert.equal(proxy.requests[0].upstream.status, 200);
    } finally {
      await proxy.close();
    }
    const stored = (await server.exportEvents(now - 3_600_000, now + 3_600_000)).filter((e) => e.user_id === dave);
    assert.deepEqual(stored.map((e) => e.insert_id), [batch[0].insertId, batch[2].insertId]);
  });

  await t.test('a batch over 5 MiB: the server answers 413, the SDK halves the batch and resends, all stored once', async () => {
    // 150 events of ~60 KB each (below the 64 KiB per-event bound) of random base64, so that even
    // gzipped (the SDK's default) the batch is over the server's 5 MiB body bound; half of it is under.
    // Straight to the server (no proxy); the SDK's `fetch` option only records each answer's status.
    const now = Date.now();
    const gina = 'ph-gina';
    const big = Array.from({ length: 150 }, (_, i) => ({
      name: `g${i}`,
      userId: gina,
      eventType: 'Big',
      timeMs: now - 3_600_000 + i * 1000,
      insertId: randomUUID(),
      blob: randomBytes(45_000).toString('base64'),
    }));
    const answers = [];
    const client = new PostHog(server.writeKey, {
      host: server.url,
      flushAt: 1000,
      maxBatchSize: 150,
      fetch: async (url, options) => {
        const response = await fetch(url, options);
        answers.push({ url, status: response.status, bytes: options.body.length ?? options.body.size });
        return response;
      },
    });
    const errors = [];
    client.on('error', (error) => errors.push(error));
    for (const e of big) {
      client.capture({ distinctId: e.userId, event: e.eventType, properties: { blob: e.blob }, timestamp: new Date(e.timeMs), uuid: e.insertId });
    }
    await client.flush();
    await client.shutdown();
    assert.deepEqual(errors, []);
    assert.deepEqual(
      answers.map((a) => a.status),
      [413, 200, 200],
      JSON.stringify(answers),
    );
    assert.ok(answers[0].bytes > 5 * 1024 * 1024, `the first body is ${answers[0].bytes} bytes`);
    const stored = (await server.exportEvents(now - 2 * 3_600_000, now + 3_600_000)).filter((e) => e.user_id === gina);
    assert.equal(stored.length, big.length);
    assert.deepEqual(stored.map((e) => e.insert_id).sort(), big.map((e) => e.insertId).sort(), 'each event stored once');
  });

  await t.test('shutdown; only loopback was contacted', async () => {
    await sdk.client.shutdown();
    assert.deepEqual(sdk.errors, []);
    assert.deepEqual(blockedConnections, []);
  });
});
