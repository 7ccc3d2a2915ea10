// The dashboard (crates/server/assets/dashboard, docs/dashboard.md) in headless Chromium
// against a real `sessionizer serve` filled with generated events. Every figure the pages
// show is checked against the naive reference computed here from the same events (sort
// each user's events, a new session at a gap of 30 minutes or more; days in UTC, the
// project's default time zone). User ids, event types and pages hold markup: no script
// from the data may run. A screenshot of each page goes to tests/sdk/artifacts/.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import {
  blockedConnections,
  generateDashboardEvents,
  HTML_USER_IDS,
  MINUTE,
  HOUR,
  referenceSessions,
  sendEvents,
  sleep,
  startServer,
  LOOPBACK_ONLY_CHROMIUM_ARGS,
} from '../lib.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');
const TIMEOUT = 30 * MINUTE;
const SECOND = 1000;

// ---- The reference figures ----

const dayOf = (ms) => new Date(ms).toISOString().slice(0, 10);
/** The date of an instant in a time zone. */
const dayIn = (zone) => (ms) => {
  const p = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' }).formatToParts(ms).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day}`;
};
const addDays = (date, n) => new Date(Date.parse(`${date}T00:00:00Z`) + n * 24 * HOUR).toISOString().slice(0, 10);

/** Nearest-rank, interpolated and middle values: any is an acceptable percentile. */
function percentileCandidates(sorted, p) {
  const n = sorted.length;
  const rank = Math.max(1, Math.ceil((p / 100) * n));
  const pos = (p / 100) * (n - 1);
  const lo = sorted[Math.floor(pos)];
  const hi = sorted[Math.ceil(pos)];
  const values = [sorted[rank - 1], lo, hi, lo + (hi - lo) * (pos - Math.floor(pos)), (lo + hi) / 2];
  return [...values, ...values.map((v) => Math.floor(v / SECOND) * SECOND)];
}

const BUCKETS = [
  ['<10 s', 0, 10 * SECOND],
  ['10-30 s', 10 * SECOND, 30 * SECOND],
  ['30 s-1 min', 30 * SECOND, MINUTE],
  ['1-2 min', MINUTE, 2 * MINUTE],
  ['2-5 min', 2 * MINUTE, 5 * MINUTE],
  ['5-10 min', 5 * MINUTE, 10 * MINUTE],
  ['10-30 min', 10 * MINUTE, 30 * MINUTE],
  ['30 min-1 h', 30 * MINUTE, HOUR],
  ['1-2 h', HOUR, 2 * HOUR],
  ['2 h+', 2 * HOUR, Infinity],
];

function perUserLabel(n) {
  return n === 1 ? '1' : n === 2 ? '2' : n <= 5 ? '3-5' : n <= 10 ? '6-10' : '11+';
}

/** Every figure of the board for sessions starting in [from, to] (UTC days). */
function boardFigures(sessions, { from, to, now, dayOf = dayIn('UTC') }) {
  const inRange = sessions.filter((s) => dayOf(s.start_ms) >= from && dayOf(s.start_ms) <= to);
  const days = new Map();
  for (let d = from; d <= to; d = addDays(d, 1)) days.set(d, { sessions: 0, total_length_ms: 0, users: new Set() });
  const perUser = new Map();
  for (const s of inRange) {
    const day = days.get(dayOf(s.start_ms));
    day.sessions += 1;
    day.total_length_ms += s.length_ms;
    day.users.add(s.user_id);
    perUser.set(s.user_id, (perUser.get(s.user_id) ?? 0) + 1);
  }
  const lengths = inRange.map((s) => s.length_ms).sort((a, b) => a - b);
  const total = lengths.reduce((a, b) => a + b, 0);
  const distribution = new Map(['1', '2', '3-5', '6-10', '11+'].map((l) => [l, 0]));
  for (const n of perUser.values()) distribution.set(perUserLabel(n), distribution.get(perUserLabel(n)) + 1);
  return {
    sessions: inRange.length,
    users: perUser.size,
    avg_length_ms: total / inRange.length,
    median: percentileCandidates(lengths, 50),
    p90: percentileCandidates(lengths, 90),
    sessions_per_user_mean: inRange.length / perUser.size,
    distribution,
    single_event_share: inRange.filter((s) => s.event_count === 1).length / inRange.length,
    // Every open session, whatever the range: last event within the timeout of now.
    open_sessions: sessions.filter((s) => s.end_ms + TIMEOUT > now).length,
    days,
    buckets: BUCKETS.map(([label, min, max]) => [label, inRange.filter((s) => s.length_ms >= min && s.length_ms < max).length]),
  };
}

