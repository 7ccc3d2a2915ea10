// sessionizer's own browser SDK (crates/server/assets/sdk/sessionizer.js, served at /sdk.js and
// /sdk.mjs; docs/browser-sdk.md) in headless Chromium, on pages from another origin, against a
// real `sessionizer serve`. What the server stored is read back through the read API.
//
// The page clock is Playwright's: each scenario pauses it at an instant it chooses and moves it on,
// so "31 minutes later" takes no time and every event time is exact to the millisecond.
// The server corrects a client's clock by the batch's `sent_at` (docs/http-api.md), and a page
// clock moved away from the real time is such a wrong clock. So a scenario keeps the page from
// reaching sessionizer while its clock is in the past (offline, or its requests aborted), then sets
// the page clock to the real time and lets the queue go, as a device back online would: the events
// arrive with the times they were recorded at, and no correction applies.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { test } from 'node:test';
import { blockedConnections, LOOPBACK_ONLY_CHROMIUM_ARGS, MINUTE, sleep, startProxy, startServer } from '../lib.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../../crates/server/assets/sdk/sessionizer.js');
const SECOND = 1000;
/** The size the issue asks for, gzipped. */
const MAX_GZIP_BYTES = 8 * 1024;
/** How long the server may take to show what the SDK sent. */
const DEADLINE_MS = 20_000;

/** Headless Chromium that can reach loopback only. */
async function launch() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: LOOPBACK_ONLY_CHROMIUM_ARGS,
  });
}

/**
 * The site: `/<anything>?c=<config>` is a page that loads the SDK from sessionizer (another origin)
 * and calls init with the config's key and options; `module: true` imports /sdk.mjs instead, and
 * `key: null` loads the SDK without calling init.
 */
async function startSite(sdkOrigin) {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://x');
    const config = JSON.parse(url.searchParams.get('c') ?? '{}');
    const json = (value) => JSON.stringify(value ?? null).replace(/</g, '\\u003c');
    const init = config.key === null ? '' : `sdk.init(${json(config.key)}, ${json(config.options ?? {})});`;
    const script = config.module
      ? `<script type="module">import sessionizer, * as named from '${sdkOrigin}/sdk.mjs';
         window.sdk = sessionizer; window.named = named; ${init}</script>`
      : `<script src="${sdkOrigin}/sdk.js"></script><script>window.sdk = window.sessionizer; ${init}</script>`;
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(`<!doctype html><html><head><title>Page ${json(url.pathname)}</title>${script}</head>
      <body><main style="height: 5000px"><button id="b">Buy</button></main></body></html>`);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    url: (pathname, config) => `${origin}${pathname}?c=${encodeURIComponent(JSON.stringify(config))}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/** Polls `probe` until it returns a truthy value; fails with `what` after the deadline. */
async function eventually(what, probe) {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const value = await probe();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Another project on the same server with these `sessionizer project set` flags, once the server knows it. */
async function createProject(server, name, settings) {
  const bin = process.env.SESSIONIZER_BIN;
  const created = JSON.parse(execFileSync(bin, ['project', 'create', '--data', server.data, '--name', name], { encoding: 'utf8' }));
  execFileSync(bin, ['project', 'set', created.project_id, '--data', server.data, ...settings], { encoding: 'utf8' });
  const project = { url: server.url, writeKey: created.write_key, readKey: created.read_key };
  project.read = async (pathAndQuery) => {
    const response = await fetch(`${server.url}${pathAndQuery}`, { headers: { Authorization: `Bearer ${created.read_key}` } });
    return response.status === 200 ? response.json() : null;
  };
  project.settled = (timeoutMs) => eventually(`${name}'s settings`, async () => (await project.read('/v1/project'))?.timeout_ms === timeoutMs);
  return project;
}

