/*
 * The sessionizer browser SDK: one file, plain JavaScript, no dependencies, no
 * build step. sessionizer serves it wrapped two ways (crates/server/src/browser_sdk.rs):
 * GET /sdk.js, a classic script that defines window.sessionizer, and
 * GET /sdk.mjs, an ES module. Usage and behaviour: docs/browser-sdk.md.
 */

/** The SDK; `scriptUrl` (where this file was loaded from) locates the server unless init names it. */
function createSessionizer(scriptUrl) {
  'use strict';

  // ---- Bounds ----
  const DEFAULT_TIMEOUT_SECONDS = 1800; // 30 minutes, the server's default
  const MIN_TIMEOUT_SECONDS = 1; // the server's minimum timeout...
  const MAX_TIMEOUT_SECONDS = 7 * 24 * 3600; // ...and its maximum
  const MAX_QUEUE_EVENTS = 1000; // kept in localStorage; beyond this the oldest are dropped
  const MAX_BATCH_EVENTS = 100; // per request (the server takes up to 2,000)
  const MAX_BEACON_BYTES = 60000; // browsers refuse beacons beyond 64 KiB in flight
  const FLUSH_DELAY_MS = 1000; // events wait this long so that they go together
  const RETRY_MIN_MS = 1000; // the first retry's delay, doubled on each failure...
  const RETRY_MAX_MS = 60000; // ...up to this
  const ACTIVITY_THROTTLE_MS = 1000; // at most one activity check a second

  const ACTIVITY_EVENT = 'Activity';
  const PAGE_VIEW_EVENT = 'Page Viewed';
  // Sent when the page leaves the user's sight: a background event for the server's app lifecycle
  // rules, so a project with `--platform web=30m,lifecycle` gets each session's time in the foreground.
  const PAGE_HIDDEN_EVENT = 'Page Hidden';
  // What counts as the user being there (LiveSession's definition); clicks and taps start with a pointerdown.
  const ACTIVITY_DOM_EVENTS = ['scroll', 'pointermove', 'pointerdown', 'keydown', 'touchstart'];
  const PREFIX = 'sessionizer.';

  let config = null; // {writeKey, endpoint, timeoutMs}, set by init
  let timer = 0; // the scheduled send
  let sending = null; // the sends in progress (a promise)
  let failures = 0; // consecutive failed sends, for the backoff
  let batchLimit = MAX_BATCH_EVENTS; // halved when the server says a batch is too large
  let lastActivity = -Infinity; // for the throttle
  let lastUrl = ''; // the page of the last page view (the referrer of the next one in a single-page app)
  let lastBeacon = null; // the newest event handed to sendBeacon, so pagehide after visibilitychange sends nothing twice

  // ---- Storage: localStorage (shared by the site's tabs, kept across reloads), else memory ----
  const memory = {};
  let storage = null;
  try {
    storage = window.localStorage;
  } catch {
    // blocked by the browser's settings: memory only
  }
  const load = (name) => {
    try {
      return JSON.parse((storage ? storage.getItem(PREFIX + name) : memory[name]) ?? 'null');
    } catch {
      return null;
    }
  };
  const save = (name, value) => {
    const text = JSON.stringify(value);
    memory[name] = text;
    try {
      storage?.setItem(PREFIX + name, text);
    } catch {
      storage = null; // full: memory from now on
    }
  };

  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const uuid = () =>
    crypto.randomUUID?.() ??
    '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
      (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16),
    );
  const deviceId = () => load('device') ?? (save('device', uuid()), load('device'));

  // Whole milliseconds, as the server reads times (fake clocks in tests can return fractions).
  const now = () => Math.floor(Date.now());

  function ready() {
    if (!config) throw new Error('sessionizer: call sessionizer.init(writeKey) first');
  }

  // ---- Sessions ----
  // The session is stored as {id: its start (ms), last: the last activity, sent: the last active event sent}.

  const alive = (session, time) => session != null && time - session.last < config.timeoutMs;

  /**
   * The user is active at `time`; `withEvent` when an active event at `time` is about to be queued.
   * Starts a session (a gap of the timeout or more, as the server splits) or continues it; returns it.
   */
  function touch(time, withEvent) {
    let session = load('session');
    if (!alive(session, time)) {
      session = { id: time, last: time, sent: time };
      save('session', session);
      // The server's session starts at its first event: one at the very start makes both ids equal.
      if (!withEvent) enqueue(ACTIVITY_EVENT, null, false, time, time);
      return session;
    }
    // The server splits where two events are a timeout apart, whatever happened in between. When
    // this activity comes a timeout after the last event sent, send the unsent activity that kept
    // the session alive (it is always less than a timeout after that event), so the server agrees.
    if (time - session.sent >= config.timeoutMs && session.last > session.sent) {
      enqueue(ACTIVITY_EVENT, null, false, session.last, session.id);
      session.sent = session.last;
    }
    session.last = Math.max(session.last, time);
    if (withEvent) session.sent = Math.max(session.sent, time);
    save('session', session);
    return session;
  }

  function onActivity() {
    const time = now();
    if (Math.abs(time - lastActivity) < ACTIVITY_THROTTLE_MS) return;
    lastActivity = time;
    touch(time, false);
  }

  // ---- The queue ----

  function enqueue(eventType, properties, passive, time, sessionId) {
    const event = { event_type: eventType, time, insert_id: uuid(), device_id: deviceId(), page: location.pathname, platform: 'web' };
    const user = load('user');
    if (user != null) event.user_id = user;
    if (sessionId != null) event.client_session_id = sessionId;
    if (passive) event.passive = true;
    if (properties && Object.keys(properties).length) event.properties = properties;
    const queue = load('queue') ?? [];
    queue.push(event);
    // Over the bound the oldest go: after a long time offline, the latest activity matters most.
    save('queue', queue.slice(-MAX_QUEUE_EVENTS));
    schedule(queue.length >= batchLimit ? 0 : FLUSH_DELAY_MS);
  }

  function dequeue(events) {
    const gone = new Set(events.map((e) => e.insert_id));
    save('queue', (load('queue') ?? []).filter((e) => !gone.has(e.insert_id)));
  }

  function schedule(delay) {
    // A pending send stays: a backoff is not cut short by new events.
    if (timer && (delay || failures)) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = 0;
      flush();
    }, delay);
  }

  // The key goes in the body and the body as text/plain: a "simple" cross-origin request, no preflight.
  const body = (events) => JSON.stringify({ events, sent_at: now(), write_key: config.writeKey });

  /** Sends the queue; resolves when it is empty, or when a send failed (a retry is scheduled). */
  function flush() {
    if (!config) return Promise.resolve();
    clearTimeout(timer);
    timer = 0;
    return (sending ??= sendAll().finally(() => (sending = null)));
  }

  async function sendAll() {
    for (;;) {
      const batch = (load('queue') ?? []).slice(0, batchLimit);
      // Offline, the 'online' event sends the queue.
      if (!batch.length || navigator.onLine === false) return;
      const retryAfterMs = await post(batch);
      if (retryAfterMs != null) {
        failures += 1;
        const backoff = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (failures - 1));
        clearTimeout(timer); // a send scheduled meanwhile waits for the backoff too
        timer = 0;
        // Jitter, so that pages do not all come back at once after an outage.
        schedule(Math.max(retryAfterMs, backoff * (0.5 + Math.random() / 2)));
        return;
      }
      failures = 0;
    }
  }

  /** One request; the delay the server asked for when it must be retried, else null. */
  async function post(batch) {
    let response;
    try {
      response = await fetch(config.endpoint, { method: 'POST', body: body(batch), credentials: 'omit' });
    } catch {
      return 0; // network error: retry
    }
    const { status } = response;
    if (response.ok) {
      dequeue(batch);
    } else if (status === 408 || status === 429 || status >= 500) {
      // Nothing was stored; Retry-After is readable only when the page and the server share an origin.
      return 1000 * Number(response.headers.get('Retry-After')) || 0;
    } else if (status === 413 && batch.length > 1) {
      batchLimit = Math.ceil(batch.length / 2);
    } else {
      // Refused: sending the same again cannot help. A 400 names the invalid events;
      // the rest of the batch is sent again (nothing of it was stored).
      let refused = batch;
      try {
        const problems = (await response.json()).error.events;
        if (problems?.length) refused = problems.map((p) => batch[p.index]).filter(Boolean);
      } catch {
        // not the server's JSON: drop the batch
      }
      console.warn(`sessionizer: the server refused ${refused.length} event(s) (HTTP ${status})`);
      dequeue(refused);
    }
    return null;
  }

  /** The page is going away or out of sight: hand the queue to sendBeacon, which outlives the page. */
  function beacon() {
    if (!config) return;
    const session = load('session');
    // The activity since the last event would leave with the page: send it, so the server's session ends where the user stopped.
    if (alive(session, now()) && session.last > session.sent) {
      enqueue(ACTIVITY_EVENT, null, false, session.last, session.id);
      session.sent = session.last;
      save('session', session);
    }
    clearTimeout(timer);
    timer = 0;
    let queue = load('queue') ?? [];
    if (!queue.length || queue[queue.length - 1].insert_id === lastBeacon) return;
    lastBeacon = queue[queue.length - 1].insert_id;
    // Events stay queued until a 200 (a beacon's answer is never seen): a later request sends them
    // again and the server drops the copies by insert_id.
    while (queue.length) {
      let count = Math.min(queue.length, batchLimit);
      while (count > 1 && body(queue.slice(0, count)).length > MAX_BEACON_BYTES) count = Math.ceil(count / 2);
      if (!navigator.sendBeacon(config.endpoint, body(queue.slice(0, count)))) break;
      queue = queue.slice(count);
    }
  }

  // ---- The API ----

  function init(writeKey, options = {}) {
    if (config) throw new Error('sessionizer: init was already called');
    if (typeof writeKey !== 'string' || !writeKey) throw new TypeError("sessionizer: init needs the project's write key");
    const {
      serverUrl,
      sessionTimeoutInSeconds = DEFAULT_TIMEOUT_SECONDS,
      autoTrackPageViews = true,
      trackActivity = true,
      trackVisibility = false,
      userId,
    } = options;
    const timeout = sessionTimeoutInSeconds;
    if (typeof timeout !== 'number' || !(timeout >= MIN_TIMEOUT_SECONDS && timeout <= MAX_TIMEOUT_SECONDS)) {
      throw new RangeError(
        `sessionizer: sessionTimeoutInSeconds must be a number from ${MIN_TIMEOUT_SECONDS} to ${MAX_TIMEOUT_SECONDS} (got ${timeout})`,
      );
    }
    // Without serverUrl, the server is where this script came from (a path prefix included).
    const base = serverUrl ? String(serverUrl).replace(/\/*$/, '/') : scriptUrl;
    if (!base) throw new Error('sessionizer: pass serverUrl (where this script came from is unknown)');
    const endpoint = new URL('v1/events', base).href;
    // The user's session starts with the page view or the first activity.
    if (userId != null) setUser(userId);
    config = { writeKey, endpoint, timeoutMs: timeout * 1000 };

    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState !== 'hidden') return;
      if (trackVisibility) pageHidden();
      beacon();
    });
    addEventListener('pagehide', beacon);
    addEventListener('online', () => {
      failures = 0;
      flush();
    });
    if (trackActivity) {
      for (const type of ACTIVITY_DOM_EVENTS) addEventListener(type, onActivity, { capture: true, passive: true });
    }
    if (autoTrackPageViews) {
      // Single-page apps change the URL with pushState and the back button (popstate).
      const pushState = history.pushState;
      history.pushState = function (...args) {
        pushState.apply(this, args);
        onNavigate();
      };
      addEventListener('popstate', onNavigate);
      pageView();
    }
    schedule(FLUSH_DELAY_MS); // events left by earlier pages
  }

  /** The page left the user's sight while a session is alive: a `Page Hidden` event ends its foreground time. */
  function pageHidden() {
    const time = now();
    // A tab hidden after the session ended opens none.
    if (!alive(load('session'), time)) return;
    const session = touch(time, true);
    enqueue(PAGE_HIDDEN_EVENT, null, false, time, session.id);
  }

  function onNavigate() {
    if (location.href.split('#')[0] !== lastUrl) pageView();
  }

  /** A page view: its URL, referrer and title; a session that starts here has this page as its landing page. */
  function pageView() {
    const url = location.href.split('#')[0];
    track(PAGE_VIEW_EVENT, { url, referrer: lastUrl || document.referrer, title: document.title });
    lastUrl = url;
  }

  /** Starts a session, or continues the current one when the user is back within the timeout; returns its id. */
  function openSession() {
    ready();
    return touch(now(), false).id;
  }

  /**
   * Queues an event. Passive events (`{passive: true}`, for timers and polling, and every event
   * sent while the page is hidden) never start or extend a session.
   */
  function track(eventType, properties, { passive = document.visibilityState === 'hidden' } = {}) {
    ready();
    if (typeof eventType !== 'string' || !eventType.trim()) throw new TypeError('sessionizer: track needs an event type');
    if (properties != null && (typeof properties !== 'object' || Array.isArray(properties))) {
      throw new TypeError('sessionizer: properties must be an object');
    }
    const time = now();
    let sessionId = null;
    if (!passive) sessionId = touch(time, true).id;
    else if (alive(load('session'), time)) sessionId = load('session').id;
    enqueue(eventType, properties, passive, time, sessionId);
  }

  /** Another user from now on, in a new session that starts now (the server keys sessions by user). */
  function changeUser(userId) {
    ready();
    if (setUser(userId)) touch(now(), false);
  }

  /** Whether `userId` is another user than the stored one; if so it is stored, and the session ended. */
  function setUser(userId) {
    if ((typeof userId !== 'string' && typeof userId !== 'number') || userId === '') {
      throw new TypeError('sessionizer: the user id must be a string or a number');
    }
    if (String(userId) === load('user')) return false;
    save('user', String(userId));
    save('session', null);
    return true;
  }

  /** The current session's id (its start in epoch ms, as Amplitude's), or null when there is none. */
  function getSessionId() {
    ready();
    const session = load('session');
    return alive(session, now()) ? session.id : null;
  }

  /** Logout: no user, a new device id, and the next activity starts a new session. Queued events are still sent. */
  function reset() {
    ready();
    save('user', null);
    save('device', uuid());
    save('session', null);
  }

  return Object.freeze({ init, openSession, track, changeUser, getSessionId, flush, reset });
}