// ---- The dashboard's formatting (crates/server/assets/dashboard/app.js) ----

function fmtDuration(ms) {
  if (ms < SECOND) return `${Math.round(ms)} ms`;
  if (ms < 10 * SECOND) return `${(ms / SECOND).toFixed(1)} s`;
  const sec = Math.round(ms / SECOND);
  if (sec < 60) return `${sec} s`;
  const min = Math.floor(sec / 60), rs = sec % 60;
  if (min < 60) return rs ? `${min} min ${rs} s` : `${min} min`;
  const hr = Math.floor(min / 60), rm = min % 60;
  if (hr < 24) return rm ? `${hr} h ${rm} min` : `${hr} h`;
  const d = Math.floor(hr / 24), rh = hr % 24;
  return rh ? `${d} d ${rh} h` : `${d} d`;
}
const fmtTime = (ms) => new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
const fmtInt = (n) => Math.round(n).toLocaleString('en-US');

// ---- Page helpers ----

/** Runs `action` and waits until the dashboard has rendered a page after it. */
async function rendered(page, action) {
  const before = await page.evaluate(() => Number(document.getElementById('view').dataset.rendered || 0));
  await action();
  await page.waitForFunction(
    (n) => {
      const view = document.getElementById('view');
      return Number(view.dataset.rendered || 0) > n && !view.hasAttribute('aria-busy');
    },
    before,
    { timeout: 30_000 },
  );
}
const go = (page, hash) => rendered(page, () => page.evaluate((h) => (location.hash = h), hash));
const figureText = (page, key) => page.textContent(`[data-figure="${key}"] .value`).then((t) => t.trim());
const bars = (page, chart) =>
  page.$$eval(`#${chart} rect.bar`, (rects) => rects.map((r) => [r.getAttribute('data-label'), Number(r.getAttribute('data-value'))]));
const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `dashboard-${name}.png`), fullPage: true });

/** Headless Chromium that can reach loopback only: the dashboard must work with no internet. */
async function launch() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: LOOPBACK_ONLY_CHROMIUM_ARGS,
  });
}

/** Polls the summary of [from, to] until it counts `sessions`. */
async function waitForSessions(server, from, to, sessions) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const response = await fetch(`${server.url}/v1/stats/summary?from=${from}&to=${to}`, { headers: { Authorization: `Bearer ${server.readKey}` } });
    const summary = response.status === 200 ? await response.json() : null;
    if (summary?.sessions === sessions) return;
    assert.ok(Date.now() < deadline, `the summary never showed ${sessions} sessions: ${response.status} ${JSON.stringify(summary)}`);
    await sleep(200);
  }
}