/** A project's events of `userId` (export, time order) and sessions (oldest first). */
async function stored(project, userId) {
  const from = Date.now() - 24 * 60 * MINUTE;
  const to = Date.now() + 60 * MINUTE;
  const text = await (
    await fetch(`${project.url}/v1/export/events?format=ndjson&from_ms=${from}&to_ms=${to}`, { headers: { Authorization: `Bearer ${project.readKey}` } })
  ).text();
  const events = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)).filter((e) => e.user_id === userId);
  const answer = await (await fetch(`${project.url}/v1/sessions?user_id=${encodeURIComponent(userId)}`, { headers: { Authorization: `Bearer ${project.readKey}` } })).json();
  return { events, sessions: answer.sessions };
}

/** Waits until `count` events of `userId` are stored; then checks none is stored twice. */
async function waitForEvents(project, userId, count) {
  const got = await eventually(`${count} events of ${userId}`, async () => {
    const s = await stored(project, userId);
    return s.events.length >= count && s;
  });
  const ids = got.events.map((e) => e.insert_id);
  assert.equal(new Set(ids).size, ids.length, 'no event is stored twice');
  assert.equal(got.events.length, count, `exactly ${count} events: ${JSON.stringify(got.events)}`);
  return got;
}

/** The page clock, paused at `time` before the page loads: events carry exactly the times the test sets. */
async function pauseClock(context, time) {
  await context.clock.install({ time: time - SECOND });
  await context.clock.pauseAt(time);
}

/** The page clock back at the real time, running: the page may send now without any clock correction. */
async function realTime(context) {
  await context.clock.setSystemTime(Date.now());
  await context.clock.resume();
}

const queued = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('sessionizer.queue') ?? '[]'));
const sessionId = (page) => page.evaluate(() => window.sdk.getSessionId());
/** Whole seconds in the past, so that event times read well in failures. */
const pastInstant = (minutesAgo) => Math.floor((Date.now() - minutesAgo * MINUTE) / SECOND) * SECOND;
/** [event_type, time, passive] of stored events, by time then type (the export's order of equal times is its own). */
const summary = (events) =>
  events.map((e) => [e.event_type, e.time_ms, e.passive]).sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
/** [session_id, start, end, event_count] of stored sessions. */
const shape = (sessions) => sessions.map((s) => [Number(s.session_id), s.start_ms, s.end_ms, s.event_count]);

