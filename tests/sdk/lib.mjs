// Shared by the SDK tests: a real `sessionizer serve` (own data directory,
// project and port per test file), the read API, a retry-inducing proxy, the
// common scenario and its checks. Run through tests/sdk/run.sh.

import { spawn, execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// ---- Network guard: the SDKs may talk to loopback only ----

/** Non-loopback connection attempts (each is refused); tests assert this stays empty. */
export const blockedConnections = [];
const isLoopback = (host) =>
  host === undefined || host === 'localhost' || host === '::1' || /^127\./.test(host) || host === '::ffff:127.0.0.1';
const originalConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  const host = typeof first === 'object' && first !== null ? first.host ?? (first.path ? 'localhost' : undefined) : args[1];
  if (typeof host === 'string' && !isLoopback(host)) {
    blockedConnections.push(host);
    process.nextTick(() => this.destroy(new Error(`blocked non-loopback connection to ${host}`)));
    return this;
  }
  return originalConnect.apply(this, args);
};
for (const name of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy']) delete process.env[name];

// ---- Chromium ----

/** Chromium flags for headless tests that may reach loopback only: anything else fails inside the browser. */
export const LOOPBACK_ONLY_CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--proxy-server=http://127.0.0.1:9',
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

// ---- The server ----

const BIN = process.env.SESSIONIZER_BIN;
if (!BIN || !fs.existsSync(BIN)) {
  throw new Error(`SESSIONIZER_BIN must name the sessionizer binary (got ${JSON.stringify(BIN)}); use tests/sdk/run.sh`);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A fresh data directory with one project, and `sessionizer serve` on a free
 * port. `server.url` is `http://127.0.0.1:PORT`; `server.writeKey` is what the
 * SDK is given as its key.
 */
export async function startServer(name) {
  const data = fs.mkdtempSync(path.join(os.tmpdir(), `sessionizer-sdk-${name}-`));
  const created = JSON.parse(execFileSync(BIN, ['project', 'create', '--data', data, '--name', name], { encoding: 'utf8' }));
  const port = await freePort();
  const child = spawn(BIN, ['serve', '--data', data, '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, SESSIONIZER_LOG: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sessionizer serve exited with ${child.exitCode}: ${stderr}`);
    try {
      const response = await fetch(`${url}/readyz`);
      if (response.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`sessionizer serve did not become ready: ${stderr}`);
    await sleep(50);
  }
  const server = {
    url,
    port,
    data,
    projectId: created.project_id,
    writeKey: created.write_key,
    readKey: created.read_key,
    stderr: () => stderr,
    /** GET with the read key; the parsed JSON (or text for NDJSON). */
    async read(pathAndQuery) {
      const response = await fetch(`${url}${pathAndQuery}`, { headers: { Authorization: `Bearer ${created.read_key}` } });
      const text = await response.text();
      assert.equal(response.status, 200, `GET ${pathAndQuery}: ${response.status} ${text}`);
      return text;
    },
    async sessions(userId) {
      return JSON.parse(await server.read(`/v1/sessions?user_id=${encodeURIComponent(userId)}`)).sessions;
    },
    async exportEvents(fromMs, toMs) {
      const text = await server.read(`/v1/export/events?format=ndjson&from_ms=${fromMs}&to_ms=${toMs}`);
      return text
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => JSON.parse(line));
    },
    /** A counter of GET /metrics (0 when absent). */
    async metric(name) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      return line ? Number(line.split(' ')[1]) : 0;
    },
    /** SIGTERM; the server must exit 0. The data directory is removed. */
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const { code, signal } = await exited;
      fs.rmSync(data, { recursive: true, force: true });
      assert.equal(code, 0, `sessionizer serve exited with ${code ?? signal}: ${stderr}`);
    },
  };
  return server;
}

// ---- A proxy in front of the server: records requests, fails some answers ----

/**
 * Forwards every request to `targetUrl`. The first `failAfterStoring`
 * requests (or those at the indexes listed in it) are forwarded, so the server
 * stores the batch, and then answered with 503 instead of the server's answer,
 * as when an answer is lost: the SDK must retry the same batch and the server
 * must not store it twice. `requests` holds each request as received
 * ({method, url, headers, body, upstream: {status, body}, failed}).
 */
export async function startProxy(targetUrl, { failAfterStoring = 0 } = {}) {
  const requests = [];
  const target = new URL(targetUrl);
  const shouldFail = Array.isArray(failAfterStoring)
    ? (index) => failAfterStoring.includes(index)
    : (index) => index < failAfterStoring;
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const record = { method: request.method, url: request.url, headers: request.headers, body, upstream: null, failed: false };
      const index = requests.push(record) - 1;
      const headers = { ...request.headers, host: target.host };
      delete headers.connection;
      const upstream = http.request(
        { host: target.hostname, port: target.port, method: request.method, path: request.url, headers },
        (answer) => {
          const parts = [];
          answer.on('data', (chunk) => parts.push(chunk));
          answer.on('end', () => {
            record.upstream = { status: answer.statusCode, body: Buffer.concat(parts).toString() };
            if (shouldFail(index)) {
              record.failed = true;
              response.writeHead(503, { 'content-type': 'text/plain' });
              response.end('injected failure: the answer was lost');
              return;
            }
            const passed = { ...answer.headers };
            delete passed['transfer-encoding'];
            delete passed.connection;
            response.writeHead(answer.statusCode, passed);
            response.end(Buffer.concat(parts));
          });
        },
      );
      upstream.on('error', (error) => {
        response.writeHead(502);
        response.end(String(error));
      });
      upstream.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(resolve);
      }),
  };
}