test('the dashboard in headless Chromium', { timeout: 240_000, skip: !fs.existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const server = await startServer('dashboard');
  let browser = null;
  t.after(async () => {
    await browser?.close();
    await server.stop();
  });

  // The data: generated, sent out of order, and the reference computed from it.
  const now = Date.now();
  const events = generateDashboardEvents({ now });
  await sendEvents(server, events);
  const sessions = referenceSessions(events, TIMEOUT);
  const project = JSON.parse(await server.read('/v1/project'));
  assert.equal(project.time_zone, 'UTC', 'a new project counts days in UTC, as the reference does');
  assert.equal(project.timeout_ms, TIMEOUT);
  const to = dayOf(Date.now());
  const from = addDays(to, -29);
  const expected = boardFigures(sessions, { from, to, now });
  assert.ok(expected.sessions > 100 && expected.open_sessions > 0, 'the generated data has enough sessions, some open');
  // The events are on disk when POST answers; wait until the board shows them too.
  await waitForSessions(server, from, to, expected.sessions);

  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const dialogs = [];
  const pageErrors = [];
  const offline = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (error) => pageErrors.push(error.message));
  const consoleErrors = [];
  page.on('console', (message) => {
    // Expected: the refused sign-in and /v1/project before it (401), the unknown user and session (404), the injected 503.
    if (message.type() === 'error' && !/status of (401|404|503)/.test(message.text())) consoleErrors.push(message.text());
  });
  page.on('request', (request) => {
    if (!request.url().startsWith(server.url)) offline.push(request.url());
  });

  await t.test('GET / leads to the sign-in form; a wrong key shows the server\'s error', async () => {
    await page.goto(`${server.url}/`);
    assert.equal(new URL(page.url()).pathname, '/dashboard/');
    await page.waitForSelector('#sign-in #read-key');
    await page.fill('#read-key', 'sk_read_wrong');
    await page.click('#sign-in button[type=submit]');
    const error = await page.waitForSelector('#sign-in-error:not([hidden])');
    const answer = await fetch(`${server.url}/dashboard/sign-in`, { method: 'POST', body: JSON.stringify({ read_key: 'sk_read_wrong' }) });
    assert.equal(answer.status, 401);
    assert.equal((await error.textContent()).trim(), (await answer.json()).error.message, "the server's message");
    await shot(page, 'sign-in');
    assert.equal((await context.cookies(server.url)).length, 0, 'no cookie for a wrong key');
  });

  await t.test('the read key signs in; the cookie is HttpOnly and SameSite=Strict', async () => {
    await rendered(page, async () => {
      await page.fill('#read-key', server.readKey);
      await page.click('#sign-in button[type=submit]');
    });
    await page.waitForSelector('#summary');
    assert.match(page.url(), /#\/board$/);
    const cookies = await context.cookies(server.url);
    assert.ok(cookies.length >= 1, 'a cookie was set');
    for (const cookie of cookies) {
      assert.equal(cookie.httpOnly, true, `${cookie.name} is HttpOnly`);
      assert.equal(cookie.sameSite, 'Strict', `${cookie.name} is SameSite=Strict`);
    }
    assert.equal(await page.evaluate(() => document.cookie), '', 'the page cannot read the cookie');
    assert.equal((await page.textContent('#project-name')).trim(), 'dashboard');
  });

  await t.test('sessions board: the summary figures (last 30 days)', async () => {
    assert.equal(await page.inputValue('#range-from'), from);
    assert.equal(await page.inputValue('#range-to'), to);
    assert.equal(await figureText(page, 'sessions'), fmtInt(expected.sessions));
    assert.equal(await figureText(page, 'users'), fmtInt(expected.users));
    assert.equal(await figureText(page, 'open_sessions'), fmtInt(expected.open_sessions));
    assert.equal(await figureText(page, 'sessions_per_user'), expected.sessions_per_user_mean.toFixed(2));
    assert.equal(await figureText(page, 'single_event_share'), `${(100 * expected.single_event_share).toFixed(1)} %`);
    // Lengths in whole seconds or ms may round either way: the text of the exact or the truncated value.
    const avg = await figureText(page, 'avg_length');
    assert.ok([expected.avg_length_ms, Math.floor(expected.avg_length_ms), Math.floor(expected.avg_length_ms / SECOND) * SECOND].map(fmtDuration).includes(avg), `average ${avg}, want ${fmtDuration(expected.avg_length_ms)}`);
    const median = await figureText(page, 'median_length');
    assert.ok(expected.median.map(fmtDuration).includes(median), `median ${median}, want one of ${[...new Set(expected.median.map(fmtDuration))]}`);
    const p90 = await figureText(page, 'p90_length');
    assert.ok(expected.p90.map(fmtDuration).includes(p90), `p90 ${p90}, want one of ${[...new Set(expected.p90.map(fmtDuration))]}`);
    assert.deepEqual(await bars(page, 'chart-sessions-per-user'), [...expected.distribution]);
    await shot(page, 'board');
  });

  await t.test('sessions board: sessions and total length per day, length distribution', async () => {
    const label = (date) => date.slice(5);
    const daily = await bars(page, 'chart-daily-sessions');
    assert.deepEqual(daily, [...expected.days].map(([date, d]) => [label(date), d.sessions]), 'sessions per day, every day of the range');
    assert.deepEqual(
      await bars(page, 'chart-daily-length'),
      [...expected.days].map(([date, d]) => [label(date), d.total_length_ms]),
      'total session length per day (ms)',
    );
    // The busiest day, as the table shows it.
    const [busiest, figures] = [...expected.days].sort((a, b) => b[1].sessions - a[1].sessions)[0];
    assert.equal((await page.textContent(`#daily-table tr[data-date="${busiest}"] td.sessions`)).trim(), fmtInt(figures.sessions));
    assert.deepEqual(await bars(page, 'chart-length-distribution'), expected.buckets);
    // Axes carry their units.
    const titles = await page.$$eval('#chart-daily-length .axis-title', (nodes) => nodes.map((n) => n.textContent));
    assert.ok(titles.some((t) => /total length \((hours|minutes|seconds)\)/.test(t)), titles.join(' | '));
    assert.ok((await page.$$('#chart-daily-sessions text.tick')).length >= 5, 'tick labels');
  });

  await t.test('sessions board: the range of the data, and a chosen range', async () => {
    const first = dayOf(sessions[0].start_ms);
    const last = dayOf(Math.max(...sessions.map((s) => s.start_ms)));
    await rendered(page, () => page.click('#range-data'));
    assert.equal(await page.inputValue('#range-from'), first);
    assert.equal(await page.inputValue('#range-to'), last);
    assert.equal(await figureText(page, 'sessions'), fmtInt(expected.sessions));
    // One day: the busiest.
    const [busiest] = [...expected.days].sort((a, b) => b[1].sessions - a[1].sessions)[0];
    const one = boardFigures(sessions, { from: busiest, to: busiest, now });
    await rendered(page, async () => {
      await page.fill('#range-from', busiest);
      await page.fill('#range-to', busiest);
      await page.click('#range button[type=submit]');
    });
    assert.equal(await figureText(page, 'sessions'), fmtInt(one.sessions));
    assert.equal(await figureText(page, 'users'), fmtInt(one.users));
    assert.deepEqual(await bars(page, 'chart-length-distribution'), one.buckets);
    await rendered(page, () => page.click('#range-30'));
    assert.equal(await figureText(page, 'sessions'), fmtInt(expected.sessions));
  });

  // The server answers so while it loads its session index after a start (too quick to catch here).
  await t.test('a 503 while the server loads shows "loading" and is retried', async () => {
    let refused = 0;
    const summaryUrl = (url) => url.pathname === '/v1/stats/summary';
    await page.route(summaryUrl, (route) => {
      if (refused++ === 0) {
        return route.fulfill({
          status: 503,
          headers: { 'retry-after': '1', 'content-type': 'application/json' },
          body: JSON.stringify({ error: { code: 'loading', message: 'the session index is still loading' } }),
        });
      }
      return route.continue();
    });
    await rendered(page, async () => {
      await page.click('#range-30');
      await page.waitForFunction(() => /loading/i.test(document.getElementById('status').textContent) && !document.getElementById('status').hidden);
    });
    await page.unroute(summaryUrl);
    assert.equal(refused, 2);
    assert.equal(await figureText(page, 'sessions'), fmtInt(expected.sessions));
    assert.equal(await page.isHidden('#status'), true);
  });

  // The user whose id is an <img onerror> tag, and their newest session.
  const user = HTML_USER_IDS[0];
  const mine = sessions.filter((s) => s.user_id === user);
  const newest = mine[mine.length - 1];

  await t.test('users: App Usage of a user whose id is markup, shown as text', async () => {
    await go(page, '#/users');
    await rendered(page, async () => {
      await page.fill('#user-id', user);
      await page.click('#user-form button[type=submit]');
    });
    assert.equal(await page.textContent('#user-name'), user);
    assert.equal(await figureText(page, 'session_count'), fmtInt(mine.length));
    assert.equal(await figureText(page, 'first_seen'), fmtTime(mine[0].start_ms));
    assert.equal(await figureText(page, 'last_seen'), fmtTime(newest.end_ms));
    assert.equal(await figureText(page, 'total_length'), fmtDuration(mine.reduce((a, s) => a + s.length_ms, 0)));
    const rows = await page.$$eval('#user-sessions tbody tr', (trs) => trs.map((tr) => ({
      start: tr.querySelector('td').textContent,
      user: tr.querySelector('td.user').textContent,
      events: tr.querySelector('td.events').textContent,
    })));
    assert.ok(rows.length >= 1 && rows.length <= mine.length, `${rows.length} recent sessions`);
    rows.forEach((row, i) => {
      const want = mine[mine.length - 1 - i];
      assert.deepEqual(row, { start: fmtTime(want.start_ms), user, events: fmtInt(want.event_count) }, `recent session ${i}, newest first`);
    });
    assert.equal(await page.$('img[src="x"]'), null, 'no <img> made from the user id');
    await shot(page, 'users');
    // An unknown user: the 404 is shown.
    await go(page, `#/users/${encodeURIComponent('nobody-at-all')}`);
    await page.waitForSelector('#user-not-found');
  });

  await t.test('session page: the event timeline, entry, exit and revision history', async () => {
    await go(page, `#/users/${encodeURIComponent(user)}`);
    await rendered(page, () => page.click('#user-sessions tbody tr >> nth=0'));
    assert.match(page.url(), /#\/session\//);
    assert.equal(await figureText(page, 'event_count'), fmtInt(newest.event_count));
    assert.equal(await figureText(page, 'start'), fmtTime(newest.start_ms));
    assert.equal(await figureText(page, 'length'), fmtDuration(newest.length_ms));
    assert.equal(await figureText(page, 'end_reason'), 'inactivity');
    const rows = await page.$$eval('#events tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)));
    assert.equal(rows.length, newest.event_count);
    assert.deepEqual(rows.map((r) => r[1]), newest.events.map((e) => fmtTime(e.time)), 'events in time order');
    assert.deepEqual(rows.map((r) => r[3]).sort(), newest.events.map((e) => e.event_type).sort(), 'event types, as text');
    assert.deepEqual(rows.map((r) => r[4]).sort(), newest.events.map((e) => e.page).sort(), 'pages, as text');
    const first = newest.events[0];
    const last = newest.events[newest.events.length - 1];
    if (newest.events.filter((e) => e.time === first.time).length === 1) {
      assert.equal(await figureText(page, 'entry'), `${first.event_type} (${first.page})`);
    }
    if (newest.events.filter((e) => e.time === last.time).length === 1) {
      assert.equal(await figureText(page, 'exit'), `${last.event_type} (${last.page})`);
    }
    assert.equal(await page.$$eval('#timeline circle.event', (c) => c.length), newest.event_count);
    assert.ok((await page.$$('#revisions tbody tr')).length >= 1, 'a revision history');
    assert.equal((await page.textContent('#session-user')).trim(), user);
    await shot(page, 'session');
    // A session that does not exist: the API's error is shown.
    await go(page, '#/session/01900000-0000-7000-8000-000000000000');
    const error = (await page.textContent('#view .error')).trim();
    assert.ok(error.length > 0);
  });

  await t.test('session explorer: a duration filter over every page, newest first', async () => {
    const min = 10 * MINUTE;
    const max = HOUR;
    const want = sessions
      .filter((s) => dayOf(s.start_ms) >= from && s.length_ms >= min && s.length_ms <= max)
      .sort((a, b) => b.start_ms - a.start_ms);
    assert.ok(want.length > 50, 'more than one page');
    await go(page, '#/sessions');
    await rendered(page, async () => {
      await page.fill('#session-filter input[name=min]', '10m');
      await page.fill('#session-filter input[name=max]', '1h');
      await page.click('#session-filter button[type=submit]');
    });
    await shot(page, 'sessions');
    const seen = [];
    for (let pageNo = 1; ; pageNo++) {
      const rows = await page.$$eval('#session-list tbody tr', (trs) => trs.map((tr) => ({
        uid: tr.getAttribute('data-uid'),
        start: tr.querySelector('td').textContent,
        user: tr.querySelector('td.user').textContent,
        length: tr.querySelector('td.length').textContent,
        events: tr.querySelector('td.events').textContent,
      })));
      assert.ok(rows.length > 0 && rows.length <= 50, `page ${pageNo}: ${rows.length} rows`);
      const markup = await page.$$eval('#view script, #view img, #view [onerror], #view [onload]', (nodes) => nodes.length);
      assert.equal(markup, 0, `page ${pageNo}: no element made from the data's markup`);
      seen.push(...rows);
      if (!(await page.$('#next-page'))) break;
      assert.ok(pageNo < 20, 'too many pages');
      await rendered(page, () => page.click('#next-page'));
    }
    assert.equal(new Set(seen.map((r) => r.uid)).size, seen.length, 'no session twice');
    assert.equal(seen.length, want.length, 'every session with 10 min <= length <= 1 h');
    // Newest first; sessions starting at the same instant may come in either order.
    const key = (r) => `${r.start}|${r.user}|${r.length}|${r.events}`;
    assert.deepEqual(seen.map((r) => r.start), want.map((s) => fmtTime(s.start_ms)));
    assert.deepEqual(
      seen.map(key).sort(),
      want.map((s) => key({ start: fmtTime(s.start_ms), user: s.user_id, length: fmtDuration(s.length_ms), events: fmtInt(s.event_count) })).sort(),
    );
    const scripts = seen.filter((r) => r.user === HTML_USER_IDS[1]);
    assert.ok(scripts.length > 0, 'the <script> user id is listed as text');
  });

  await t.test('timeout what-if: sessions per candidate timeout and the gap histogram', async () => {
    await go(page, '#/timeouts');
    for (const minutes of [5, 10, 30, 60]) {
      const reference = referenceSessions(events, minutes * MINUTE);
      const row = `#timeout-table tr[data-timeout-ms="${minutes * MINUTE}"]`;
      assert.equal((await page.textContent(`${row} td.sessions`)).trim(), fmtInt(reference.length), `sessions under a ${minutes} min timeout`);
      const lengths = reference.map((s) => s.length_ms).sort((a, b) => a - b);
      const median = (await page.textContent(`${row} td.median`)).trim();
      assert.ok(percentileCandidates(lengths, 50).map(fmtDuration).includes(median), `${minutes} min: median ${median}`);
    }
    // Each bucket of the histogram holds the reference's gaps between consecutive events of a user.
    const preview = JSON.parse(await server.read(`/v1/timeout-preview?from=${from}&to=${to}&timeouts=5m,10m,30m,60m`));
    assert.equal(preview.sample_fraction, 1, 'a small project is not sampled');
    const gaps = [];
    const byUser = new Map();
    for (const e of events) byUser.set(e.user_id, [...(byUser.get(e.user_id) ?? []), e.time]);
    for (const list of byUser.values()) {
      const times = list.sort((a, b) => a - b);
      for (let i = 1; i < times.length; i++) gaps.push(times[i] - times[i - 1]);
    }
    const shown = await bars(page, 'chart-gaps');
    assert.equal(shown.length, preview.gap_histogram.length);
    preview.gap_histogram.forEach((bucket, i) => {
      const count = gaps.filter((g) => g >= bucket.min_gap_ms && (bucket.max_gap_ms == null || g < bucket.max_gap_ms)).length;
      assert.equal(shown[i][1], count, `gaps in ${shown[i][0]}`);
    });
    await shot(page, 'timeouts');
  });

  await t.test('sign-out clears the cookie', async () => {
    await page.click('#sign-out');
    await page.waitForSelector('#sign-in #read-key');
    await page.reload();
    await page.waitForSelector('#sign-in #read-key');
    const status = await page.evaluate(async () => (await fetch('/v1/project', { credentials: 'same-origin' })).status);
    assert.equal(status, 401);
  });

  await t.test('no script from the data ran, no page error, nothing but loopback', () => {
    assert.deepEqual(dialogs, [], 'no alert() from user ids, event types or pages');
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors, [], 'no console error (a Content-Security-Policy violation would be one)');
    assert.deepEqual(offline, [], 'the dashboard loads nothing from the internet');
    assert.deepEqual(blockedConnections, []);
  });
});

test('days and times in the project\'s time zone', { timeout: 120_000, skip: !fs.existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, async (t) => {
  const zone = 'Asia/Kathmandu'; // UTC+05:45: days start at 18:15 UTC
  const server = await startServer('dashboard-tz');
  let browser = null;
  t.after(async () => {
    await browser?.close();
    await server.stop();
  });
  execFileSync(process.env.SESSIONIZER_BIN, ['project', 'set', server.projectId, '--time-zone', zone, '--data', server.data], { stdio: 'ignore' });
  for (const deadline = Date.now() + 10_000; JSON.parse(await server.read('/v1/project')).time_zone !== zone; await sleep(100)) {
    assert.ok(Date.now() < deadline, 'the server took up the time zone');
  }
  const now = Date.now();
  const events = generateDashboardEvents({ seed: 11, users: 12, days: 6, now });
  await sendEvents(server, events);
  const sessions = referenceSessions(events, TIMEOUT);
  const local = dayIn(zone);
  const to = local(Date.now());
  const from = addDays(to, -29);
  const expected = boardFigures(sessions, { from, to, now, dayOf: local });
  await waitForSessions(server, from, to, expected.sessions);

  browser = await launch();
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  await page.goto(`${server.url}/dashboard/`);
  await page.waitForSelector('#sign-in #read-key');
  await rendered(page, async () => {
    await page.fill('#read-key', server.readKey);
    await page.click('#sign-in button[type=submit]');
  });
  assert.match(await page.textContent('#project-tz'), /Asia\/Kathmandu/);
  assert.equal(await page.inputValue('#range-to'), to, "the default range ends today in the project's time zone");
  assert.equal(await page.inputValue('#range-from'), from);
  assert.equal(await figureText(page, 'sessions'), fmtInt(expected.sessions));
  assert.deepEqual(await bars(page, 'chart-daily-sessions'), [...expected.days].map(([date, d]) => [date.slice(5), d.sessions]), 'sessions per local day');
  // Times are shown in the project's time zone.
  const user = sessions[0].user_id;
  const mine = sessions.filter((s) => s.user_id === user);
  await go(page, `#/users/${encodeURIComponent(user)}`);
  const p = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', { timeZone: zone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit', second: '2-digit' })
      .formatToParts(mine[0].start_ms)
      .map((x) => [x.type, x.value]),
  );
  assert.equal(await figureText(page, 'first_seen'), `${local(mine[0].start_ms)} ${p.hour}:${p.minute}:${p.second}`);
});
