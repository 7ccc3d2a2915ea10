// App lifecycle sessions (issue 8) from the real SDKs: @amplitude/analytics-node
// and @segment/analytics-node send mobile lifecycle events (Amplitude's
// `[Amplitude] Application Opened` / `Backgrounded` with `platform: 'iOS'`,
// Segment's `Application Opened` / `Backgrounded` / `Foregrounded` with
// `context.os.name: 'iOS'`) to a server whose project has lifecycle rules for
// ios (10 s after a background event, the default 30 min dead-app limit).
// The sessions must follow the app's foreground and background, not the
// 30-minute inactivity timeout. See docs/session-semantics.md.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { createInstance } from '@amplitude/analytics-node';
import { Analytics } from '@segment/analytics-node';
import { blockedConnections, sleep, startServer, MINUTE } from '../lib.mjs';

const SECOND = 1000;

/** Sets the project's platform rules with `sessionizer project set` and waits until the running server uses them. */
async function setLifecycleRules(server) {
  const args = ['project', 'set', '--data', server.data, server.projectId];
  args.push('--platform', 'ios=10s,lifecycle', '--platform', 'android=10s,lifecycle', '--platform', 'web=30m');
  execFileSync(process.env.SESSIONIZER_BIN, args, { encoding: 'utf8' });
  const deadline = Date.now() + 15_000;
  for (;;) {
    const project = JSON.parse(await server.read('/v1/project'));
    if (project.settings?.platforms?.ios?.lifecycle === true) return project.settings;
    assert.ok(Date.now() < deadline, `the server did not take the new settings: ${JSON.stringify(project)}`);
    await sleep(100);
  }
}

/**
 * One user's app use, two hours ago (whole seconds): open, a screen, to the
 * background, back after 9 s (same session), to the background, back after
 * 11 s (a new session), a screen, to the background. A second user opens
 * the app, idles 20 minutes in the foreground (one session) and never sends
 * a background event: the session ends at the dead-app limit.
 */
function plan(prefix, names) {
  const t0 = Math.floor((Date.now() - 2 * 60 * MINUTE) / 1000) * 1000;
  const mobile = `${prefix}-mobile`;
  const idle = `${prefix}-idle`;
  const e = (n, user, offsetMs, eventType) => ({ name: `${prefix}-${n}`, userId: user, eventType, timeMs: t0 + offsetMs });
  const events = [
    e(1, mobile, 0, names.opened),
    e(2, mobile, 5 * SECOND, 'Screen Viewed'),
    e(3, mobile, 20 * SECOND, names.backgrounded),
    e(4, mobile, 29 * SECOND, names.foregrounded),
    e(5, mobile, 40 * SECOND, names.backgrounded),
    e(6, mobile, 51 * SECOND, names.foregrounded),
    e(7, mobile, 60 * SECOND, 'Screen Viewed'),
    e(8, mobile, 70 * SECOND, names.backgrounded),
    e(9, idle, 0, names.opened),
    e(10, idle, 20 * MINUTE, 'Article Read'),
  ];
  const sessions = {
    [mobile]: [
      // 9 s of the 40 were in the background.
      { start_ms: t0, end_ms: t0 + 40 * SECOND, active_ms: 31 * SECOND, event_count: 5, end_reason: 'backgrounded' },
      { start_ms: t0 + 51 * SECOND, end_ms: t0 + 70 * SECOND, active_ms: 19 * SECOND, event_count: 3, end_reason: 'backgrounded' },
    ],
    [idle]: [{ start_ms: t0, end_ms: t0 + 20 * MINUTE, active_ms: 20 * MINUTE, event_count: 2, end_reason: 'dead_app' }],
  };
  return { events, sessions };
}

async function checkLifecycleSessions(server, expected) {
  for (const [user, want] of Object.entries(expected)) {
    const deadline = Date.now() + 10_000;
    let got;
    for (;;) {
      got = (await server.sessions(user)).map(({ start_ms, end_ms, active_ms, event_count, end_reason }) => ({
        start_ms,
        end_ms,
        active_ms,
        event_count,
        end_reason,
      }));
      if (JSON.stringify(got) === JSON.stringify(want) || Date.now() > deadline) break;
      await sleep(100);
    }
    assert.deepEqual(got, want, `${user}'s sessions`);
  }
}

test('lifecycle sessions from @amplitude/analytics-node and @segment/analytics-node', async (t) => {
  const server = await startServer('lifecycle');
  t.after(() => server.stop());
  const settings = await setLifecycleRules(server);
  assert.deepEqual(settings.platforms.ios, { timeout_ms: 10_000, lifecycle: true });

  await t.test('Amplitude: [Amplitude] Application Opened / Backgrounded with platform iOS', async () => {
    const client = createInstance();
    await client.init(server.writeKey, { serverUrl: `${server.url}/2/httpapi`, flushIntervalMillis: 100, logLevel: 0 }).promise;
    const { events, sessions } = plan('amp', {
      opened: '[Amplitude] Application Opened',
      foregrounded: '[Amplitude] Application Opened',
      backgrounded: '[Amplitude] Application Backgrounded',
    });
    const results = await Promise.all(
      events.map(
        (e) => client.track(e.eventType, {}, { user_id: e.userId, time: e.timeMs, insert_id: e.name, platform: 'iOS' }).promise,
      ),
    );
    assert.deepEqual(results.map((r) => r.code), events.map(() => 200));
    await client.flush().promise;
    await checkLifecycleSessions(server, sessions);
  });

  await t.test('Segment: Application Opened / Backgrounded / Foregrounded with context.os.name iOS', async () => {
    const analytics = new Analytics({ writeKey: server.writeKey, host: server.url, path: '/v1/batch' });
    const { events, sessions } = plan('seg', {
      opened: 'Application Opened',
      foregrounded: 'Application Foregrounded',
      backgrounded: 'Application Backgrounded',
    });
    const done = Promise.all(
      events.map(
        (e) =>
          new Promise((resolve) =>
            analytics.track(
              {
                userId: e.userId,
                event: e.eventType,
                timestamp: new Date(e.timeMs),
                messageId: e.name,
                context: { os: { name: 'iOS', version: '18.1' }, app: { name: 'Demo', version: '1.0' } },
              },
              (error) => resolve(error),
            ),
          ),
      ),
    );
    await analytics.closeAndFlush();
    assert.deepEqual(await done, events.map(() => undefined));
    await checkLifecycleSessions(server, sessions);
  });

  await t.test('only loopback was contacted', () => {
    assert.deepEqual(blockedConnections, []);
  });
});