// ---- The scenario every SDK sends ----

const MINUTE = 60_000;

/**
 * Event times are in the past (three hours ago, whole seconds, so Mixpanel's
 * seconds and Segment's ISO strings are exact) and far from the send time.
 *
 * - alice: 0, 5, 10 min, then a 40-minute gap, 50, 55 min: two sessions.
 *   A late event at 7 min arrives in a later request and joins the first.
 * - bob: 1 and 41 min (two sessions), then a late event at 21 min that
 *   arrives later and merges them into one.
 * - carol: three events sent through a proxy that loses the first answer,
 *   so the SDK retries the batch.
 */
export function scenario(prefix, makeInsertId = (name) => `${prefix}-${name}`) {
  const t0 = Math.floor((Date.now() - 3 * 60 * MINUTE) / 1000) * 1000;
  const alice = `${prefix}-alice`;
  const bob = `${prefix}-bob`;
  const carol = `${prefix}-carol`;
  const event = (name, user, minutes, eventType) => ({
    name,
    userId: user,
    eventType,
    timeMs: t0 + minutes * MINUTE,
    insertId: makeInsertId(name),
  });
  const first = [
    event('a1', alice, 0, 'Page Viewed'),
    event('a2', alice, 5, 'Button Clicked'),
    event('a3', alice, 10, 'Checkout'),
    event('a4', alice, 50, 'Page Viewed'),
    event('a5', alice, 55, 'Purchase'),
    event('b1', bob, 1, 'Page Viewed'),
    event('b2', bob, 41, 'Page Viewed'),
  ];
  const late = [event('a6', alice, 7, 'Late Event'), event('b3', bob, 21, 'Late Event')];
  const retried = [
    event('c1', carol, 0, 'Page Viewed'),
    event('c2', carol, 2, 'Button Clicked'),
    event('c3', carol, 4, 'Checkout'),
  ];
  const at = (minutes) => t0 + minutes * MINUTE;
  return {
    t0,
    users: { alice, bob, carol },
    first,
    late,
    retried,
    all: [...first, ...late, ...retried],
    /** Sessions after the first request only (before the late events). */
    sessionsBeforeLate: {
      [alice]: [
        { start_ms: at(0), end_ms: at(10), event_count: 3 },
        { start_ms: at(50), end_ms: at(55), event_count: 2 },
      ],
      [bob]: [
        { start_ms: at(1), end_ms: at(1), event_count: 1 },
        { start_ms: at(41), end_ms: at(41), event_count: 1 },
      ],
    },
    /** Sessions at the end. */
    sessions: {
      [alice]: [
        { start_ms: at(0), end_ms: at(10), event_count: 4 },
        { start_ms: at(50), end_ms: at(55), event_count: 2 },
      ],
      [bob]: [{ start_ms: at(1), end_ms: at(41), event_count: 3 }],
      [carol]: [{ start_ms: at(0), end_ms: at(4), event_count: 3 }],
    },
    /** An export range that holds every event. */
    range: [t0 - 60 * MINUTE, Date.now() + 2 * 60 * MINUTE],
  };
}

