// Browser SDKs (@amplitude/analytics-browser, posthog-js, Segment's analytics.js
// from @segment/analytics-next) in headless Chromium,
// on a page served from another origin than sessionizer: every request needs
// CORS, and the JSON posts need a preflight that sessionizer must answer.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { blockedConnections, checkSessions, LOOPBACK_ONLY_CHROMIUM_ARGS, MINUTE, sleep, startServer } from '../lib.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const BUNDLES = {
  '/amplitude.js': require.resolve('@amplitude/analytics-browser/lib/scripts/amplitude-min.js'),
  '/posthog.js': path.join(path.dirname(require.resolve('posthog-js/package.json')), 'dist/array.full.no-external.js'),
  '/analytics-next.js': path.join(path.dirname(require.resolve('@segment/analytics-next/package.json')), 'dist/umd/index.js'),
};

/** Serves an empty page and the SDK bundles: the page's origin. */
async function startPageServer() {
  const server = http.createServer((request, response) => {
    const file = BUNDLES[new URL(request.url, 'http://x').pathname];
    if (file) {
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end(fs.readFileSync(file));
    } else {
      response.writeHead(200, { 'content-type': 'text/html' });
      response.end('<!doctype html><html><head><title>sdk test</title></head><body></body></html>');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    });
  return { origin: `http://127.0.0.1:${server.address().port}`, close };
}

/** Polls the export until `count` events of `userId` are stored (browser SDKs send in the background). */
async function waitForEvents(server, userId, range, count) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const events = (await server.exportEvents(...range)).filter((e) => e.user_id === userId);
    if (events.length >= count || Date.now() > deadline) return events;
    await sleep(200);
  }
}