test('the sessionizer browser SDK in headless Chromium', { timeout: 180_000, skip: !fs.existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, async (t) => {
  const server = await startServer('browser-sdk');
  const site = await startSite(server.url);
  let browser = null;
  t.after(async () => {
    await browser?.close();
    await site.close();
    await server.stop();
  });
  browser = await launch();
  // The first project sessionizes with the SDK's default timeout (set explicitly: they must agree).
  execFileSync(process.env.SESSIONIZER_BIN, ['project', 'set', server.projectId, '--data', server.data, '--timeout', '30m']);
  const main = { url: server.url, writeKey: server.writeKey, readKey: server.readKey };
  await eventually('the 30-minute timeout', async () => JSON.parse(await server.read('/v1/project')).timeout_ms === 30 * MINUTE);

  const pageErrors = [];
  const consoleErrors = [];
  /** A fresh context (its own localStorage) and page, with the page clock paused at `time` (or real). */
  const open = async (time) => {
    const context = await browser.newContext();
    if (time !== undefined) await pauseClock(context, time);
    const page = await context.newPage();
    page.on('pageerror', (error) => pageErrors.push(String(error)));
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(message.text());
    });
    return { context, page };
  };

  await t.test('/sdk.js and /sdk.mjs: the one source, any origin, cached, under 8 KB gzipped', async () => {
    const source = fs.readFileSync(SOURCE, 'utf8');
    for (const [route, marker] of [['/sdk.js', 'window.sessionizer ='], ['/sdk.mjs', 'export default sessionizer;']]) {
      const response = await fetch(`${server.url}${route}`, { headers: { 'Accept-Encoding': 'identity', Origin: site.origin } });
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type'), /^text\/javascript/);
      assert.equal(response.headers.get('access-control-allow-origin'), '*');
      const text = await response.text();
      assert.ok(text.includes(source) && text.includes(marker), `${route} wraps the source file`);
      const gzipped = await fetch(`${server.url}${route}`, { headers: { 'Accept-Encoding': 'gzip' } });
      assert.equal(gzipped.headers.get('content-encoding'), 'gzip');
      const size = Number(gzipped.headers.get('content-length'));
      assert.ok(size > 0 && size < MAX_GZIP_BYTES, `${route} is ${size} bytes gzipped`);
      assert.ok(gzipSync(text, { level: 9 }).length < MAX_GZIP_BYTES);
      const etag = response.headers.get('etag');
      assert.ok(etag && /max-age=\d+/.test(response.headers.get('cache-control')));
      assert.equal((await fetch(`${server.url}${route}`, { headers: { 'If-None-Match': etag } })).status, 304);
    }
  });

  await t.test('back after 29 minutes: the same session; after 31: a new one; server and getSessionId() agree; offline events arrive once', async () => {
    const user = 'alice';
    const t0 = pastInstant(120);
    const { context, page } = await open(t0);
    const sent = [];
    page.on('response', async (response) => {
      if (response.url().endsWith('/v1/events') && response.status() === 200) sent.push(...JSON.parse(response.request().postData()).events);
    });
    await page.goto(site.url('/pricing', { key: main.writeKey, options: { userId: user } }));
    // Offline from the first event on: everything below waits in localStorage.
    await context.setOffline(true);
    const ids = [await sessionId(page)];
    assert.equal(ids[0], t0, 'the page view started a session at its time');

    await page.clock.fastForward(29 * MINUTE);
    await page.mouse.move(10, 10);
    await page.mouse.move(200, 300);
    ids.push(await sessionId(page));
    assert.equal(ids[1], t0, 'moving the pointer 29 minutes later continues the session');
    assert.equal((await queued(page)).length, 1, 'activity alone sends nothing while the server needs nothing');

    await page.clock.fastForward(29 * MINUTE);
    await page.evaluate(() => window.sdk.track('Button Clicked', { color: 'blue' }));
    ids.push(await sessionId(page));
    assert.equal(ids[2], t0, 'an event 29 minutes after the activity continues the session');

    await page.clock.fastForward(31 * MINUTE);
    assert.equal(await sessionId(page), null, 'no session after 31 minutes away');
    await page.mouse.wheel(0, 400);
    await eventually('the scroll', async () => (await sessionId(page)) !== null);
    ids.push(await sessionId(page));
    assert.equal(ids[3], t0 + 89 * MINUTE, 'scrolling after 31 minutes away starts a new session');
    await page.clock.fastForward(MINUTE);
    await page.evaluate(() => window.sdk.track('Search'));
    ids.push(await sessionId(page));
    assert.equal(ids[4], t0 + 89 * MINUTE);

    const waiting = await queued(page);
    assert.equal(waiting.length, 5, 'every event waits in localStorage while offline');
    assert.equal(sent.length, 0);
    // A timer flush while offline does not drop anything.
    await page.clock.runFor(2 * MINUTE);
    assert.equal((await queued(page)).length, 5);

    await realTime(context);
    await context.setOffline(false); // the 'online' event sends the queue
    const { events, sessions } = await waitForEvents(main, user, 5);
    await eventually('an empty queue', async () => (await queued(page)).length === 0);
    assert.deepEqual(summary(events), [
      ['Page Viewed', t0, false],
      // The pointer activity that bridged the 58 minutes between two events, sent so the server agrees.
      ['Activity', t0 + 29 * MINUTE, false],
      ['Button Clicked', t0 + 58 * MINUTE, false],
      // A session started by activity: an event at its start, on the page the user is on.
      ['Activity', t0 + 89 * MINUTE, false],
      ['Search', t0 + 90 * MINUTE, false],
    ]);
    assert.ok(events.every((e) => e.page === '/pricing' && e.device_id));
    assert.deepEqual(shape(sessions), [
      [t0, t0, t0 + 58 * MINUTE, 3],
      [t0 + 89 * MINUTE, t0 + 89 * MINUTE, t0 + 90 * MINUTE, 2],
    ]);
    assert.deepEqual(sessions.map((s) => Number(s.session_id)), [...new Set(ids)], 'the server and getSessionId() agree');
    assert.equal(sessions[0].entry_page, '/pricing');
    // Exactly once: each event went out in one successful request.
    assert.deepEqual(sent.map((e) => e.insert_id).sort(), waiting.map((e) => e.insert_id).sort());
    assert.ok(sent.every((e) => Math.abs(e.time - events.find((s) => s.insert_id === e.insert_id).time_ms) === 0));
    await context.close();
  });

  await t.test('changeUser starts a new session for the new user on the same device', async () => {
    const t0 = pastInstant(45);
    const { context, page } = await open(t0);
    await page.goto(site.url('/', { key: main.writeKey, options: { userId: 'carol' } }));
    await context.setOffline(true);
    assert.equal(await sessionId(page), t0);
    await page.clock.fastForward(2 * MINUTE);
    await page.evaluate(() => window.sdk.changeUser('dave'));
    assert.equal(await sessionId(page), t0 + 2 * MINUTE, 'a new session at the change');
    await page.clock.fastForward(MINUTE);
    await page.evaluate(() => {
      window.sdk.changeUser('dave'); // the same user: nothing changes
      window.sdk.track('Signed In');
    });
    assert.equal(await sessionId(page), t0 + 2 * MINUTE);
    await realTime(context);
    await context.setOffline(false);
    const carol = await waitForEvents(main, 'carol', 1);
    const dave = await waitForEvents(main, 'dave', 2);
    assert.deepEqual(summary(dave.events), [['Activity', t0 + 2 * MINUTE, false], ['Signed In', t0 + 3 * MINUTE, false]]);
    assert.deepEqual(shape(dave.sessions), [[t0 + 2 * MINUTE, t0 + 2 * MINUTE, t0 + 3 * MINUTE, 2]]);
    assert.equal(carol.events[0].device_id, dave.events[0].device_id, 'one device');
    // carol's session is over (45 minutes ago): the server says why.
    const ended = await eventually("carol's concluded session", async () => {
      const [session] = (await stored(main, 'carol')).sessions;
      return session.concluded && session;
    });
    assert.deepEqual(shape([ended]), [[t0, t0, t0, 1]]);
    assert.equal(ended.end_reason, 'user_change');
    await context.close();
  });

  await t.test('a reload keeps the session, and the queue survives it', async () => {
    const user = 'erin';
    const t0 = pastInstant(30);
    const { context, page } = await open(t0);
    // Offline would stop the reload itself: abort only what goes to sessionizer's ingestion. A
    // beacon sent as the page unloads escapes routing, so the page's beacons fail too.
    const block = (route) => route.abort('internetdisconnected');
    await context.route(`${server.url}/v1/events`, block);
    await context.addInitScript(() => {
      navigator.sendBeacon = () => false;
    });
    await page.goto(site.url('/docs', { key: main.writeKey, options: { userId: user } }));
    await page.clock.fastForward(10 * MINUTE);
    await page.evaluate(() => window.sdk.track('Read'));
    await page.clock.fastForward(MINUTE);
    await page.mouse.move(50, 50); // activity after the last event: sent as the page goes
    await page.clock.fastForward(MINUTE);
    await page.reload();
    assert.equal(await page.evaluate(() => Date.now()), t0 + 12 * MINUTE, 'the page clock is still paused');
    assert.equal(await sessionId(page), t0, 'the same session after the reload');
    assert.deepEqual((await queued(page)).map((e) => e.event_type), ['Page Viewed', 'Read', 'Activity', 'Page Viewed']);
    await realTime(context);
    await context.unroute(`${server.url}/v1/events`, block);
    await page.evaluate(() => window.sdk.flush());
    const { events, sessions } = await waitForEvents(main, user, 4);
    assert.deepEqual(summary(events), [
      ['Page Viewed', t0, false],
      ['Read', t0 + 10 * MINUTE, false],
      ['Activity', t0 + 11 * MINUTE, false],
      ['Page Viewed', t0 + 12 * MINUTE, false],
    ]);
    assert.deepEqual(shape(sessions), [[t0, t0, t0 + 12 * MINUTE, 4]]);
    assert.equal((await queued(page)).length, 0);
    await context.close();
  });

  await t.test('the timeout option: smaller than 1 second is an error; 1 second is honoured, as the server splits', async () => {
    const project = await createProject(server, 'one-second', ['--timeout', '1s']);
    await project.settled(SECOND);
    const { context, page } = await open();
    await page.goto(site.url('/', { key: null }));
    const refused = await page.evaluate((key) =>
      [0.999, 0, -1, NaN, '60', null, 8 * 24 * 3600].map((sessionTimeoutInSeconds) => {
        try {
          window.sdk.init(key, { sessionTimeoutInSeconds });
          return 'accepted';
        } catch (error) {
          return `${error.name}: ${error.message}`;
        }
      }), project.writeKey);
    for (const answer of refused) assert.match(answer, /^RangeError: sessionizer: sessionTimeoutInSeconds must be a number from 1 to 604800/);
    const early = await page.evaluate(() => {
      try {
        window.sdk.track('Too Early');
        return 'accepted';
      } catch (error) {
        return error.message;
      }
    });
    assert.equal(early, 'sessionizer: call sessionizer.init(writeKey) first');
    await context.close();

    const user = 'frank';
    const t0 = pastInstant(10);
    const timed = await open(t0);
    await timed.page.goto(site.url('/', { key: project.writeKey, options: { userId: user, sessionTimeoutInSeconds: 1 } }));
    await timed.context.setOffline(true);
    const ids = [await sessionId(timed.page)];
    await timed.page.clock.fastForward(999);
    await timed.page.evaluate(() => window.sdk.track('Within'));
    ids.push(await sessionId(timed.page));
    await timed.page.clock.fastForward(1000); // a gap of exactly the timeout: a new session
    await timed.page.evaluate(() => window.sdk.track('After'));
    ids.push(await sessionId(timed.page));
    assert.deepEqual(ids, [t0, t0, t0 + 1999]);
    await realTime(timed.context);
    await timed.context.setOffline(false);
    const { events, sessions } = await waitForEvents(project, user, 3);
    assert.deepEqual(summary(events), [['Page Viewed', t0, false], ['Within', t0 + 999, false], ['After', t0 + 1999, false]]);
    assert.deepEqual(shape(sessions), [[t0, t0, t0 + 999, 2], [t0 + 1999, t0 + 1999, t0 + 1999, 1]]);
    await timed.context.close();
  });

  await t.test('passive events are marked; a hidden or closed page hands its queue to sendBeacon', async () => {
    const user = 'grace';
    // Paused at the real time: no timer flushes, so only the beacons can send; no clock correction.
    const t0 = Date.now();
    const { context, page } = await open(t0);
    const requests = [];
    context.on('request', (request) => {
      if (request.url() === `${server.url}/v1/events`) requests.push({ type: request.resourceType(), body: JSON.parse(request.postData()) });
    });
    // Each sendBeacon call, logged in the tab's sessionStorage: Playwright does not see a request sent as a page unloads.
    await context.addInitScript(() => {
      const sendBeacon = navigator.sendBeacon.bind(navigator);
      navigator.sendBeacon = (url, data) => {
        const log = JSON.parse(sessionStorage.getItem('beacons') ?? '[]');
        log.push(JSON.parse(data).events.map((e) => e.event_type));
        sessionStorage.setItem('beacons', JSON.stringify(log));
        return sendBeacon(url, data);
      };
    });
    await page.goto(site.url('/app', { key: main.writeKey, options: { userId: user, autoTrackPageViews: false, trackActivity: false } }));
    await page.evaluate(() => {
      window.sdk.track('Clicked');
      window.sdk.track('Poll', { ok: true }, { passive: true }); // a timer's event, as the caller says
    });
    assert.equal(requests.length, 0);
    // The tab goes out of sight.
    await page.evaluate(() => {
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
      document.dispatchEvent(new Event('visibilitychange'));
      window.sdk.track('While Hidden'); // passive: the user is not looking
    });
    await eventually('the first beacon', () => requests.length === 1);
    // The page goes away (to another page of the site, where nothing calls init).
    await page.goto(site.url('/elsewhere', { key: null, module: true }));
    const { events, sessions } = await waitForEvents(main, user, 3);
    assert.deepEqual(summary(events).map(([type, , passive]) => [type, passive]), [['Clicked', false], ['Poll', true], ['While Hidden', true]]);
    assert.ok(events.every((e) => e.time_ms === t0));
    assert.deepEqual(shape(sessions), [[t0, t0, t0, 3]], 'passive events join the open session');
    // Hidden: the queue; gone: the queue again (it stays until a 200 confirms it), now with the hidden page's event.
    const beacons = JSON.parse(await page.evaluate(() => sessionStorage.getItem('beacons')));
    assert.deepEqual(beacons, [['Clicked', 'Poll'], ['Clicked', 'Poll', 'While Hidden']]);
    assert.ok(requests.length >= 1 && requests.every((r) => r.type === 'ping'), `beacons only: ${JSON.stringify(requests.map((r) => r.type))}`);
    assert.ok(requests.every((r) => r.body.write_key === main.writeKey && Number.isInteger(r.body.sent_at)), 'the key in the body');
    await context.close();
  });

  await t.test('trackVisibility: Page Hidden events; with lifecycle rules for web, time hidden is not active time', async () => {
    const project = await createProject(server, 'web-lifecycle', ['--timeout', '29m', '--platform', 'web=30m,lifecycle']);
    await project.settled(29 * MINUTE);
    const user = 'ivan';
    const t0 = pastInstant(30);
    const { context, page } = await open(t0);
    await page.goto(site.url('/article', { key: project.writeKey, options: { userId: user, trackActivity: false, trackVisibility: true } }));
    await context.setOffline(true);
    await page.clock.fastForward(60 * SECOND);
    await page.evaluate(() => window.sdk.track('Read'));
    await page.clock.fastForward(10 * SECOND);
    const visibility = (state) =>
      page.evaluate((state) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
        document.dispatchEvent(new Event('visibilitychange'));
      }, state);
    await visibility('hidden');
    // Five minutes in another tab, then back: within the web timeout, the same session.
    await page.clock.fastForward(5 * MINUTE);
    await visibility('visible');
    await page.evaluate(() => window.sdk.track('Read'));
    await page.clock.fastForward(30 * SECOND);
    await page.evaluate(() => window.sdk.track('Done'));
    await realTime(context);
    await context.setOffline(false);
    await page.evaluate(() => window.sdk.flush());
    const { events, sessions } = await waitForEvents(project, user, 5);
    const at = (ms) => t0 + ms;
    assert.deepEqual(summary(events), [
      ['Page Viewed', t0, false],
      ['Read', at(60 * SECOND), false],
      ['Page Hidden', at(70 * SECOND), false],
      ['Read', at(370 * SECOND), false],
      ['Done', at(400 * SECOND), false],
    ]);
    assert.deepEqual(shape(sessions), [[t0, t0, at(400 * SECOND), 5]]);
    assert.equal(sessions[0].length_ms, 400 * SECOND);
    assert.equal(sessions[0].active_ms, 100 * SECOND, 'the 5 minutes hidden are not in the foreground');
    await context.close();
  });

  await t.test('retries: a lost answer is retried after a backoff and stored once; a refused event is never resent', async () => {
    // The proxy stores the first request upstream, then answers 503 as if the answer were lost.
    const proxy = await startProxy(server.url, { failAfterStoring: [0] });
    try {
      const user = 'heidi';
      const { context, page } = await open(Date.now());
      const warnings = [];
      page.on('console', (message) => message.type() === 'warning' && warnings.push(message.text()));
      await page.goto(site.url('/', { key: main.writeKey, options: { userId: user, serverUrl: proxy.url, autoTrackPageViews: false, trackActivity: false } }));
      await page.evaluate(async () => {
        window.sdk.track('One');
        window.sdk.track('Two');
        await window.sdk.flush();
      });
      assert.equal(proxy.requests.length, 1);
      assert.equal((await queued(page)).length, 2, 'kept for the retry');
      await page.clock.runFor(499);
      assert.equal(proxy.requests.length, 1, 'not before half the first backoff (1 s, jittered down to half)');
      await page.clock.runFor(1000);
      await eventually('the retry', () => proxy.requests.length === 2 && proxy.requests[1].upstream);
      assert.deepEqual(JSON.parse(proxy.requests[1].upstream.body), { accepted: 0, duplicates: 2 });
      await eventually('an empty queue', async () => (await queued(page)).length === 0);

      await page.evaluate(async () => {
        window.sdk.track('Three');
        window.sdk.track('x'.repeat(2000)); // over the server's 1 KiB bound for event types
        window.sdk.track('Four');
        await window.sdk.flush();
      });
      assert.equal(proxy.requests.length, 4);
      assert.equal(proxy.requests[2].upstream.status, 400);
      assert.deepEqual(JSON.parse(proxy.requests[3].body).events.map((e) => e.event_type), ['Three', 'Four']);
      assert.equal((await queued(page)).length, 0);
      assert.ok(warnings.some((w) => w.includes('refused 1 event')), warnings.join('\n'));
      const { events } = await waitForEvents(main, user, 4);
      assert.deepEqual(events.map((e) => e.event_type).sort(), ['Four', 'One', 'Three', 'Two']);
      await context.close();
    } finally {
      await proxy.close();
    }
  });

  await t.test('/sdk.mjs as an ES module from another origin: default and named exports', async () => {
    const user = 'ivan';
    const { context, page } = await open();
    await page.goto(site.url('/module', { module: true, key: main.writeKey, options: { userId: user } }));
    await page.waitForFunction(() => window.sdk && window.sdk.getSessionId() !== null);
    const exported = await page.evaluate(() => ({
      global: typeof window.sessionizer,
      names: Object.keys(window.named).sort(),
      same: Object.keys(window.named).every((k) => k === 'default' || window.named[k] === window.sdk[k]),
    }));
    assert.deepEqual(exported, {
      global: 'undefined',
      names: ['changeUser', 'default', 'flush', 'getSessionId', 'init', 'openSession', 'reset', 'track'],
      same: true,
    });
    const id = await sessionId(page);
    await page.evaluate(() => window.named.track('From Module'));
    // A single-page-app navigation is a page view, whose referrer is the previous URL.
    await page.evaluate(() => history.pushState({}, '', '/module/next#top'));
    const { events, sessions } = await waitForEvents(main, user, 3);
    assert.deepEqual(events.map((e) => [e.event_type, e.page]), [['Page Viewed', '/module'], ['From Module', '/module'], ['Page Viewed', '/module/next']]);
    assert.equal(Number(sessions[0].session_id), id);
    const views = (await (await fetch(`${server.url}/v1/sessions/${sessions[0].session_uid}`, { headers: { Authorization: `Bearer ${main.readKey}` } })).json()).events
      .filter((e) => e.event_type === 'Page Viewed')
      .map((e) => JSON.parse(typeof e.properties === 'string' ? e.properties : JSON.stringify(e.properties)));
    assert.equal(views.length, 2);
    assert.match(views[0].url, /\/module\?c=/);
    assert.equal(views[0].title, 'Page "/module"');
    assert.equal(views[1].url, `${site.origin}/module/next`);
    assert.equal(views[1].referrer, views[0].url);
    await context.close();
  });

  await t.test('no page error, no console error, nothing but loopback', () => {
    assert.deepEqual(pageErrors, []);
    // Chromium reports the requests that the test failed on purpose (offline, aborted, the lost answer).
    assert.deepEqual(consoleErrors.filter((e) => !/ERR_INTERNET_DISCONNECTED|CORS policy|Failed to load resource/.test(e)), []);
    assert.deepEqual(blockedConnections, []);
  });
});