/**
 * The stored events are exactly `expected` (each once, matched by insert id)
 * with the event times (within `toleranceMs`), users, types and sessions.
 */
export async function checkEvents(server, plan, expected, { toleranceMs = 0, sessions = plan.sessions } = {}) {
  const stored = await server.exportEvents(...plan.range);
  const byId = new Map();
  for (const event of stored) {
    assert.ok(!byId.has(event.insert_id), `insert id ${event.insert_id} stored twice`);
    byId.set(event.insert_id, event);
  }
  assert.deepEqual(
    [...byId.keys()].sort(),
    expected.map((e) => e.insertId).sort(),
    'the stored insert ids are exactly the sent ones',
  );
  for (const want of expected) {
    const got = byId.get(want.insertId);
    assert.equal(got.user_id, want.userId, `${want.name}: user_id`);
    assert.equal(got.event_type, want.eventType, `${want.name}: event_type`);
    const skew = got.time_ms - want.timeMs;
    assert.ok(
      Math.abs(skew) <= toleranceMs,
      `${want.name}: stored time ${got.time_ms} is ${skew} ms from the event time ${want.timeMs} (tolerance ${toleranceMs} ms)`,
    );
    const session = (sessions[want.userId] ?? []).find(
      (s) => want.timeMs >= s.start_ms - toleranceMs && want.timeMs <= s.end_ms + toleranceMs,
    );
    assert.ok(session, `${want.name}: no expected session holds it`);
    assert.ok(Math.abs(Number(got.session_id) - session.start_ms) <= toleranceMs, `${want.name}: session_id ${got.session_id}, want ${session.start_ms}`);
  }
  return stored;
}

/** The user's sessions are the expected ones (start, end, event count), oldest first. */
export async function checkSessions(server, userId, expected, { toleranceMs = 0 } = {}) {
  const sessions = await server.sessions(userId);
  assert.equal(sessions.length, expected.length, `${userId}: ${JSON.stringify(sessions)}`);
  expected.forEach((want, i) => {
    const got = sessions[i];
    assert.ok(Math.abs(got.start_ms - want.start_ms) <= toleranceMs, `${userId} session ${i}: start ${got.start_ms}, want ${want.start_ms}`);
    assert.ok(Math.abs(got.end_ms - want.end_ms) <= toleranceMs, `${userId} session ${i}: end ${got.end_ms}, want ${want.end_ms}`);
    assert.equal(got.event_count, want.event_count, `${userId} session ${i}: event_count`);
    assert.equal(Number(got.session_id), got.start_ms, `${userId} session ${i}: session_id is the start`);
  });
}

export async function checkAllSessions(server, expectedByUser, options) {
  for (const [user, sessions] of Object.entries(expectedByUser)) await checkSessions(server, user, sessions, options);
}

/** Requests through the proxy that carried `insertId` (decoded by `decode`). */
export function requestsCarrying(proxy, decode, insertId) {
  return proxy.requests.filter((r) => decode(r).includes(insertId));
}

export { sleep, MINUTE };

// ---- Dashboard tests: generated events and the naive session reference ----

const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** A small seeded PRNG (mulberry32): the same seed gives the same events. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** User ids, event types and pages that are markup: the dashboard must show them as text. */
export const HTML_USER_IDS = ['<img src=x onerror=alert(1)>', '<script>alert("user")</script>', '"><svg onload=alert(2)>'];