test('browser SDKs in headless Chromium, from another origin', { timeout: 90_000, skip: !fs.existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, async (t) => {
  const { chromium } = await import('playwright-core');
  const server = await startServer('browser');
  const pages = await startPageServer();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sessionizer-sdk-chromium-'));
  let context = null;
  t.after(async () => {
    await context?.close(); // first: Chromium keeps connections to both servers open
    fs.rmSync(profile, { recursive: true, force: true });
    await pages.close();
    await server.stop();
  });
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: LOOPBACK_ONLY_CHROMIUM_ARGS,
  });
  const failed = [];
  const consoleErrors = [];
  /** Requests from the pages to sessionizer, as Chromium sent them (preflights are not listed). */
  const sent = [];
  context.on('request', (request) => {
    if (request.url().startsWith(server.url)) {
      sent.push({ method: request.method(), url: request.url().slice(server.url.length), type: request.headers()['content-type'], body: request.postDataBuffer() });
    }
  });
  context.on('requestfailed', (request) => failed.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  const t0 = Math.floor((Date.now() - 3 * 60 * MINUTE) / 1000) * 1000;
  const range = [t0 - 60 * MINUTE, Date.now() + 2 * 60 * MINUTE];
  assert.notEqual(new URL(pages.origin).origin, new URL(server.url).origin);

  const openPage = async (bundle) => {
    const page = await context.newPage();
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(`${message.text()} (${message.location().url})`);
    });
    await page.goto(`${pages.origin}/`);
    await page.addScriptTag({ url: bundle });
    return page;
  };

  await t.test('preflight: the ingestion routes allow the page origin, the read routes do not', async () => {
    const preflight = await fetch(`${server.url}/2/httpapi`, {
      method: 'OPTIONS',
      headers: { Origin: pages.origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), pages.origin);
    assert.match(preflight.headers.get('access-control-allow-methods'), /POST/);
    assert.equal(preflight.headers.get('access-control-allow-headers'), 'content-type');
    const read = await fetch(`${server.url}/v1/sessions?user_id=x`, { headers: { Origin: pages.origin, Authorization: `Bearer ${server.readKey}` } });
    assert.equal(read.status, 200);
    assert.equal(read.headers.get('access-control-allow-origin'), null);
  });

  await t.test('@amplitude/analytics-browser: JSON posts across origins, code 200, events and sessions', async () => {
    const user = 'web-alice';
    const event = (name, minutes, type) => ({ name, type, time: t0 + minutes * MINUTE, id: `web-${name}` });
    const first = [event('a1', 0, 'Page Viewed'), event('a2', 5, 'Button Clicked'), event('a3', 45, 'Page Viewed')];
    const late = [event('a4', 2, 'Late Event')];
    const page = await openPage('/amplitude.js');
    const track = (events) =>
      page.evaluate(
        async ({ events }) =>
          Promise.all(
            events.map((e) => window.amplitude.track(e.type, { note: e.name }, { time: e.time, insert_id: e.id }).promise),
          ).then((results) => results.map((r) => r.code)),
        { events },
      );
    await page.evaluate(
      async ({ key, serverUrl, user }) => {
        await window.amplitude.init(key, user, {
          serverUrl,
          fetchRemoteConfig: false,
          autocapture: false,
          identityStorage: 'localStorage',
          flushIntervalMillis: 200,
          logLevel: 0,
        }).promise;
      },
      { key: server.writeKey, serverUrl: `${server.url}/2/httpapi`, user },
    );
    assert.deepEqual(await track(first), [200, 200, 200]);
    assert.deepEqual(await track(late), [200]);
    // The same events again (a resend): stored once.
    assert.deepEqual(await track([...first, ...late]), [200, 200, 200, 200]);
    const stored = (await server.exportEvents(...range)).filter((e) => e.user_id === user);
    const all = [...first, ...late].sort((a, b) => a.time - b.time);
    assert.deepEqual(
      stored.map((e) => [e.insert_id, e.time_ms, e.event_type]),
      all.map((e) => [e.id, e.time, e.type]),
    );
    assert.ok(stored.every((e) => e.device_id), 'the browser SDK sends its device id');
    await checkSessions(server, user, [
      { start_ms: t0, end_ms: t0 + 5 * MINUTE, event_count: 3 },
      { start_ms: t0 + 45 * MINUTE, end_ms: t0 + 45 * MINUTE, event_count: 1 },
    ]);
    // application/json across origins: Chromium sent each only after a successful preflight.
    const posts = sent.filter((r) => r.url === '/2/httpapi');
    assert.equal(posts.length, 3);
    assert.ok(posts.every((r) => r.method === 'POST' && r.type === 'application/json'));
    // The read API is not readable from the page's origin, even with a key.
    const readable = await page.evaluate(
      async ({ url, key }) => fetch(url, { headers: { Authorization: `Bearer ${key}` } }).then(() => true, () => false),
      { url: `${server.url}/v1/sessions?user_id=${user}`, key: server.readKey },
    );
    assert.equal(readable, false);
    await page.close();
  });

  await t.test('posthog-js: config, gzip bodies sent as text/plain, a sendBeacon, events and sessions', async () => {
    const user = 'web-bob';
    const event = (name, minutes, type) => ({ name, type, time: t0 + minutes * MINUTE, id: randomUUID() });
    const instant = [event('b1', 0, 'Page Viewed'), event('b2', 40, 'Page Viewed')];
    const beacon = event('b3', 20, 'Late Event');
    const page = await openPage('/posthog.js');
    await page.evaluate(
      ({ key, host, user }) => {
        window.posthog.init(key, {
          api_host: host,
          opt_out_useragent_filter: true, // HeadlessChrome counts as a bot otherwise
          autocapture: false,
          capture_pageview: false,
          capture_pageleave: false,
          disable_session_recording: true,
          disable_surveys: true,
          persistence: 'localStorage',
          bootstrap: { distinctID: user, isIdentifiedID: true },
        });
      },
      { key: server.writeKey, host: server.url, user },
    );
    const capture = (events, options) =>
      page.evaluate(
        ({ events, options }) => {
          for (const e of events) {
            window.posthog.capture(e.type, { note: e.name }, { timestamp: new Date(e.time), uuid: e.id, ...options });
          }
        },
        { events, options },
      );
    await capture(instant, { send_instantly: true });
    let stored = await waitForEvents(server, user, range, 2);
    assert.equal(stored.length, 2, JSON.stringify(stored));
    await checkSessions(server, user, [
      { start_ms: t0, end_ms: t0, event_count: 1 },
      { start_ms: t0 + 40 * MINUTE, end_ms: t0 + 40 * MINUTE, event_count: 1 },
    ], { toleranceMs: 2000 });
    await capture([beacon], { transport: 'sendBeacon', send_instantly: true });
    stored = await waitForEvents(server, user, range, 3);
    const all = [...instant, beacon].sort((a, b) => a.time - b.time);
    assert.deepEqual(stored.map((e) => [e.insert_id, e.event_type]), all.map((e) => [e.id, e.type]));
    stored.forEach((e, i) => assert.ok(Math.abs(e.time_ms - all[i].time) <= 2000, `${e.insert_id}: ${e.time_ms - all[i].time} ms off`));
    assert.ok(sent.some((r) => r.method === 'GET' && r.url.startsWith(`/array/${server.writeKey}/config`)), 'the config was asked for');
    const captures = sent.filter((r) => r.method === 'POST' && r.url.startsWith('/e/'));
    assert.equal(captures.length, 3);
    assert.ok(captures.every((r) => r.type === 'text/plain'));
    const gzip = captures.filter((r) => r.body?.subarray(0, 2).toString('hex') === '1f8b');
    assert.equal(gzip.length, 2, 'gzip without Content-Encoding: detected by its magic bytes');
    // The late event at 20 minutes bridges the 40-minute gap: one session.
    await checkSessions(server, user, [{ start_ms: t0, end_ms: t0 + 40 * MINUTE, event_count: 3 }], { toleranceMs: 2000 });
    await page.close();
  });

  await t.test("Segment's analytics.js: settings from sessionizer as its CDN, one message per post, events and sessions", async () => {
    const user = 'web-carol';
    const event = (name, minutes, type) => ({ name, type, time: t0 + minutes * MINUTE, id: `seg-${name}` });
    const first = [event('c1', 0, 'Page Viewed'), event('c2', 5, 'Button Clicked'), event('c3', 45, 'Page Viewed')];
    const late = [event('c4', 12, 'Late Event')];
    const page = await openPage('/analytics-next.js');
    // Only the key and the server change: sessionizer answers as Segment's CDN.
    await page.evaluate(
      async ({ key, cdn }) => {
        const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load({ writeKey: key, cdnURL: cdn });
        window.segment = analytics;
      },
      { key: server.writeKey, cdn: server.url },
    );
    const track = (events) =>
      page.evaluate(
        async ({ events, user }) => {
          for (const e of events) {
            const ctx = await window.segment.track(e.type, { note: e.name }, { userId: user, timestamp: new Date(e.time).toISOString(), messageId: e.id });
            if (ctx.failedDelivery()) throw new Error(`${e.name}: ${ctx.failedDelivery().reason}`);
          }
        },
        { events, user },
      );
    await track(first);
    await track(late);
    await track([...first, ...late]); // a resend: stored once
    const all = [...first, ...late].sort((a, b) => a.time - b.time);
    const stored = await waitForEvents(server, user, range, all.length);
    assert.deepEqual(
      stored.map((e) => [e.insert_id, e.time_ms, e.event_type]),
      all.map((e) => [e.id, e.time, e.type]),
    );
    // The late event at 12 minutes extends the first session; 33 minutes later, a second one.
    await checkSessions(server, user, [
      { start_ms: t0, end_ms: t0 + 12 * MINUTE, event_count: 3 },
      { start_ms: t0 + 45 * MINUTE, end_ms: t0 + 45 * MINUTE, event_count: 1 },
    ]);
    assert.ok(sent.some((r) => r.method === 'GET' && r.url === `/v1/projects/${server.writeKey}/settings`), 'the settings were asked for');
    const posts = sent.filter((r) => r.method === 'POST' && r.url === '/v1/t');
    assert.equal(posts.length, 8, 'one post per message, to <apiHost>/t');
    await page.close();
  });

  await t.test('no request failed, no console error, nothing but loopback', () => {
    // Except the page's own read of /v1/sessions, refused on purpose above.
    const isRead = (text) => text.includes('/v1/sessions');
    assert.deepEqual(failed.filter((f) => !isRead(f)), []);
    assert.deepEqual(consoleErrors.filter((e) => !isRead(e)), []);
    assert.deepEqual(blockedConnections, []);
  });
});
