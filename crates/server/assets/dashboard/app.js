// sessionizer dashboard: a single page app over the JSON query API (docs/dashboard.md).
// No framework and no build step. Every value from the server reaches the page through
// textContent or setAttribute (never innerHTML): user ids and event types may hold markup.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const SECOND = 1000, MINUTE = 60 * SECOND, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
  const state = { project: null, range: null, seq: 0 };

  // ---- DOM ----

  function build(el, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c)); // strings become text nodes
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) => build(document.createElementNS(SVGNS, tag), attrs, children);

  // ---- Formatting ----

  const fmtInt = (n) => (n == null ? '–' : Math.round(Number(n)).toLocaleString('en-US'));
  const fmtPct = (f) => (f == null ? '–' : `${(100 * f).toFixed(1)} %`);

  /** A human duration: "850 ms", "4.2 s", "42 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
  function fmtDuration(ms) {
    if (ms == null || !Number.isFinite(Number(ms))) return '–';
    ms = Number(ms);
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

  /** A bucket bound in its largest whole unit: [value, unit]. */
  function bound(ms) {
    for (const [size, unit] of [[DAY, 'd'], [HOUR, 'h'], [MINUTE, 'min'], [SECOND, 's']]) {
      if (ms >= size && ms % size === 0) return [ms / size, unit];
    }
    return ms % SECOND === 0 ? [ms / SECOND, 's'] : [ms, 'ms'];
  }
  const fmtBound = (ms) => bound(ms).join(' ');

  /** "<10 s", "10-30 s", "30 s-1 min", "2 h+". */
  function rangeLabel(min, max) {
    if (max == null) return `${fmtBound(min)}+`;
    if (!min) return `<${fmtBound(max)}`;
    const [a, ua] = bound(min), [b, ub] = bound(max);
    return ua === ub ? `${a}-${b} ${ub}` : `${a} ${ua}-${b} ${ub}`;
  }

  /** "30m", "1h30m", "90s", "500ms", "1.5h" or a number of seconds, to ms; NaN when unreadable. */
  function parseDuration(text) {
    text = String(text).trim().toLowerCase().replace(/\s+/g, '');
    if (text === '') return null;
    if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * SECOND);
    const units = { ms: 1, s: SECOND, sec: SECOND, m: MINUTE, min: MINUTE, h: HOUR, d: DAY };
    let total = 0, rest = text;
    while (rest) {
      const m = /^(\d+(?:\.\d+)?)(ms|sec|s|min|m|h|d)/.exec(rest);
      if (!m) return NaN;
      total += Number(m[1]) * units[m[2]];
      rest = rest.slice(m[0].length);
    }
    return Math.round(total);
  }

  function zone() {
    return (state.project && state.project.time_zone) || 'UTC';
  }
  function parts(ms, options) {
    let f;
    try {
      f = new Intl.DateTimeFormat('en-US', { timeZone: zone(), ...options });
    } catch {
      f = new Intl.DateTimeFormat('en-US', { timeZone: 'UTC', ...options });
    }
    const out = {};
    for (const p of f.formatToParts(new Date(ms))) out[p.type] = p.value;
    return out;
  }
  /** The date (YYYY-MM-DD) of an instant in the project's time zone. */
  function dateOf(ms) {
    const p = parts(ms, { year: 'numeric', month: '2-digit', day: '2-digit' });
    return `${p.year}-${p.month}-${p.day}`;
  }
  /** "YYYY-MM-DD HH:MM:SS" in the project's time zone. */
  function fmtTime(ms) {
    if (ms == null) return '–';
    const p = parts(ms, { hourCycle: 'h23', hour: '2-digit', minute: '2-digit', second: '2-digit' });
    return `${dateOf(ms)} ${p.hour}:${p.minute}:${p.second}`;
  }
  function addDays(date, n) {
    const [y, m, d] = date.split('-').map(Number);
    return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
  }
  const validDate = (d) => typeof d === 'string' && /^\d{4}-\d{2}-\d{2}$/.test(d);

  // ---- The API ----

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  class Stale extends Error {}
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  let pending = 0;
  function busy(delta) {
    pending += delta;
    $('status').hidden = pending === 0;
    if (pending > 0 && !$('status').dataset.retry) $('status').textContent = 'Loading…';
  }

  /**
   * A JSON request authorized by the sign-in cookie. A 503 (the server is loading) is
   * retried after Retry-After while the page that asked is still shown; other errors
   * throw an ApiError with the server's message.
   */
  async function api(path, { method = 'GET', body, seq } = {}) {
    busy(1);
    try {
      for (;;) {
        let res;
        try {
          res = await fetch(path, {
            method,
            credentials: 'same-origin',
            headers: body === undefined ? {} : { 'content-type': 'application/json' },
            body: body === undefined ? undefined : JSON.stringify(body),
          });
        } catch (e) {
          throw new ApiError(0, 'network', `The server cannot be reached (${e.message}).`);
        }
        const text = await res.text();
        let data = null;
        try {
          data = text ? JSON.parse(text) : null;
        } catch {
          data = null;
        }
        if (res.ok) return data;
        const err = (data && data.error) || {};
        if (res.status === 503 && err.code !== 'disk_full') {
          const wait = Math.min(30, Math.max(1, Number(res.headers.get('retry-after')) || 1));
          $('status').dataset.retry = '1';
          $('status').textContent = `The server is loading its data (${err.message || 'unavailable'}); retrying in ${wait} s…`;
          await sleep(wait * SECOND);
          delete $('status').dataset.retry;
          if (seq !== undefined && seq !== state.seq) throw new Stale();
          continue;
        }
        throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || `${res.status} ${res.statusText}`);
      }
    } finally {
      busy(-1);
    }
  }
  const q = (params) => {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v != null && v !== '') u.set(k, v);
    return u.toString();
  };

  function errorBox(e) {
    const text = e instanceof ApiError && e.code ? `${e.message} (${e.code})` : e.message || String(e);
    return h('p', { class: 'error', role: 'alert' }, text);
  }

  // ---- Charts (inline SVG) ----

  function niceStep(x) {
    const p = 10 ** Math.floor(Math.log10(x));
    const f = x / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function niceTicks(max, integer) {
    if (!(max > 0)) max = 1;
    let step = niceStep(max / 5);
    if (integer) step = Math.max(1, Math.round(step));
    const top = Math.ceil(max / step - 1e-9) * step;
    const decimals = integer ? 0 : Math.max(0, -Math.floor(Math.log10(step)));
    const ticks = [];
    for (let i = 0; i * step <= top + step / 2; i++) ticks.push(Number((i * step).toFixed(decimals)));
    return { ticks, top, decimals };
  }

  /** The unit a set of durations reads best in: [divisor, name]. */
  function durationUnit(maxMs) {
    return maxMs >= 2 * HOUR ? [HOUR, 'hours'] : maxMs >= 2 * MINUTE ? [MINUTE, 'minutes'] : [SECOND, 'seconds'];
  }

  /**
   * A bar chart: data = [{label, value, title?}], axes with ticks, tick labels and titles.
   * Each bar carries data-label and data-value; its tooltip says the exact figure.
   */
  function barChart({ id, data, xLabel, yLabel, integer = true, valueText, showValues }) {
    const W = 760, ml = 64, mr = 14, mt = 18;
    const n = Math.max(1, data.length);
    const pw = W - ml - mr, band = pw / n;
    const longest = Math.max(1, ...data.map((d) => d.label.length));
    const rotate = band < longest * 6.6 + 6;
    const mb = rotate ? 30 + Math.min(longest, 12) * 5 : 44;
    const H = 190 + mb;
    const ph = H - mt - mb;
    const { ticks, top, decimals } = niceTicks(Math.max(0, ...data.map((d) => d.value)), integer);
    const y = (v) => mt + ph - (Math.max(0, v) / top) * ph;
    const fmtTick = (v) => (integer ? fmtInt(v) : v.toFixed(decimals));
    const text = valueText || ((v) => (integer ? fmtInt(v) : v.toFixed(decimals + 1)));
    const svg = s('svg', { id, class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${yLabel} by ${xLabel}` });
    for (const t of ticks) {
      svg.append(
        s('line', { class: 'grid', x1: ml, x2: W - mr, y1: y(t), y2: y(t) }),
        s('text', { class: 'tick', x: ml - 6, y: y(t) + 4, 'text-anchor': 'end' }, fmtTick(t)),
      );
    }
    const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(pw / (rotate ? 16 : longest * 6.6 + 6)))));
    const bw = Math.max(1, Math.min(band * 0.8, 60));
    const values = showValues ?? n <= 16;
    data.forEach((d, i) => {
      const x = ml + i * band + (band - bw) / 2;
      const top = y(d.value);
      svg.append(
        s('rect', { class: 'bar', x, y: top, width: bw, height: mt + ph - top, 'data-label': d.label, 'data-value': d.raw ?? d.value },
          s('title', null, d.title || `${d.label}: ${text(d.value)}`)),
      );
      if (values && d.value > 0) {
        svg.append(s('text', { class: 'value', x: x + bw / 2, y: top - 4, 'text-anchor': 'middle' }, text(d.value)));
      }
      if (i % every === 0) {
        const cx = ml + i * band + band / 2;
        svg.append(
          rotate
            ? s('text', { class: 'tick', x: cx, y: mt + ph + 12, 'text-anchor': 'end', transform: `rotate(-45 ${cx} ${mt + ph + 12})` }, d.label)
            : s('text', { class: 'tick', x: cx, y: mt + ph + 16, 'text-anchor': 'middle' }, d.label),
        );
      }
    });
    svg.append(
      s('line', { class: 'axis', x1: ml, x2: ml, y1: mt, y2: mt + ph }),
      s('line', { class: 'axis', x1: ml, x2: W - mr, y1: mt + ph, y2: mt + ph }),
      s('text', { class: 'axis-title', x: ml + pw / 2, y: H - 6, 'text-anchor': 'middle' }, xLabel),
      s('text', { class: 'axis-title', x: 14, y: mt + ph / 2, 'text-anchor': 'middle', transform: `rotate(-90 14 ${mt + ph / 2})` }, yLabel),
    );
    if (!data.length) svg.append(s('text', { class: 'tick', x: ml + pw / 2, y: mt + ph / 2, 'text-anchor': 'middle' }, 'no data'));
    return svg;
  }

  /** A header row; names ending in '#' are numeric columns (right-aligned). */
  const head = (names) => h('thead', null, h('tr', null, names.map((t) => (t.endsWith('#') ? h('th', { class: 'num' }, t.slice(0, -1)) : h('th', null, t)))));
  const card = (title, ...body) => h('section', { class: 'card' }, h('h2', null, title), body);
  const figure = (key, label, value, hint) =>
    h('div', { class: 'figure', 'data-figure': key, title: hint }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));

  // ---- Pages ----

  async function boardPage(_arg, _params, seq) {
    const { from, to } = state.range;
    const range = q({ from, to });
    const [daily, dist, sum] = await Promise.all([
      api(`/v1/stats/daily?${range}`, { seq }),
      api(`/v1/stats/length-distribution?${range}`, { seq }),
      api(`/v1/stats/summary?${range}`, { seq }),
    ]);
    const days = daily.days || [];
    const spu = sum.sessions_per_user || {};
    const figures = h('div', { class: 'figures', id: 'summary' },
      figure('sessions', 'Sessions', fmtInt(sum.sessions)),
      figure('users', 'Users', fmtInt(sum.users)),
      figure('avg_length', 'Average length', fmtDuration(sum.avg_length_ms)),
      figure('median_length', 'Median length', fmtDuration(sum.median_length_ms)),
      figure('p90_length', '90th percentile length', fmtDuration(sum.p90_length_ms)),
      figure('sessions_per_user', 'Sessions per user (mean)', spu.mean == null ? '–' : Number(spu.mean).toFixed(2)),
      figure('single_event_share', 'Single-event sessions', fmtPct(sum.single_event_share)),
      figure('open_sessions', 'Open sessions now', fmtInt(sum.open_sessions), 'Sessions whose last event is within the timeout, whatever the date range'),
    );
    const [unit, unitName] = durationUnit(Math.max(0, ...days.map((d) => d.total_length_ms)));
    const dayLabel = (d) => d.date.slice(5);
    return h('div', { class: 'page board' },
      h('h1', null, `Sessions board`, h('span', { class: 'muted sub' }, ` ${daily.from} to ${daily.to} (${daily.time_zone || zone()})`)),
      figures,
      card('Sessions per day', barChart({
        id: 'chart-daily-sessions',
        data: days.map((d) => ({ label: dayLabel(d), value: d.sessions, title: `${d.date}: ${fmtInt(d.sessions)} sessions, ${fmtInt(d.users)} users` })),
        xLabel: `day the session started (${daily.time_zone || zone()})`, yLabel: 'sessions',
      })),
      card('Total session length per day', barChart({
        id: 'chart-daily-length', integer: false,
        data: days.map((d) => ({ label: dayLabel(d), value: d.total_length_ms / unit, raw: d.total_length_ms, title: `${d.date}: ${fmtDuration(d.total_length_ms)} in ${fmtInt(d.sessions)} sessions` })),
        xLabel: 'day', yLabel: `total length (${unitName})`,
      })),
      card('Session length distribution', barChart({
        id: 'chart-length-distribution',
        data: (dist.buckets || []).map((b) => ({ label: rangeLabel(b.min_length_ms, b.max_length_ms), value: b.sessions })),
        xLabel: 'session length', yLabel: 'sessions',
      })),
      card('Sessions per user', barChart({
        id: 'chart-sessions-per-user',
        data: (spu.distribution || []).map((b) => ({ label: b.label, value: b.users, title: `${b.label} sessions: ${fmtInt(b.users)} users` })),
        xLabel: 'sessions in the range', yLabel: 'users',
      })),
      card('Per day', h('details', null, h('summary', null, 'Table'),
        h('table', { id: 'daily-table' },
          head(['Day', 'Sessions#', 'Users#', 'Total length#', 'Average length#']),
          h('tbody', null, days.map((d) => h('tr', { 'data-date': d.date },
            h('td', null, d.date), h('td', { class: 'num sessions' }, fmtInt(d.sessions)), h('td', { class: 'num' }, fmtInt(d.users)),
            h('td', { class: 'num' }, fmtDuration(d.total_length_ms)), h('td', { class: 'num' }, fmtDuration(d.avg_length_ms)))))))),
    );
  }

  function sessionsTable(sessions, id) {
    const open = (uid) => () => (location.hash = `#/session/${encodeURIComponent(uid)}`);
    return h('table', { id, class: 'sessions' },
      head(['Start', 'User', 'Length#', 'Events#', 'Entry', 'Exit', 'End']),
      h('tbody', null, sessions.map((x) =>
        h('tr', { class: 'link-row', 'data-uid': x.session_uid, onclick: open(x.session_uid) },
          h('td', null, h('a', { href: `#/session/${encodeURIComponent(x.session_uid)}` }, fmtTime(x.start_ms))),
          h('td', { class: 'user' }, x.user_id ?? (x.device_id == null ? '–' : `device ${x.device_id}`)),
          h('td', { class: 'num length' }, fmtDuration(x.length_ms)),
          h('td', { class: 'num events' }, fmtInt(x.event_count)),
          h('td', null, x.entry_event_type ?? '–', x.entry_page ? h('span', { class: 'muted' }, ` ${x.entry_page}`) : null),
          h('td', null, x.exit_event_type ?? '–', x.exit_page ? h('span', { class: 'muted' }, ` ${x.exit_page}`) : null),
          h('td', null, x.end_reason ?? (x.concluded ? '–' : 'open')),
        ))),
      sessions.length ? null : h('caption', null, 'No sessions.'),
    );
  }

  async function usersPage(arg, _params, seq) {
    const input = h('input', { id: 'user-id', type: 'text', required: true, placeholder: 'user id', value: arg || null, autocomplete: 'off' });
    const form = h('form', { id: 'user-form', class: 'inline', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = `#/users/${encodeURIComponent(input.value.trim())}`;
    } }, h('label', null, 'User id ', input), h('button', { type: 'submit' }, 'Look up'));
    const page = h('div', { class: 'page users' }, h('h1', null, 'Users'), form);
    if (!arg) return page;
    let user;
    try {
      user = await api(`/v1/users/${encodeURIComponent(arg)}`, { seq });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        page.append(h('p', { class: 'error', role: 'alert', id: 'user-not-found' }, e.message || `No sessions for the user ${arg}.`));
        return page;
      }
      throw e;
    }
    page.append(
      card(h('span', null, 'App Usage of ', h('code', { id: 'user-name' }, user.user_id ?? arg)),
        h('div', { class: 'figures', id: 'app-usage' },
          figure('session_count', 'Sessions', fmtInt(user.session_count)),
          figure('first_seen', 'First used', fmtTime(user.first_seen_ms)),
          figure('last_seen', 'Last used', fmtTime(user.last_seen_ms)),
          figure('total_length', 'Total time', fmtDuration(user.total_length_ms)),
        )),
      card('Recent sessions', sessionsTable(user.recent_sessions || [], 'user-sessions'),
        h('p', null, h('a', { href: `#/sessions?${q({ user_id: user.user_id ?? arg })}` }, 'All sessions of this user in the explorer'))),
    );
    return page;
  }

  async function sessionsPage(_arg, params, seq) {
    const { from, to } = state.range;
    const field = (name, label, hint) => h('label', null, label, ' ', h('input', { name, type: 'text', value: params.get(name), placeholder: hint, size: 10 }));
    const form = h('form', { id: 'session-filter', class: 'inline' },
      field('min', 'Min length', 'e.g. 30s'), field('max', 'Max length', 'e.g. 2h'),
      field('user_id', 'User', 'any'), field('event_type', 'Event type', 'any'),
      h('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      location.hash = `#/sessions?${q(Object.fromEntries([...f.entries()].map(([k, v]) => [k, String(v).trim()])))}`;
    });
    const page = h('div', { class: 'page sessions' }, h('h1', null, 'Session explorer'), form);
    const min = parseDuration(params.get('min') || ''), max = parseDuration(params.get('max') || '');
    if (Number.isNaN(min) || Number.isNaN(max)) {
      page.append(h('p', { class: 'error', role: 'alert' }, 'A length reads like 90s, 5m, 1h30m or a number of seconds.'));
      return page;
    }
    const pageNo = Number(params.get('page')) || 1;
    const res = await api(`/v1/sessions?${q({
      from, to, min_length_ms: min, max_length_ms: max, user_id: params.get('user_id'), event_type: params.get('event_type'),
      order: 'desc', limit: 50, cursor: params.get('cursor'),
    })}`, { seq });
    const sessions = res.sessions || [];
    const nav = h('p', { class: 'pager' });
    if (pageNo > 1) {
      const first = new URLSearchParams(params);
      first.delete('cursor');
      first.delete('page');
      nav.append(h('a', { href: `#/sessions?${first}`, id: 'first-page' }, '« First page'), ' ');
    }
    nav.append(h('span', { class: 'muted' }, `Page ${pageNo}, ${sessions.length} sessions, newest first `));
    if (res.next_cursor) {
      const next = new URLSearchParams(params);
      next.set('cursor', res.next_cursor);
      next.set('page', String(pageNo + 1));
      nav.append(h('a', { href: `#/sessions?${next}`, id: 'next-page' }, 'Next page »'));
    }
    page.append(card(`Sessions from ${from} to ${to}`, sessionsTable(sessions, 'session-list'), nav));
    return page;
  }

  function timeline(session, events) {
    const W = 760, H = 92, ml = 20, mr = 20, y0 = 40;
    const start = Math.min(session.start_ms, ...events.map((e) => e.time_ms));
    const end = Math.max(session.last_event_ms ?? session.end_ms, ...events.map((e) => e.time_ms));
    const span = Math.max(end - start, SECOND);
    const x = (t) => ml + ((t - start) / span) * (W - ml - mr);
    const svg = s('svg', { id: 'timeline', class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'event timeline' },
      s('line', { class: 'axis', x1: ml, x2: W - mr, y1: y0, y2: y0 }));
    const steps = [SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND, MINUTE, 2 * MINUTE, 5 * MINUTE,
      10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY];
    const step = steps.find((st) => span / st <= 8) || DAY * Math.ceil(span / DAY / 8);
    for (let t = 0; t <= span; t += step) {
      svg.append(s('line', { class: 'grid', x1: x(start + t), x2: x(start + t), y1: y0 - 18, y2: y0 + 4 }),
        s('text', { class: 'tick', x: x(start + t), y: y0 + 18, 'text-anchor': t ? 'middle' : 'start' }, t ? `+${fmtDuration(t)}` : fmtTime(start).slice(11)));
    }
    svg.append(s('text', { class: 'axis-title', x: W / 2, y: H - 6, 'text-anchor': 'middle' }, `time since the session started (${zone()})`));
    for (const e of events) {
      svg.append(s('circle', { class: e.passive ? 'event passive' : 'event', cx: x(e.time_ms), cy: y0 - 9, r: 5 },
        s('title', null, `${fmtTime(e.time_ms)} ${e.event_type}${e.page ? ` ${e.page}` : ''}${e.passive ? ' (passive)' : ''}`)));
    }
    return svg;
  }

  async function sessionPage(uid, _params, seq) {
    const res = await api(`/v1/sessions/${encodeURIComponent(uid)}`, { seq });
    const x = res.session;
    const events = res.events || [];
    const who = x.user_id ?? `device ${x.device_id}`;
    return h('div', { class: 'page session' },
      h('h1', null, 'Session ', h('code', { class: 'sub' }, x.session_uid)),
      h('p', null, 'User ', x.user_id == null ? h('code', null, who) : h('a', { href: `#/users/${encodeURIComponent(x.user_id)}`, id: 'session-user' }, x.user_id),
        x.device_id != null && x.user_id != null ? h('span', { class: 'muted' }, ` on device ${x.device_id}`) : null),
      h('div', { class: 'figures', id: 'session-figures' },
        figure('start', 'Start', fmtTime(x.start_ms)),
        figure('end', 'Last activity', fmtTime(x.end_ms)),
        figure('length', 'Length', fmtDuration(x.length_ms)),
        // Time in the foreground: below the length only with app background events.
        x.active_ms != null && x.active_ms !== x.length_ms ? figure('active', 'In the foreground', fmtDuration(x.active_ms)) : null,
        figure('event_count', 'Events', fmtInt(x.event_count)),
        figure('entry', 'Entry', `${x.entry_event_type ?? '–'}${x.entry_page ? ` (${x.entry_page})` : ''}`),
        figure('exit', 'Exit', `${x.exit_event_type ?? '–'}${x.exit_page ? ` (${x.exit_page})` : ''}`),
        figure('end_reason', 'End reason', x.end_reason ?? (x.concluded ? '–' : 'open (still within the timeout)')),
        figure('revision', 'Revision', fmtInt(x.revision)),
      ),
      card('Event timeline', timeline(x, events),
        res.events_truncated ? h('p', { class: 'muted' }, `The first ${fmtInt(events.length)} events of ${fmtInt(x.event_count)}.`) : null,
        h('table', { id: 'events' },
          head(['##', 'Time', 'Since start#', 'Event type', 'Page', '']),
          h('tbody', null, events.map((e, i) => h('tr', { class: e.passive ? 'passive' : null },
            h('td', { class: 'num' }, i + 1), h('td', null, fmtTime(e.time_ms)),
            h('td', { class: 'num' }, `+${fmtDuration(e.time_ms - x.start_ms)}`),
            h('td', { class: 'type' }, e.event_type), h('td', null, e.page ?? ''), h('td', { class: 'muted' }, e.passive ? 'passive' : '')))))),
      card('Revision history',
        h('table', { id: 'revisions' },
          head(['##', 'Change', 'Start', 'Last activity', 'Events#', 'End reason', 'At']),
          h('tbody', null, (res.revisions || []).map((r) => h('tr', null,
            h('td', { class: 'num' }, r.seq),
            h('td', null, r.kind, r.superseded_by ? [' into ', h('a', { href: `#/session/${encodeURIComponent(r.superseded_by)}` }, r.superseded_by)] : null), h('td', null, fmtTime(r.start_ms)), h('td', null, fmtTime(r.end_ms)),
            h('td', { class: 'num' }, fmtInt(r.event_count)), h('td', null, r.end_reason ?? '–'), h('td', null, fmtTime(r.raised_at_ms))))))),
    );
  }

  async function timeoutsPage(_arg, params, seq) {
    const { from, to } = state.range;
    const timeouts = params.get('timeouts') || '5m,10m,30m,60m';
    const input = h('input', { name: 'timeouts', type: 'text', value: timeouts, size: 30 });
    const form = h('form', { id: 'timeout-form', class: 'inline', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = `#/timeouts?${q({ timeouts: input.value.replace(/\s+/g, '') })}`;
    } }, h('label', null, 'Candidate timeouts ', input), h('button', { type: 'submit' }, 'Compare'));
    const res = await api(`/v1/timeout-preview?${q({ from, to, timeouts })}`, { seq });
    const current = state.project && state.project.timeout_ms;
    const sampled = res.sample_fraction != null && res.sample_fraction < 1;
    const rows = (res.timeouts || []).map((t) => ({ ...t, current: t.current ?? t.timeout_ms === current }));
    return h('div', { class: 'page timeouts' },
      h('h1', null, 'Timeout what-if'),
      h('p', { class: 'muted' }, `How many sessions, and how long, the data from ${res.from} to ${res.to} would make under each inactivity timeout. `,
        `The project's timeout is ${current ? fmtDuration(current) : 'unknown'}. `,
        sampled ? `Computed from ${fmtInt(res.sampled_users)} of ${fmtInt(res.users)} users (${fmtPct(res.sample_fraction)}); session counts are scaled up.` : `Computed from all ${fmtInt(res.users)} users.`),
      form,
      card('Sessions per candidate timeout',
        h('table', { id: 'timeout-table' },
          head(['Timeout', 'Sessions#', sampled ? 'Estimated sessions#' : null, 'Median length#'].filter(Boolean)),
          h('tbody', null, rows.map((t) => h('tr', { 'data-timeout-ms': t.timeout_ms, class: t.current ? 'current' : null },
            h('td', null, fmtBound(t.timeout_ms), t.current ? h('span', { class: 'muted' }, ' (current)') : null),
            h('td', { class: 'num sessions' }, fmtInt(t.sessions)),
            sampled ? h('td', { class: 'num estimated' }, fmtInt(t.estimated_sessions)) : null,
            h('td', { class: 'num median' }, fmtDuration(t.median_length_ms)))))),
        barChart({
          id: 'chart-timeouts',
          data: rows.map((t) => ({ label: fmtBound(t.timeout_ms), value: sampled ? t.estimated_sessions : t.sessions, title: `${fmtBound(t.timeout_ms)}: ${fmtInt(t.sessions)} sessions, median ${fmtDuration(t.median_length_ms)}` })),
          xLabel: 'inactivity timeout', yLabel: sampled ? 'sessions (estimated)' : 'sessions',
        })),
      card('Gaps between consecutive events of a user', barChart({
        id: 'chart-gaps',
        data: (res.gap_histogram || []).map((g) => ({ label: rangeLabel(g.min_gap_ms, g.max_gap_ms), value: g.gaps })),
        xLabel: 'gap', yLabel: 'gaps',
      }), h('p', { class: 'muted' }, 'A timeout splits a session at every gap at least as long as it: the gaps right of a candidate are the sessions it starts.')),
    );
  }

  // ---- Range, routing, sign-in ----

  const RANGED = new Set(['board', 'sessions', 'timeouts']);
  const PAGES = { board: boardPage, users: usersPage, sessions: sessionsPage, session: sessionPage, timeouts: timeoutsPage };

  function lastDays(n) {
    const to = dateOf(Date.now());
    return { from: addDays(to, -(n - 1)), to };
  }
  function setRange(range) {
    state.range = range;
    try {
      sessionStorage.setItem('sessionizer.range', JSON.stringify(range));
    } catch { /* private mode */ }
    $('range-from').value = range.from;
    $('range-to').value = range.to;
  }

  async function route() {
    if (!state.project) return start();
    const seq = ++state.seq;
    const hash = location.hash.replace(/^#\/?/, '');
    const qi = hash.indexOf('?');
    const path = qi < 0 ? hash : hash.slice(0, qi);
    const params = new URLSearchParams(qi < 0 ? '' : hash.slice(qi + 1));
    const [name, ...rest] = path.split('/');
    if (!PAGES[name]) {
      location.replace('#/board');
      return;
    }
    const arg = rest.length ? decodeURIComponent(rest.join('/')) : '';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.route === name || (name === 'session' && a.dataset.route === 'sessions'));
    $('range').hidden = !RANGED.has(name);
    $('error').hidden = true;
    document.title = `sessionizer · ${document.querySelector(`#nav a[data-route="${name === 'session' ? 'sessions' : name}"]`).textContent}`;
    const view = $('view');
    view.setAttribute('aria-busy', 'true');
    try {
      const node = await PAGES[name](arg, params, seq);
      if (seq !== state.seq) return;
      view.replaceChildren(node);
    } catch (e) {
      if (e instanceof Stale || seq !== state.seq) return;
      if (e instanceof ApiError && e.status === 401) {
        signedOut('Your sign-in has expired: sign in again.');
        return;
      }
      view.replaceChildren(h('div', { class: 'page' }, errorBox(e)));
    } finally {
      if (seq === state.seq) {
        view.removeAttribute('aria-busy');
        view.dataset.rendered = String(seq); // the browser tests wait for this
      }
    }
  }

  function signedOut(message) {
    state.project = null;
    state.seq++;
    $('top').hidden = true;
    $('range').hidden = true;
    const key = h('input', { id: 'read-key', name: 'read_key', type: 'password', required: true, autocomplete: 'off', placeholder: 'sk_read_…' });
    const error = h('p', { id: 'sign-in-error', class: 'error', role: 'alert', hidden: !message }, message || '');
    const button = h('button', { type: 'submit' }, 'Sign in');
    const form = h('form', { id: 'sign-in', class: 'card sign-in' },
      h('h1', null, 'Sign in'),
      h('p', { class: 'muted' }, "Enter the project's read key (from ", h('code', null, 'sessionizer project create'), '). It is kept in an HttpOnly cookie, never in the page.'),
      h('label', null, 'Read key', key), button, error);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      button.disabled = true;
      error.hidden = true;
      try {
        await api('/dashboard/sign-in', { method: 'POST', body: { read_key: key.value.trim() } });
        key.value = '';
        await start();
      } catch (e) {
        error.textContent = e.message || String(e);
        error.hidden = false;
        key.select();
      } finally {
        button.disabled = false;
      }
    });
    $('view').replaceChildren(form);
    key.focus();
  }

  async function start() {
    try {
      state.project = await api('/v1/project');
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return signedOut();
      $('view').replaceChildren(errorBox(e));
      return;
    }
    $('project-name').textContent = state.project.name || state.project.project_id || '';
    $('project-tz').textContent = `${zone()} · timeout ${fmtDuration(state.project.timeout_ms)}`;
    $('top').hidden = false;
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem('sessionizer.range') || 'null');
    } catch { /* none */ }
    setRange(saved && validDate(saved.from) && validDate(saved.to) ? saved : lastDays(30));
    if (!location.hash || location.hash === '#' || location.hash === '#/') location.replace('#/board');
    await route();
  }

  function applyRange(range) {
    if (!validDate(range.from) || !validDate(range.to)) return showError('Choose both dates.');
    if (range.from > range.to) return showError('The start date is after the end date.');
    setRange(range);
    $('range-note').textContent = '';
    route();
  }
  function showError(text) {
    $('error').textContent = text;
    $('error').hidden = false;
  }

  function init() {
    window.addEventListener('hashchange', () => route());
    $('range').addEventListener('submit', (ev) => {
      ev.preventDefault();
      applyRange({ from: $('range-from').value, to: $('range-to').value });
    });
    $('range-30').addEventListener('click', () => applyRange(lastDays(30)));
    $('range-data').addEventListener('click', async () => {
      try {
        const r = await api('/v1/stats/range');
        if (!r.first_date) {
          $('range-note').textContent = 'No sessions yet.';
          return;
        }
        const last = r.last_date || r.first_date;
        // The API answers ranges of up to 400 days: the latest 400 days of longer histories.
        const from = r.first_date < addDays(last, -399) ? addDays(last, -399) : r.first_date;
        applyRange({ from, to: last });
        if (from !== r.first_date) $('range-note').textContent = `The data starts on ${r.first_date}; a range holds at most 400 days.`;
      } catch (e) {
        showError(e.message);
      }
    });
    $('sign-out').addEventListener('click', async () => {
      try {
        await api('/dashboard/sign-out', { method: 'POST' });
      } catch (e) {
        showError(e.message);
        return;
      }
      signedOut();
    });
    start();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