/**
 * Events of `users` users over the `days` days before `now` (whole seconds): single events,
 * bursts with short gaps, long sessions with gaps just under 30 minutes, and a few sessions
 * still open (events in the last 15 minutes; nothing else in the last 2 hours). Shuffled,
 * so they arrive out of order. Each is {user_id, event_type, time, insert_id, page}.
 */
export function generateDashboardEvents({ seed = 5, users = 36, days = 10, now = Date.now() } = {}) {
  const rand = seededRandom(seed);
  const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = (xs) => xs[int(0, xs.length - 1)];
  const types = ['Page Viewed', 'Button Clicked', 'Search', 'Checkout', 'Purchase', '<b>Bold</b> & "quoted"'];
  const pages = ['/', '/pricing', '/docs', '/cart', '/<i>x</i>?a=1&b=2'];
  const nowS = Math.floor(now / 1000) * 1000;
  const first = nowS - days * DAY;
  const last = nowS - 2 * HOUR;
  const events = [];
  const push = (user, time) =>
    events.push({ user_id: user, event_type: pick(types), time, insert_id: `dash-${seed}-${events.length}`, page: pick(pages) });
  for (let u = 0; u < users; u++) {
    const user = u < HTML_USER_IDS.length ? HTML_USER_IDS[u] : `user-${String(u).padStart(2, '0')}`;
    const bursts = int(1, 9);
    for (let b = 0; b < bursts; b++) {
      let t = first + int(0, (last - first) / 1000) * 1000;
      const kind = rand();
      const count = kind < 0.2 ? 1 : kind < 0.85 ? int(2, 15) : int(6, 12);
      for (let i = 0; i < count && t <= last; i++) {
        push(user, t);
        const gap = kind >= 0.85 ? int(10 * 60, 25 * 60) : rand() < 0.9 ? int(1, 8 * 60) : int(15 * 60, 28 * 60);
        t += gap * 1000;
      }
    }
  }
  for (let u = 3; u < 7; u++) {
    let t = nowS - int(10, 15) * MINUTE;
    for (let i = int(1, 3); i > 0; i--, t += int(5, 120) * 1000) push(`user-${String(u).padStart(2, '0')}`, Math.min(t, nowS - MINUTE));
  }
  for (let i = events.length - 1; i > 0; i--) {
    const j = int(0, i);
    [events[i], events[j]] = [events[j], events[i]];
  }
  return events;
}

/**
 * The naive reference: each user's events in time order, a new session when the gap to
 * the previous event is `timeoutMs` or more. Sessions oldest first:
 * {user_id, start_ms, end_ms, length_ms, event_count, events}.
 */
export function referenceSessions(events, timeoutMs = 30 * MINUTE) {
  const byUser = new Map();
  for (const e of events) {
    if (!byUser.has(e.user_id)) byUser.set(e.user_id, []);
    byUser.get(e.user_id).push(e);
  }
  const sessions = [];
  for (const [user, list] of byUser) {
    list.sort((a, b) => a.time - b.time);
    let current = null;
    for (const e of list) {
      if (!current || e.time - current.end_ms >= timeoutMs) {
        current = { user_id: user, start_ms: e.time, end_ms: e.time, length_ms: 0, event_count: 0, events: [] };
        sessions.push(current);
      }
      current.end_ms = e.time;
      current.length_ms = current.end_ms - current.start_ms;
      current.event_count += 1;
      current.events.push(e);
    }
  }
  return sessions.sort((a, b) => a.start_ms - b.start_ms);
}

/** Sends events through POST /v1/events with the write key, 2000 a request. */
export async function sendEvents(server, events) {
  for (let i = 0; i < events.length; i += 2000) {
    const response = await fetch(`${server.url}/v1/events`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${server.writeKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ events: events.slice(i, i + 2000) }),
    });
    const text = await response.text();
    assert.equal(response.status, 200, `POST /v1/events: ${response.status} ${text}`);
  }
}

export { HOUR, DAY };
