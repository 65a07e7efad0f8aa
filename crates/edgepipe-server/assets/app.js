// edgepipe dashboard: a hash-routed single page over the server's /api/v1 JSON API.
// No build step and no framework: the server embeds this file as it is, and uPlot
// (vendored next to it) is the only dependency, loaded as the global `uPlot`.
'use strict';
(() => {
  const TOKEN_KEY = 'edgepipe_token';
  const SQL_KEY = 'edgepipe_sql';
  const SEVERITIES = ['info', 'low', 'medium', 'high', 'critical'];
  const ACTIVE_STATES = 'open,acknowledged,investigating';
  const ALL_STATES = 'open,acknowledged,investigating,resolved,false_positive';
  const TERMINAL_STATES = new Set(['resolved', 'false_positive']);
  const RANGES = [
    ['15m', 15 * 60e3],
    ['1h', 3600e3],
    ['6h', 6 * 3600e3],
    ['24h', 24 * 3600e3],
    ['7d', 7 * 24 * 3600e3],
  ];
  const FLEET_REFRESH_MS = 5000;
  const HEALTH_REFRESH_MS = 2000;
  // Palette for charts with several series (evidence, SQL results).
  const PALETTE = ['#73bf69', '#5794f2', '#ff9830', '#b877d9', '#f2cc0c', '#8ab8ff', '#ff7383', '#4ec9b0'];

  // ---------------------------------------------------------------- DOM helpers

  // h('a', {href, testid, onclick}, child, ...) builds elements without innerHTML,
  // so device ids, titles and error messages from the API can never inject markup.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'testid') el.dataset.testid = v;
      else if (k === 'class') el.className = v;
      else if (k === 'value') el.value = v;
      // Through CSSOM, not the attribute, so a CSP without 'unsafe-inline' allows it.
      else if (k === 'style') el.style.cssText = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  function table(headers, testid) {
    const tbody = h('tbody');
    const el = h('table', { testid }, h('thead', null, h('tr', null, headers.map((x) => h('th', null, x)))), tbody);
    return { el, tbody, wrap: h('div', { class: 'table-wrap' }, el) };
  }

  function badge(text, cls) {
    return h('span', { class: `badge ${cls}` }, text);
  }
  const sevBadge = (s) => (s ? badge(s, `sev-${s}`) : badge('none', 'none'));
  const stateBadge = (s) => badge(String(s).replace('_', ' '), `state state-${s}`);

  // ---------------------------------------------------------------- formatting

  const pad2 = (n) => String(n).padStart(2, '0');

  function fmtTime(ms) {
    if (ms == null || !Number.isFinite(ms)) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtDuration(ms) {
    const s = Math.abs(ms) / 1000;
    if (s < 1) return `${Math.round(Math.abs(ms))}ms`;
    if (s < 60) return `${Math.round(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 48 * 3600) return `${Math.floor(s / 3600)}h`;
    return `${Math.floor(s / 86400)}d`;
  }

  function fmtAgo(ms) {
    if (ms == null || !Number.isFinite(ms)) return 'never';
    const d = serverNow() - ms;
    if (Math.abs(d) < 1000) return 'just now';
    return d > 0 ? `${fmtDuration(d)} ago` : `in ${fmtDuration(d)}`;
  }

  // A relative time whose tooltip carries the absolute one.
  const ago = (ms) => h('span', { class: 'nowrap', title: fmtTime(ms) }, fmtAgo(ms));

  function fmtNum(v) {
    if (typeof v !== 'number' || !Number.isFinite(v)) return v == null ? '—' : String(v);
    if (Number.isInteger(v)) return v.toLocaleString('en-US');
    const a = Math.abs(v);
    return v.toLocaleString('en-US', { maximumFractionDigits: a >= 100 ? 1 : a >= 1 ? 3 : 6 });
  }

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  // Status and dead-letter objects are rendered generically, so their field names
  // decide the format: *_ms epoch values become times, *_bytes become sizes.
  function fmtField(key, v) {
    if (typeof v === 'number') {
      if (/_ms$|_at$/.test(key) && v > 1e11) return `${fmtTime(v)} (${fmtAgo(v)})`;
      if (/bytes/.test(key)) return fmtBytes(v);
      return fmtNum(v);
    }
    if (v == null) return '—';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  // Lake timestamps arrive as RFC 3339 strings (UTC; the zone may be left off);
  // evidence and case fields are epoch ms. Both become epoch ms.
  function parseTs(v) {
    if (typeof v === 'number') return v;
    if (typeof v !== 'string') return NaN;
    const s = /^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?$/.test(v) ? `${v.replace(' ', 'T')}Z` : v;
    return Date.parse(s);
  }

  const sqlStr = (s) => `'${String(s).replace(/'/g, "''")}'`;

  // ---------------------------------------------------------------- API

  let token = localStorage.getItem(TOKEN_KEY) || '';
  let role = null; // from /whoami; only used for hints, the server enforces roles
  // Server clock minus ours, learned from the fleet's now_ms, so "last seen 3s ago"
  // and time ranges are right even when the laptop's clock is off.
  let clockSkew = 0;
  const serverNow = () => Date.now() + clockSkew;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = 'GET', body, signal } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* non-JSON error body: use the text */ }
    if (!res.ok) {
      const msg = (data && data.message) || text || res.statusText;
      throw new ApiError(res.status, (data && data.code) || `http_${res.status}`, msg);
    }
    return data;
  }

  const runSql = (sql, signal) => api('/api/v1/query', { method: 'POST', body: { sql, format: 'json' }, signal });
  const caseAction = (id, body) => api(`/api/v1/cases/${encodeURIComponent(id)}/actions`, { method: 'POST', body });

  // ---------------------------------------------------------------- error banner

  // The banner remembers who raised it, so a poll that recovers clears only its own
  // error and never hides the message of an action the user just tried.
  let errorSource = null;

  function showError(err, source = 'action') {
    if (err && err.name === 'AbortError') return;
    let msg = err instanceof Error ? err.message : String(err);
    if (err instanceof ApiError) {
      msg = `${msg} (${err.status}${err.code ? ` ${err.code}` : ''})`;
      if (err.status === 401) msg += ' — paste an API token in the header.';
    }
    $('error-text').textContent = msg;
    $('error').hidden = false;
    errorSource = source;
  }

  function clearError(source) {
    if (source && source !== errorSource) return;
    $('error').hidden = true;
    $('error-text').textContent = '';
    errorSource = null;
  }

  // ---------------------------------------------------------------- charts

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function axesStyle() {
    const grid = { stroke: cssVar('--chart-grid'), width: 1 };
    const axis = { stroke: cssVar('--chart-axis'), grid, ticks: grid };
    // Wider tick spacing on x than uPlot's default keeps time labels from touching.
    return [{ ...axis, space: 80 }, { ...axis, size: 64 }];
  }

  // y range that also covers anomaly markers and expected bands drawn by hand,
  // which uPlot does not know about.
  function yRange(extra) {
    return (u, dmin, dmax) => {
      let lo = Number.isFinite(dmin) ? dmin : Infinity;
      let hi = Number.isFinite(dmax) ? dmax : -Infinity;
      for (const v of extra) {
        if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
      if (!Number.isFinite(lo)) return [0, 1];
      const span = hi - lo || Math.abs(hi) * 0.1 || 1;
      return [lo - span * 0.08, hi + span * 0.08];
    };
  }

  // Draws anomaly markers (red dots) and their expected ranges (light bars) on top of
  // a uPlot chart. marks: [{t, y, lo, hi}]. onDrawn(n) gets the number of dots drawn.
  function markerHooks(marks, onDrawn) {
    const expected = cssVar('--chart-expected');
    const red = cssVar('--chart-marker');
    const inPlot = (u, x) => x >= u.bbox.left && x <= u.bbox.left + u.bbox.width;
    return {
      drawClear: [(u) => {
        const ctx = u.ctx;
        const w = Math.max(6 * devicePixelRatio, 4);
        ctx.save();
        ctx.fillStyle = expected;
        for (const m of marks) {
          if (!Number.isFinite(m.lo) || !Number.isFinite(m.hi)) continue;
          const x = u.valToPos(m.t, 'x', true);
          if (!inPlot(u, x)) continue;
          const y1 = u.valToPos(m.hi, 'y', true);
          const y2 = u.valToPos(m.lo, 'y', true);
          ctx.fillRect(x - w / 2, Math.min(y1, y2), w, Math.max(Math.abs(y2 - y1), 2));
        }
        ctx.restore();
      }],
      draw: [(u) => {
        const ctx = u.ctx;
        const r = 4 * devicePixelRatio;
        let n = 0;
        ctx.save();
        ctx.fillStyle = red;
        ctx.strokeStyle = 'rgba(0,0,0,0.6)';
        ctx.lineWidth = devicePixelRatio;
        for (const m of marks) {
          if (!Number.isFinite(m.y)) continue;
          const x = u.valToPos(m.t, 'x', true);
          if (!inPlot(u, x)) continue;
          const y = u.valToPos(m.y, 'y', true);
          ctx.beginPath();
          ctx.arc(x, y, r, 0, 2 * Math.PI);
          ctx.fill();
          ctx.stroke();
          n++;
        }
        ctx.restore();
        if (onDrawn) onDrawn(n);
      }],
    };
  }

  const chartWidth = (el) => Math.max(200, Math.floor(el.clientWidth));

  // Keeps every chart of the current page as wide as its container.
  function resizeCharts() {
    if (!current) return;
    for (const [u, el] of current.charts) u.setSize({ width: chartWidth(el), height: u.height });
  }

  // ---------------------------------------------------------------- page lifecycle

  // Everything a page starts (fetches, timers, charts) hangs off one Page object, so
  // leaving the page cancels it all and a late response cannot draw on the next page.
  class Page {
    constructor() {
      this.ctl = new AbortController();
      this.signal = this.ctl.signal;
      this.charts = new Map();
      this.timers = new Set();
    }

    get alive() { return !this.signal.aborted; }

    // Runs fn now and then every ms after the previous run ended (never overlapping).
    poll(fn, ms) {
      const tick = async () => {
        try {
          await fn();
          if (this.alive) clearError('poll');
        } catch (e) {
          if (this.alive) showError(e, 'poll');
        }
        if (!this.alive) return;
        const t = setTimeout(() => { this.timers.delete(t); tick(); }, ms);
        this.timers.add(t);
      };
      tick();
    }

    chart(el, opts, data) {
      const u = new uPlot({ width: chartWidth(el), ms: 1, ...opts }, data, el);
      this.charts.set(u, el);
      return u;
    }

    dropChart(u) {
      if (!u) return;
      u.destroy();
      this.charts.delete(u);
    }

    dispose() {
      this.ctl.abort();
      for (const t of this.timers) clearTimeout(t);
      for (const u of this.charts.keys()) u.destroy();
      this.charts.clear();
    }
  }

  let current = null;

  function parseRoute() {
    const raw = location.hash.replace(/^#\/?/, '');
    const qi = raw.indexOf('?');
    const path = qi < 0 ? raw : raw.slice(0, qi);
    const parts = path.split('/');
    return {
      name: parts[0] || 'fleet',
      arg: parts.length > 1 ? decodeURIComponent(parts.slice(1).join('/')) : '',
      query: new URLSearchParams(qi < 0 ? '' : raw.slice(qi + 1)),
    };
  }

  const PAGES = {
    fleet: pageFleet,
    device: pageDevice,
    cases: pageCases,
    case: pageCase,
    deadletters: pageDeadLetters,
    sql: pageSql,
    health: pageHealth,
  };

  function route() {
    if (current) current.dispose();
    clearError();
    const r = parseRoute();
    const root = $('page');
    root.replaceChildren();
    for (const a of document.querySelectorAll('.nav a')) {
      const section = r.name === 'device' ? 'fleet' : r.name === 'case' ? 'cases' : r.name;
      a.classList.toggle('current', a.dataset.route === section);
    }
    const render = PAGES[r.name];
    current = new Page();
    if (!render) {
      root.append(h('p', null, 'No such page. ', h('a', { href: '#/fleet' }, 'Go to the fleet.')));
      return;
    }
    document.title = `edgepipe · ${r.name}`;
    const page = current;
    Promise.resolve(render(root, r, page)).catch((e) => { if (page.alive) showError(e); });
  }

  // ---------------------------------------------------------------- fleet page

  function pageFleet(root, _r, page) {
    const count = h('span', { testid: 'fleet-count' }, '…');
    const live = h('span', { class: 'live', testid: 'live-indicator' }, 'live data');
    const filter = h('input', { type: 'search', placeholder: 'Filter devices', testid: 'fleet-filter', 'aria-label': 'Filter devices' });
    const cols = [
      ['device_id', 'Device'], ['online', 'Status'], ['last_seen_ms', 'Last seen'],
      ['readings_last_hour', 'Readings (1h)'], ['metrics', 'Metrics'], ['open_cases', 'Open cases'],
    ];
    let sort = { key: 'device_id', dir: 1 };
    const headRow = h('tr');
    const tbody = h('tbody');
    root.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Fleet'), count, h('span', { class: 'spacer' }), live, filter),
      h('div', { class: 'panel' }, h('div', { class: 'table-wrap' },
        h('table', { testid: 'fleet-table' }, h('thead', null, headRow), tbody))),
    );

    // Sorting is by header buttons (not hover), so it works the same on a tablet.
    for (const [key, label] of cols) {
      headRow.append(h('th', null, h('button', {
        class: 'link', testid: `sort-${key}`,
        onclick: () => { sort = { key, dir: sort.key === key ? -sort.dir : 1 }; render(); },
      }, label)));
    }

    let devices = [];
    const sortValue = (d, key) => {
      if (key === 'open_cases') return (d.open_cases || 0) * 10 + SEVERITIES.indexOf(d.max_open_severity);
      if (key === 'metrics') return (d.metrics || []).length;
      if (key === 'online') return d.online ? 1 : 0;
      return d[key] ?? '';
    };

    function render() {
      const q = filter.value.trim().toLowerCase();
      const rows = devices
        .filter((d) => !q || d.device_id.toLowerCase().includes(q))
        .sort((a, b) => {
          const x = sortValue(a, sort.key);
          const y = sortValue(b, sort.key);
          return (x < y ? -1 : x > y ? 1 : 0) * sort.dir || a.device_id.localeCompare(b.device_id);
        });
      tbody.replaceChildren(...rows.map((d) => h('tr', {
        testid: 'device-row',
        'data-device': d.device_id,
        'data-last-seen': d.last_seen_ms ?? '',
        'data-readings': d.readings_last_hour ?? '',
      },
      h('td', null, h('a', { href: `#/device/${encodeURIComponent(d.device_id)}`, testid: 'device-link' }, d.device_id)),
      h('td', null, d.online ? badge('online', 'online') : badge('offline', 'offline')),
      h('td', null, ago(d.last_seen_ms)),
      h('td', { class: 'num' }, fmtNum(d.readings_last_hour)),
      h('td', { class: 'muted' }, (d.metrics || []).join(', ')),
      h('td', null, d.open_cases
        ? h('a', { href: `#/cases?device_id=${encodeURIComponent(d.device_id)}` },
          badge(`${d.open_cases} open`, `sev-${d.max_open_severity || 'info'}`))
        : h('span', { class: 'muted' }, '—')),
      )));
      if (!rows.length) {
        tbody.append(h('tr', null, h('td', { colspan: cols.length, class: 'muted' }, devices.length ? 'No device matches the filter.' : 'No devices yet.')));
      }
    }
    filter.addEventListener('input', render);

    page.poll(async () => {
      const r = await api('/api/v1/fleet', { signal: page.signal });
      if (Number.isFinite(r.now_ms)) clockSkew = r.now_ms - Date.now();
      devices = r.devices || [];
      const online = devices.filter((d) => d.online).length;
      count.textContent = `${online}/${devices.length} online`;
      live.textContent = `live data · updated ${fmtTime(Date.now()).slice(11)}`;
      render();
    }, FLEET_REFRESH_MS);
  }

  // ---------------------------------------------------------------- device page

  async function pageDevice(root, r, page) {
    const id = r.arg;
    const initial = RANGES.find(([l]) => l === r.query.get('range')) || RANGES[1];
    // The window shown: a preset (label) ending now, or an explicit zoom/pan window.
    const view = { label: initial[0], span: initial[1], from: 0, to: 0 };
    const setPreset = (label, span) => {
      Object.assign(view, { label, span, to: serverNow(), from: serverNow() - span });
    };
    setPreset(view.label, view.span);

    const info = h('div', { class: 'meta' });
    const rangeText = h('span', { class: 'muted nowrap', testid: 'range-text' });
    const markerCount = h('span', { testid: 'anomaly-marker-count' }, '0');
    const rangeButtons = RANGES.map(([label, span]) => h('button', {
      testid: `range-${label}`, onclick: () => { setPreset(label, span); load(); },
    }, label));
    const shift = (f) => {
      const span = view.to - view.from;
      Object.assign(view, { label: null, from: view.from + span * f, to: view.to + span * f });
      load();
    };
    const zoom = (f) => {
      const mid = (view.from + view.to) / 2;
      const half = ((view.to - view.from) * f) / 2;
      Object.assign(view, { label: null, from: mid - half, to: mid + half });
      load();
    };
    const charts = h('div');
    const casesBox = h('div', { testid: 'device-cases' }, h('span', { class: 'muted' }, 'Loading…'));

    root.append(
      h('div', { class: 'page-head' },
        h('h1', null, h('a', { href: '#/fleet', class: 'muted' }, 'Fleet'), ' / ', id),
        info, h('span', { class: 'spacer' }),
        h('span', { class: 'muted' }, 'Anomaly markers: ', markerCount)),
      h('div', { class: 'toolbar', style: 'margin-bottom:10px' },
        h('div', { class: 'group' }, rangeButtons),
        h('div', { class: 'group' },
          h('button', { testid: 'pan-left', title: 'Earlier', onclick: () => shift(-0.5) }, '◀'),
          h('button', { testid: 'pan-right', title: 'Later', onclick: () => shift(0.5) }, '▶')),
        h('div', { class: 'group' },
          h('button', { testid: 'zoom-in', title: 'Zoom in', onclick: () => zoom(0.5) }, '+'),
          h('button', { testid: 'zoom-out', title: 'Zoom out', onclick: () => zoom(2) }, '−')),
        h('button', { testid: 'range-reset', onclick: () => { setPreset(initial[0], initial[1]); load(); } }, 'Reset'),
        rangeText,
        h('span', { class: 'hint' }, 'Drag across a chart to zoom.')),
      charts,
      h('div', { class: 'panel' }, h('h2', null, 'Open cases'), casesBox),
    );

    // Metrics come from the fleet listing; a device missing there (e.g. gone quiet
    // for long) falls back to the lake itself.
    const fleet = await api('/api/v1/fleet', { signal: page.signal });
    if (Number.isFinite(fleet.now_ms)) {
      clockSkew = fleet.now_ms - Date.now();
      setPreset(view.label, view.span);
    }
    const dev = (fleet.devices || []).find((d) => d.device_id === id);
    let metrics = dev ? [...(dev.metrics || [])] : [];
    if (dev) {
      info.append(dev.online ? badge('online', 'online') : badge('offline', 'offline'),
        h('span', null, 'last seen ', h('b', null, ago(dev.last_seen_ms))),
        h('span', null, h('b', null, fmtNum(dev.readings_last_hour)), ' readings in the last hour'));
    } else {
      const res = await runSql(`SELECT DISTINCT metric FROM readings WHERE device_id = ${sqlStr(id)} ORDER BY metric`, page.signal);
      metrics = res.rows.map((x) => x.metric);
    }

    // One panel per metric, kept across reloads; only the uPlot inside is replaced.
    const panels = new Map();
    const drawnCounts = new Map();
    const panelFor = (metric) => {
      if (!panels.has(metric)) {
        if (!panels.size) charts.replaceChildren(); // drop a "no metrics" note
        const note = h('span', { class: 'muted' });
        const el = h('div', { class: 'chart', testid: `chart-${metric}` });
        const panel = h('div', { class: 'panel chart-panel' }, h('h2', null, metric, note), el);
        charts.append(panel);
        panels.set(metric, { el, note, u: null });
      }
      return panels.get(metric);
    };
    metrics.forEach(panelFor);

    const onDrawn = (metric, n) => {
      drawnCounts.set(metric, n);
      markerCount.textContent = String([...drawnCounts.values()].reduce((a, b) => a + b, 0));
    };

    let loadSeq = 0;
    async function load() {
      const seq = ++loadSeq;
      const from = Math.floor(view.from);
      const to = Math.ceil(view.to);
      for (const b of rangeButtons) b.classList.toggle('active', b.dataset.testid === `range-${view.label}`);
      rangeText.textContent = `${fmtTime(from)} – ${fmtTime(to)} (${fmtDuration(to - from)})`;

      const anomalies = await runSql(
        `SELECT ts, metric, score, value, expected_lo, expected_hi FROM anomalies WHERE device_id = ${sqlStr(id)} ` +
        `AND ts >= to_timestamp_millis(${from}) AND ts < to_timestamp_millis(${to}) ORDER BY ts LIMIT 2000`,
        page.signal,
      ).then((res) => res.rows, (e) => { showError(e); return []; });
      if (seq !== loadSeq) return;
      // Device-wide findings (silence, multivariate) have no metric of their own to chart.
      for (const a of anomalies) if (a.metric) panelFor(a.metric);
      if (!panels.size) {
        charts.replaceChildren(h('div', { class: 'panel muted', testid: 'no-metrics' }, `No metrics known for ${id}.`));
        return;
      }

      const results = await Promise.all([...panels].map(async ([metric, p]) => {
        const q = new URLSearchParams({ device: id, metric, from, to, points: chartWidth(p.el) });
        try {
          return [metric, await api(`/api/v1/series?${q}`, { signal: page.signal })];
        } catch (e) {
          showError(e);
          return [metric, null];
        }
      }));
      if (seq !== loadSeq || !page.alive) return;

      drawnCounts.clear();
      for (const [metric, series] of results) {
        const p = panels.get(metric);
        const marks = anomalies.filter((a) => a.metric === metric).map((a) => ({
          t: parseTs(a.ts), y: a.value, lo: a.expected_lo, hi: a.expected_hi,
        }));
        const pts = (series && series.points) || [];
        p.note.textContent = series
          ? ` · ${pts.length ? `${pts.length} buckets of ${fmtDuration(series.step)}` : 'no readings in this range'}`
            + (marks.length ? ` · ${marks.length} anomalies` : '')
          : ' · failed to load';
        page.dropChart(p.u);
        p.u = deviceChart(page, p.el, pts, marks, from, to, (n) => onDrawn(metric, n));
      }
      markerCount.textContent = String([...drawnCounts.values()].reduce((a, b) => a + b, 0));
    }

    // Drag-select on any chart zooms every chart: the new window is re-queried, so the
    // server downsamples it to the chart's width again instead of uPlot stretching it.
    function onSelect(u) {
      if (u.select.width < 3) return;
      const a = u.posToVal(u.select.left, 'x');
      const b = u.posToVal(u.select.left + u.select.width, 'x');
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      // Charts share a cursor, so each one reports the same selection: act once.
      if (Math.round(a) === Math.floor(view.from) && Math.round(b) === Math.ceil(view.to)) return;
      Object.assign(view, { label: null, from: Math.round(a), to: Math.round(b) });
      load();
    }

    function deviceChart(pg, el, pts, marks, from, to, drawn) {
      // An empty window still gets a chart (two null points spanning it) so the
      // axes and any anomaly markers stay visible.
      const rows = pts.length ? pts : [{ t: from, min: null, max: null, avg: null }, { t: to, min: null, max: null, avg: null }];
      const data = [rows.map((p) => p.t), rows.map((p) => p.avg), rows.map((p) => p.min), rows.map((p) => p.max)];
      const band = cssVar('--chart-band');
      const hooks = markerHooks(marks, drawn);
      hooks.setSelect = [onSelect];
      return pg.chart(el, {
        height: 200,
        scales: {
          x: { time: true, range: () => [from, to] },
          y: { range: yRange(marks.flatMap((m) => [m.y, m.lo, m.hi])) },
        },
        series: [
          {},
          { label: 'avg', stroke: cssVar('--chart-avg'), width: 1.5 },
          { label: 'min', stroke: band, width: 1 },
          { label: 'max', stroke: band, width: 1 },
        ],
        bands: [{ series: [3, 2], fill: band }],
        axes: axesStyle(),
        cursor: { drag: { x: true, y: false, setScale: false }, sync: { key: `device-${id}` } },
        hooks,
      }, data);
    }

    await load();

    const cases = await api(`/api/v1/cases?${new URLSearchParams({ device_id: id, state: ACTIVE_STATES, limit: 50 })}`, { signal: page.signal });
    const list = cases.cases || [];
    casesBox.replaceChildren(list.length ? casesTable(list, { device: false }).wrap : h('span', { class: 'muted' }, 'No open cases.'));
  }

  // ---------------------------------------------------------------- cases

  // A table of cases; onAck, when given, adds the inline "Ack" button to open cases.
  function casesTable(list, { device = true, onAck } = {}) {
    const headers = ['ID', 'Severity', 'Title', device && 'Device', 'State', 'Assignee', 'Anomalies', 'Last event', onAck && ''].filter((x) => x !== false && x !== undefined);
    const t = table(headers, 'cases-table');
    const rowFor = (c) => {
      const tr = h('tr', { testid: 'case-row', 'data-case': c.id, 'data-state': c.state },
        h('td', { class: 'nowrap' }, h('a', { href: `#/case/${c.id}` }, `#${c.id}`)),
        h('td', null, sevBadge(c.severity)),
        h('td', { class: 'wrap' }, h('a', { href: `#/case/${c.id}` }, c.title)),
        device && h('td', { class: 'nowrap' }, c.device_id ? h('a', { href: `#/device/${encodeURIComponent(c.device_id)}` }, c.device_id) : '—'),
        h('td', null, stateBadge(c.state)),
        h('td', null, c.assignee || h('span', { class: 'muted' }, '—')),
        h('td', { class: 'num' }, fmtNum(c.anomaly_count)),
        h('td', null, ago(c.last_event_ts ?? c.updated_at)),
        onAck && h('td', null, c.state === 'open'
          ? h('button', { class: 'small', testid: `ack-${c.id}`, onclick: (ev) => onAck(c, ev.currentTarget, (nc) => tr.replaceWith(rowFor(nc))) }, 'Ack')
          : null),
      );
      return tr;
    };
    t.tbody.append(...list.map(rowFor));
    t.add = (more) => t.tbody.append(...more.map(rowFor));
    return t;
  }

  function pageCases(root, r, page) {
    const q = r.query;
    const stateSel = h('select', { testid: 'filter-state', 'aria-label': 'State' },
      [['active (open, ack, investigating)', ACTIVE_STATES], ['open', 'open'], ['acknowledged', 'acknowledged'],
        ['investigating', 'investigating'], ['resolved', 'resolved'], ['false positive', 'false_positive'], ['all', ALL_STATES]]
        .map(([label, v]) => h('option', { value: v }, label)));
    stateSel.value = q.get('state') || ACTIVE_STATES;
    const sevSel = h('select', { testid: 'filter-severity', 'aria-label': 'Minimum severity' },
      SEVERITIES.map((s) => h('option', { value: s }, `≥ ${s}`)));
    sevSel.value = q.get('min_severity') || 'info';
    const catSel = h('select', { testid: 'filter-category', 'aria-label': 'Category' },
      ['', 'anomaly', 'silence', 'gap', 'pipeline'].map((c) => h('option', { value: c }, c || 'any category')));
    catSel.value = q.get('category') || '';
    const devInput = h('input', { type: 'search', placeholder: 'device id', testid: 'filter-device', value: q.get('device_id') || '', 'aria-label': 'Device' });

    // Filters live in the URL so a filtered board can be bookmarked and linked to.
    const applyFilters = () => {
      const p = new URLSearchParams({ state: stateSel.value, min_severity: sevSel.value });
      if (catSel.value) p.set('category', catSel.value);
      if (devInput.value.trim()) p.set('device_id', devInput.value.trim());
      location.hash = `#/cases?${p}`;
    };
    for (const el of [stateSel, sevSel, catSel, devInput]) el.addEventListener('change', applyFilters);

    const box = h('div', { class: 'panel' }, h('span', { class: 'muted' }, 'Loading…'));
    const more = h('button', { testid: 'cases-more', hidden: true }, 'More');
    const shown = h('span', { class: 'muted', testid: 'cases-count' });
    root.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Cases'), shown, h('span', { class: 'spacer' }),
        h('div', { class: 'toolbar' },
          h('label', null, 'State', stateSel), h('label', null, 'Severity', sevSel), catSel, devInput,
          h('button', { testid: 'cases-refresh', onclick: route }, 'Refresh'))),
      box, h('div', { class: 'more' }, more),
    );

    const onAck = async (c, btn, replace) => {
      btn.disabled = true;
      try {
        replace(await caseAction(c.id, { action: 'acknowledge' }));
        clearError();
      } catch (e) {
        showError(e);
        btn.disabled = false;
      }
    };

    let t = null;
    let count = 0;
    let next = null;
    async function fetchPage() {
      const p = new URLSearchParams({ state: stateSel.value, min_severity: sevSel.value, limit: 50 });
      if (catSel.value) p.set('category', catSel.value);
      if (devInput.value.trim()) p.set('device_id', devInput.value.trim());
      if (next) p.set('after', next);
      const res = await api(`/api/v1/cases?${p}`, { signal: page.signal });
      const list = res.cases || [];
      if (!t) {
        t = casesTable(list, { onAck });
        box.replaceChildren(t.wrap);
      } else {
        t.add(list);
      }
      count += list.length;
      next = res.next || null;
      more.hidden = !next;
      shown.textContent = `${count} shown${next ? ', more available' : ''}`;
      if (!count) box.replaceChildren(h('span', { class: 'muted' }, 'No cases match these filters.'));
    }
    more.addEventListener('click', async () => {
      more.disabled = true;
      try { await fetchPage(); } catch (e) { showError(e); }
      more.disabled = false;
    });
    return fetchPage();
  }

  // ---------------------------------------------------------------- case page

  function pageCase(root, r, page) {
    const id = r.arg;
    let evidenceCharts = [];

    async function load() {
      const c = await api(`/api/v1/cases/${encodeURIComponent(id)}`, { signal: page.signal });
      if (!page.alive) return;
      for (const u of evidenceCharts) page.dropChart(u);
      evidenceCharts = [];
      root.replaceChildren(...renderCase(c));
      evidenceCharts = drawEvidence(c);
    }

    // Every action re-fetches the whole case afterwards, so the timeline and
    // counters always show what the server recorded, not a local guess.
    async function act(body, btn) {
      const buttons = root.querySelectorAll('button');
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await caseAction(id, body);
        clearError();
        await load();
      } catch (e) {
        showError(e);
        buttons.forEach((b) => { b.disabled = false; });
        if (btn) btn.focus();
      }
    }

    function renderCase(c) {
      // Buttons that cannot apply in this state are disabled; the server still has
      // the last word (409 invalid_transition is shown in the banner).
      const terminal = TERMINAL_STATES.has(c.state);
      const note = h('textarea', { rows: 2, placeholder: 'Note for resolve / reopen (optional)', testid: 'action-note' });
      const rootCause = h('input', { placeholder: 'Root cause (for resolve)', testid: 'root-cause-input' });
      const withNote = (o) => {
        if (note.value.trim()) o.note = note.value.trim();
        return o;
      };
      const btn = (testid, label, body, { cls, disabled } = {}) => h('button', {
        testid, class: cls, disabled,
        onclick: (ev) => act(typeof body === 'function' ? body() : body, ev.currentTarget),
      }, label);
      // Optional fields are left out when empty rather than sent as null.
      const resolveBody = (outcome) => () => {
        const o = { action: 'resolve', outcome };
        if (rootCause.value.trim()) o.root_cause = rootCause.value.trim();
        return withNote(o);
      };
      const assignInput = h('input', { placeholder: 'assignee', testid: 'assign-input', value: c.assignee || '' });
      const comment = h('textarea', { rows: 2, placeholder: 'Comment', testid: 'comment-input' });

      const meta = [
        ['Device', c.device_id ? h('a', { href: `#/device/${encodeURIComponent(c.device_id)}` }, c.device_id) : '—'],
        ['Category', c.category], ['Assignee', c.assignee || '—'], ['Metrics', (c.metrics || []).join(', ') || '—'],
        ['Opened', ago(c.opened_at)], ['Updated', ago(c.updated_at)],
        ['First event', fmtTime(c.first_event_ts)], ['Last event', fmtTime(c.last_event_ts)],
        ['Last seen', ago(c.last_seen_at)], ['Anomalies', fmtNum(c.anomaly_count)], ['Max score', fmtNum(c.max_score)],
        ['Reopened', fmtNum(c.reopen_count)], ['Flaps', fmtNum(c.flap_count)],
        c.resolved_at && ['Resolved', ago(c.resolved_at)], c.outcome && ['Outcome', c.outcome],
        c.auto_resolved && ['Auto-resolved', 'yes'], c.root_cause && ['Root cause', c.root_cause],
        ['Version', c.version],
      ].filter(Boolean);

      const head = h('div', { class: 'panel' },
        h('div', { class: 'case-head' },
          h('h1', null, h('a', { href: '#/cases', class: 'muted' }, 'Cases'), ` / #${c.id} `, c.title),
          sevBadge(c.severity),
          h('span', { class: `badge state state-${c.state}` }, h('span', { testid: 'case-state' }, c.state))),
        h('div', { class: 'meta' }, meta.map(([k, v]) => h('span', null, `${k}: `, h('b', null, v)))));

      const actions = h('div', { class: 'panel' }, h('h2', null, 'Actions'),
        role === 'viewer' ? h('p', { class: 'hint' }, 'Your role is viewer: the server will refuse changes to this case.') : null,
        h('div', { class: 'actions' },
          btn('action-acknowledge', 'Acknowledge', { action: 'acknowledge' }, { cls: c.state === 'open' ? 'primary' : null, disabled: c.state !== 'open' }),
          btn('action-investigate', 'Investigate', { action: 'investigate' }, { cls: c.state === 'acknowledged' ? 'primary' : null, disabled: terminal || c.state === 'investigating' }),
          btn('action-resolve', 'Resolve (confirmed)', resolveBody('confirmed'), { cls: c.state === 'investigating' ? 'primary' : null, disabled: terminal }),
          btn('action-false-positive', 'False positive', resolveBody('false_positive'), { disabled: terminal }),
          btn('action-reopen', 'Reopen', () => withNote({ action: 'reopen' }), { cls: 'danger', disabled: !terminal })),
        h('div', { class: 'form-row' }, rootCause),
        h('div', { class: 'form-row' }, note),
        h('div', { class: 'form-row' }, assignInput,
          btn('assign-save', 'Assign', () => ({ action: 'assign', assignee: assignInput.value.trim() }))),
        h('div', { class: 'form-row' }, comment,
          btn('comment-save', 'Comment', () => ({ action: 'comment', text: comment.value.trim() }))));

      const timeline = h('ul', { class: 'timeline', testid: 'timeline' },
        (c.timeline || []).map((e) => h('li', { testid: 'timeline-entry' },
          h('span', { class: 'when', title: fmtTime(e.at) }, fmtTime(e.at)),
          h('span', null, h('b', null, e.actor || 'system'), ' ', e.action,
            describe(e.detail) ? h('div', { class: 'detail' }, describe(e.detail)) : null))));

      const evidenceQueries = (c.evidence || []).map((ev) => h('details', null,
        h('summary', null, `${ev.kind} · ${fmtTime(ev.created_at)} · ${((ev.body && ev.body.rows) || []).length} rows`),
        ev.body && ev.body.query ? [h('pre', { class: 'sql' }, ev.body.query), sqlButton(ev.body.query, 'Open in SQL console')] : null));

      const evidence = h('div', { class: 'panel' },
        h('h2', null, 'Evidence', c.window_query ? sqlButton(c.window_query, 'Open window in SQL console', 'open-window-query') : null),
        h('div', { class: 'chart', testid: 'evidence-chart' }), evidenceQueries);

      return [
        head,
        h('div', { class: 'grid-2' },
          h('div', null, evidence, anomaliesPanel(c.anomalies || [])),
          h('div', { class: 'side' }, actions, h('div', { class: 'panel' }, h('h2', null, 'Timeline'), timeline))),
      ];
    }

    // Renders evidence rows ({metric, ts, value}) as one small chart per metric,
    // with the case's anomalies marked on it.
    function drawEvidence(c) {
      const box = root.querySelector('[data-testid="evidence-chart"]');
      const byMetric = new Map();
      for (const ev of c.evidence || []) {
        for (const row of (ev.body && ev.body.rows) || []) {
          const t = parseTs(row.ts);
          if (!Number.isFinite(t) || typeof row.value !== 'number') continue;
          if (!byMetric.has(row.metric)) byMetric.set(row.metric, new Map());
          byMetric.get(row.metric).set(t, row.value);
        }
      }
      if (!byMetric.size) {
        box.append(h('div', { class: 'empty' }, 'No evidence readings recorded.'));
        return [];
      }
      return [...byMetric].map(([metric, points], i) => {
        const el = h('div', { testid: `evidence-chart-${metric}` });
        box.append(h('div', { class: 'muted' }, metric), el);
        const xs = [...points.keys()].sort((a, b) => a - b);
        const marks = (c.anomalies || []).filter((a) => a.metric === metric).map((a) => {
          const ex = (a.explanation && a.explanation.expected) || [];
          return { t: parseTs(a.ts), y: a.explanation && a.explanation.value, lo: ex[0], hi: ex[1] };
        });
        return page.chart(el, {
          height: 160,
          scales: { x: { time: true }, y: { range: yRange(marks.flatMap((m) => [m.y, m.lo, m.hi])) } },
          series: [{}, { label: metric, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true }],
          axes: axesStyle(),
          hooks: markerHooks(marks),
        }, [xs, xs.map((t) => points.get(t))]);
      });
    }

    return load();
  }

  // "k: v, k2: v2" for timeline details (objects, or plain text from older entries).
  function describe(obj) {
    if (obj == null) return '';
    if (typeof obj !== 'object') return String(obj);
    return Object.entries(obj).map(([k, v]) => `${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`).join(', ');
  }

  function sqlButton(sql, label, testid) {
    return h('button', {
      class: 'small', testid,
      onclick: () => { location.hash = `#/sql?${new URLSearchParams({ q: sql, run: '1' })}`; },
    }, label);
  }

  function anomaliesPanel(list) {
    const explain = h('div', { testid: 'explanation' });
    const t = table(['Time', 'Metric', 'Kind', 'Score', 'Value', 'Expected', 'Detectors', 'Contributing', 'Model', ''], 'anomalies-table');
    const showExplanation = (a) => {
      const x = a.explanation || {};
      const ex = x.expected || [];
      const contributing = x.contributing || [];
      let ct = null;
      if (contributing.length) {
        ct = table(['Metric', 'Share', '', 'z'], 'contributing-table');
        ct.tbody.append(...contributing.map((m) => {
          const pct = Math.min(100, Math.max(0, (m.share || 0) * 100));
          return h('tr', null,
            h('td', null, m.metric), h('td', { class: 'num' }, `${Math.round(pct)}%`),
            h('td', null, h('div', { class: 'bar' }, h('span', { style: `width:${pct}%` }))),
            h('td', { class: 'num' }, fmtNum(m.z)));
        }));
      }
      explain.replaceChildren(
        h('h2', null, `Detector explanation · ${a.metric} at ${fmtTime(parseTs(a.ts))}`),
        h('p', null, 'Value ', h('b', null, fmtNum(x.value)), ' against an expected range of ',
          h('b', null, ex.length ? `${fmtNum(ex[0])} … ${fmtNum(ex[1])}` : 'unknown'),
          '; detectors fired: ', h('b', null, (x.fired || []).join(', ') || '—'),
          '; strongest: ', h('b', null, x.strongest || '—'), `; score ${fmtNum(a.score)}.`),
        x.drift && h('p', { testid: 'drift-trend' }, 'Drifting ', h('b', null, x.drift.per_hour >= 0 ? 'up' : 'down'), ' ',
          h('b', null, fmtNum(Math.abs(x.drift.per_hour))), ' per hour for ', h('b', null, `${fmtNum(x.drift.hours)} h`), '.'),
        ct && ct.wrap,
        h('details', null, h('summary', null, 'Raw explanation'), h('pre', { class: 'sql' }, JSON.stringify(x, null, 2))),
      );
    };
    t.tbody.append(...list.map((a) => {
      const x = a.explanation || {};
      const ex = x.expected || [];
      return h('tr', { testid: 'anomaly-row' },
        h('td', { class: 'nowrap' }, fmtTime(parseTs(a.ts))),
        h('td', null, a.metric), h('td', null, a.kind),
        h('td', { class: 'num' }, fmtNum(a.score)), h('td', { class: 'num' }, fmtNum(x.value)),
        h('td', { class: 'nowrap' }, ex.length ? `${fmtNum(ex[0])} … ${fmtNum(ex[1])}` : '—'),
        h('td', null, (x.fired || []).join(', '), x.strongest ? h('div', { class: 'muted' }, `strongest: ${x.strongest}`) : null),
        h('td', null, (x.contributing || []).map((m) => h('div', { class: 'nowrap' }, `${m.metric} ${Math.round((m.share || 0) * 100)}% z=${fmtNum(m.z)}`))),
        h('td', { class: 'muted' }, a.model_version ?? '—'),
        h('td', null, h('button', { class: 'small', onclick: () => showExplanation(a) }, 'Explain')));
    }));
    // Explain the strongest anomaly up front; the others are one click away.
    const strongest = list.reduce((best, a) => (!best || (a.score || 0) > (best.score || 0) ? a : best), null);
    if (strongest) showExplanation(strongest);
    return h('div', { class: 'panel' }, h('h2', null, `Anomalies (${list.length})`),
      list.length ? [t.wrap, explain] : h('span', { class: 'muted' }, 'No anomalies attached.'));
  }

  // ---------------------------------------------------------------- generic tables

  // Column order for objects whose fields are not fixed (dead letters, SQL rows):
  // the preferred keys first, then the rest in first-seen order.
  function columnsOf(rows, preferred = []) {
    const seen = new Set();
    for (const r of rows) for (const k of Object.keys(r)) seen.add(k);
    return [...preferred.filter((k) => seen.has(k)), ...[...seen].filter((k) => !preferred.includes(k))];
  }

  // Dead letters carry the refused payload base64-encoded; show it as text.
  function rawPreview(b64) {
    try {
      const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
      return new TextDecoder('utf-8', { fatal: false }).decode(bytes);
    } catch {
      return b64;
    }
  }

  function genericCell(key, v) {
    const text = key === 'raw' && typeof v === 'string' ? rawPreview(v) : fmtField(key, v);
    const shortText = text.length > 160 ? `${text.slice(0, 160)}…` : text;
    const isTime = /_ms$|_at$/.test(key);
    return h('td', { class: typeof v === 'number' && !isTime ? 'num' : 'cell', title: text.length > 40 ? text : null }, shortText);
  }

  // ---------------------------------------------------------------- dead letters + gaps

  async function pageDeadLetters(root, _r, page) {
    const statsBox = h('div');
    const itemsBox = h('div', null, h('span', { class: 'muted' }, 'Loading…'));
    const gapsBox = h('div', null, h('span', { class: 'muted' }, 'Loading…'));
    root.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Dead letters'), h('span', { class: 'spacer' }),
        h('button', { testid: 'deadletters-refresh', onclick: route }, 'Refresh')),
      h('div', { class: 'panel' }, h('h2', null, 'Statistics'), statsBox),
      h('div', { class: 'panel' }, h('h2', null, 'Most recent (100)'), itemsBox),
      h('div', { class: 'panel' }, h('h2', null, 'Gaps'), gapsBox),
    );

    const gapsSql = 'SELECT * FROM gaps ORDER BY 1 DESC LIMIT 200';
    const [dl, gaps] = await Promise.all([
      api('/api/v1/deadletters?limit=100', { signal: page.signal }).catch((e) => { showError(e); return null; }),
      runSql(gapsSql, page.signal).catch((e) => e),
    ]);
    if (!page.alive) return;

    if (dl) {
      statsBox.replaceChildren(kvTable(dl.stats || {}, 'deadletter-stats'));
      const items = dl.items || [];
      const cols = columnsOf(items, ['id', 'time_ms', 'received_at_ms', 'device', 'device_id', 'reason', 'endpoint', 'topic', 'detail']);
      const t = table(cols, 'deadletters-table');
      t.tbody.append(...items.map((it) => h('tr', { testid: 'deadletter-row' }, cols.map((k) => genericCell(k, it[k])))));
      itemsBox.replaceChildren(items.length ? t.wrap : h('span', { class: 'muted' }, 'No dead letters.'));
    } else {
      itemsBox.replaceChildren(h('span', { class: 'muted' }, 'Failed to load.'));
    }

    if (gaps instanceof Error) {
      gapsBox.replaceChildren(h('div', { class: 'error', testid: 'gaps-error' }, `Gaps query failed: ${gaps.message}`));
    } else {
      gapsBox.replaceChildren(resultTable(gaps, 'gaps-table', 'gap-row'), sqlButton(gapsSql, 'Open in SQL console'));
    }
  }

  function kvTable(obj, testid) {
    const entries = Object.entries(obj);
    if (!entries.length) return h('span', { class: 'muted' }, 'Nothing reported.');
    return h('div', { class: 'table-wrap' }, h('table', { class: 'kv', testid },
      h('tbody', null, entries.map(([k, v]) => h('tr', null, h('th', null, k), h('td', null, fmtField(k, v)))))));
  }

  // ---------------------------------------------------------------- SQL console

  const MAX_RENDERED_ROWS = 2000;
  const isTimeType = (c) => /timestamp|date/i.test(c.type || '');
  const isNumType = (c) => /^(u?int|float|decimal|double)/i.test(c.type || '');
  const isStrType = (c) => /utf8|string|dictionary/i.test(c.type || '');

  // Renders a /query JSON result: {columns:[{name,type}], rows:[{...}], row_count}.
  function resultTable(res, testid, rowTestid) {
    const cols = (res.columns || []).map((c) => c.name);
    const names = cols.length ? cols : columnsOf(res.rows || []);
    const t = table(names, testid);
    const numeric = new Set((res.columns || []).filter(isNumType).map((c) => c.name));
    t.el.querySelectorAll('th').forEach((th, i) => th.classList.toggle('num', numeric.has(names[i])));
    const rows = (res.rows || []).slice(0, MAX_RENDERED_ROWS);
    t.tbody.append(...rows.map((r) => h('tr', { testid: rowTestid }, names.map((k) => genericCell(k, r[k])))));
    if (!rows.length) t.tbody.append(h('tr', null, h('td', { colspan: names.length || 1, class: 'muted' }, 'No rows.')));
    return t.wrap;
  }

  // A chart for results with a time column and a numeric column. A low-cardinality
  // text column (device_id, metric...) splits the first numeric column into one
  // series per value; otherwise every numeric column is its own series.
  function sqlChartData(res) {
    const cols = res.columns || [];
    const tcol = cols.find(isTimeType);
    const nums = cols.filter((c) => c !== tcol && isNumType(c));
    if (!tcol || !nums.length) return null;
    const rows = (res.rows || []).map((r) => ({ r, t: parseTs(r[tcol.name]) })).filter((x) => Number.isFinite(x.t));
    if (rows.length < 2) return null;
    const xs = [...new Set(rows.map((x) => x.t))].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    let series;
    const scol = cols.find(isStrType);
    const groups = scol ? [...new Set(rows.map((x) => x.r[scol.name]))] : [];
    if (scol && groups.length > 1 && groups.length <= 12) {
      series = groups.map((g) => ({ label: `${g}`, pick: (r) => (r[scol.name] === g ? r[nums[0].name] : undefined) }));
    } else {
      series = nums.slice(0, 8).map((c) => ({ label: c.name, pick: (r) => r[c.name] }));
    }
    const data = [xs, ...series.map(() => new Array(xs.length).fill(null))];
    for (const { r, t } of rows) {
      series.forEach((s, i) => {
        const v = s.pick(r);
        if (typeof v === 'number') data[i + 1][index.get(t)] = v;
      });
    }
    return { labels: series.map((s) => s.label), data };
  }

  function pageSql(root, r, page) {
    const initial = r.query.get('q') || localStorage.getItem(SQL_KEY) ||
      'SELECT device_id, count(*) AS n FROM readings GROUP BY device_id ORDER BY n DESC';
    const input = h('textarea', { class: 'sql-input', testid: 'sql-input', spellcheck: 'false', value: initial, 'aria-label': 'SQL' });
    const run = h('button', { class: 'primary', testid: 'sql-run' }, 'Run');
    const status = h('span', { class: 'muted', testid: 'sql-count' });
    const chartBox = h('div');
    const resultBox = h('div', { class: 'panel' }, h('span', { class: 'muted' }, 'Run a query to see rows.'));
    const examples = [
      ['Readings per device', 'SELECT device_id, count(*) AS n FROM readings GROUP BY device_id ORDER BY n DESC'],
      ['Latest anomalies', 'SELECT ts, device_id, metric, kind, score, value, expected_lo, expected_hi FROM anomalies ORDER BY ts DESC LIMIT 100'],
      ['Hourly averages', 'SELECT * FROM rollup_1h ORDER BY 1 DESC LIMIT 200'],
      ['Gaps', 'SELECT * FROM gaps ORDER BY 1 DESC LIMIT 200'],
    ];
    root.append(
      h('div', { class: 'page-head' }, h('h1', null, 'SQL console'), h('span', { class: 'spacer' }),
        h('div', { class: 'toolbar' }, examples.map(([label, sql], i) => h('button', {
          class: 'small', testid: `sql-example-${i}`, onclick: () => { input.value = sql; input.focus(); },
        }, label)))),
      h('div', { class: 'panel' }, input,
        h('div', { class: 'toolbar', style: 'margin-top:6px' }, run, status,
          h('span', { class: 'hint' }, 'Ctrl+Enter runs. Tables: readings, anomalies, deadletters, rollup_1m, rollup_1h, gaps.'))),
      chartBox, resultBox,
    );

    let chart = null;
    async function execute() {
      const sql = input.value.trim();
      if (!sql) return;
      localStorage.setItem(SQL_KEY, sql);
      run.disabled = true;
      status.textContent = 'Running…';
      const t0 = performance.now();
      try {
        const res = await runSql(sql, page.signal);
        if (!page.alive) return;
        clearError();
        const n = res.row_count ?? (res.rows || []).length;
        const shown = Math.min((res.rows || []).length, MAX_RENDERED_ROWS);
        status.textContent = `${fmtNum(n)} rows in ${Math.round(performance.now() - t0)} ms${shown < n ? ` (showing ${fmtNum(shown)})` : ''}`;
        resultBox.replaceChildren(resultTable(res, 'sql-result', 'sql-row'));
        page.dropChart(chart);
        chart = null;
        chartBox.replaceChildren();
        const cd = sqlChartData(res);
        if (cd) {
          const el = h('div', { class: 'chart', testid: 'sql-chart' });
          chartBox.append(h('div', { class: 'panel' }, el));
          chart = page.chart(el, {
            height: 260,
            scales: { x: { time: true } },
            series: [{}, ...cd.labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true }))],
            axes: axesStyle(),
          }, cd.data);
        }
      } catch (e) {
        status.textContent = 'Failed.';
        showError(e);
      } finally {
        run.disabled = false;
      }
    }
    run.addEventListener('click', execute);
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); execute(); }
    });
    if (r.query.get('run') === '1') execute();
  }

  // ---------------------------------------------------------------- health page

  // Counters to derive the ingest rate from, first match wins (the status layout
  // has moved fields into sections over time; older servers report at the top level).
  const RATE_COUNTERS = ['ingest.readings_accepted', 'ingest.readings_written', 'readings_written', 'ingest.messages_written', 'messages_written'];
  const RATE_HISTORY = 150; // 5 minutes at one poll every 2 s

  const pick = (obj, path) => path.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
  const isPlainObject = (v) => v && typeof v === 'object' && !Array.isArray(v);

  function pageHealth(root, _r, page) {
    const kpis = h('div', { class: 'stats' });
    const rateEl = h('div', { class: 'chart', testid: 'health-rate-chart' });
    const sections = h('div', { class: 'grid-2', style: 'grid-template-columns:repeat(auto-fill,minmax(320px,1fr))' });
    const updated = h('span', { class: 'live', testid: 'live-indicator' }, 'live data');
    root.append(
      h('div', { class: 'page-head' }, h('h1', null, 'Health'), h('span', { class: 'spacer' }), updated),
      kpis,
      h('div', { class: 'panel' }, h('h2', null, 'Ingest rate (per second)'), rateEl),
      sections,
    );

    let prev = null; // {t, flat} of the previous poll, for per-second deltas
    const rates = [[], []];
    let rateChart = null;

    const kpi = (testid, label, value, sub, level) => h('div', { class: `stat ${level || ''}`, testid },
      h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), sub ? h('div', { class: 'sub' }, sub) : null);

    page.poll(async () => {
      const s = await api('/api/v1/status', { signal: page.signal });
      const t = Date.now();
      const flat = flatten(s);
      const delta = (key) => {
        if (!prev || !(key in prev.flat) || typeof flat[key] !== 'number') return null;
        return ((flat[key] - prev.flat[key]) * 1000) / (t - prev.t);
      };

      const counter = RATE_COUNTERS.find((k) => typeof flat[k] === 'number');
      const rate = counter ? delta(counter) : null;
      if (rate != null) {
        rates[0].push(t);
        rates[1].push(rate);
        if (rates[0].length > RATE_HISTORY) { rates[0].shift(); rates[1].shift(); }
      }

      const consumers = Array.isArray(s.consumers) ? s.consumers : [];
      const lags = consumers.map((c) => c.lag_records).filter((v) => typeof v === 'number');
      const walNext = pick(s, 'wal.next_seq');
      const lakeSeq = pick(s, 'lake.committed_wal_seq');
      const maxLag = lags.length ? Math.max(...lags) : (typeof walNext === 'number' && typeof lakeSeq === 'number' ? Math.max(0, walNext - 1 - lakeSeq) : null);
      const flushMs = pick(s, 'lake.last_flush_unix_ms');
      const fresh = typeof flushMs === 'number' && flushMs > 0 ? serverNow() - flushMs : null;
      const detPos = pick(s, 'detect.checkpointed_wal_seq');
      const outbox = pick(s, 'cases.outbox_pending');

      kpis.replaceChildren(
        kpi('health-ingest-rate', 'Ingest rate', rate == null ? '…' : `${fmtNum(Math.round(rate * 10) / 10)}/s`, counter || 'no counter reported'),
        kpi('health-wal-lag', 'WAL lag (max consumer)', maxLag == null ? '—' : fmtNum(maxLag), 'records behind the WAL head', maxLag > 10000 ? 'warn' : ''),
        kpi('health-lake-freshness', 'Lake freshness', fresh == null ? 'never' : fmtDuration(fresh),
          fresh == null ? 'no flush yet' : `last flush ${fmtTime(flushMs)}`, fresh == null || fresh > 120e3 ? 'warn' : ''),
        kpi('health-detect-position', 'Detector position', detPos == null ? '—' : fmtNum(detPos),
          typeof detPos === 'number' && typeof walNext === 'number' ? `${fmtNum(Math.max(0, walNext - 1 - detPos))} behind WAL head` : 'checkpointed WAL seq'),
        kpi('health-outbox', 'Notification backlog', outbox == null ? '—' : fmtNum(outbox), 'cases outbox pending', outbox > 100 ? 'warn' : ''),
      );

      if (rates[0].length >= 2) {
        if (!rateChart) {
          rateEl.replaceChildren();
          rateChart = page.chart(rateEl, {
            height: 140,
            // A fixed five-minute window, so the axis does not rescale as history fills.
            scales: { x: { time: true, range: (u, lo, hi) => [hi - RATE_HISTORY * HEALTH_REFRESH_MS, hi] }, y: { range: (u, lo, hi) => [0, Number.isFinite(hi) ? Math.max(1, hi * 1.1) : 1] } },
            series: [{}, { label: 'readings/s', stroke: cssVar('--chart-avg'), width: 1.5 }],
            axes: axesStyle(),
          }, rates);
        } else {
          rateChart.setData(rates);
        }
      } else if (!rateChart) {
        rateEl.replaceChildren(h('div', { class: 'empty' }, 'Measuring… (needs two polls)'));
      }

      sections.replaceChildren(...statusSections(s, delta, consumers));
      prev = { t, flat };
      updated.textContent = `live data · updated ${fmtTime(t).slice(11)}`;
    }, HEALTH_REFRESH_MS);
  }

  // {"a":{"b":1}} → {"a.b":1}; arrays are left out (consumers get their own table).
  function flatten(obj, prefix = '', out = {}) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (isPlainObject(v)) flatten(v, key, out);
      else if (!Array.isArray(v)) out[key] = v;
    }
    return out;
  }

  // One panel per section of /status, whatever sections the server reports, with a
  // per-second change column for counters that moved since the last poll.
  function statusSections(s, delta, consumers) {
    const panels = [];
    if (consumers.length) {
      const max = Math.max(1, ...consumers.map((c) => c.lag_records || 0));
      const t = table(['Consumer', 'Position', 'Lag (records)', ''], 'health-consumers');
      t.tbody.append(...consumers.map((c) => h('tr', { testid: 'consumer-row' },
        h('td', null, c.name), h('td', { class: 'num' }, fmtNum(c.position)), h('td', { class: 'num' }, fmtNum(c.lag_records)),
        h('td', null, h('div', { class: 'bar' }, h('span', { style: `width:${(100 * (c.lag_records || 0)) / max}%` }))))));
      panels.push(h('div', { class: 'panel' }, h('h2', null, 'WAL consumers'), t.wrap));
    }
    const top = Object.entries(s).filter(([, v]) => !isPlainObject(v) && !Array.isArray(v));
    const groups = [['server', top, ''], ...Object.entries(s).filter(([, v]) => isPlainObject(v)).map(([k, v]) => [k, Object.entries(flatten(v)), `${k}.`])];
    for (const [name, entries, prefix] of groups) {
      if (!entries.length) continue;
      panels.push(h('div', { class: 'panel', testid: `health-section-${name}` }, h('h2', null, name),
        h('table', { class: 'kv' }, h('tbody', null, entries.map(([k, v]) => {
          // Epoch-ms fields move with the clock; their "rate" would mean nothing.
          const d = /_ms$|_at$/.test(k) ? null : delta(prefix + k);
          return h('tr', null, h('th', null, k), h('td', null, fmtField(k, v)),
            h('td', { class: 'muted num' }, d ? `${d > 0 ? '+' : ''}${fmtNum(Math.round(d * 10) / 10)}/s` : ''));
        })))));
    }
    return panels;
  }

  // ---------------------------------------------------------------- header + boot

  async function refreshWhoami() {
    const el = $('whoami');
    role = null;
    delete el.dataset.role;
    if (!token) {
      el.textContent = 'no token';
      return;
    }
    try {
      const w = await api('/api/v1/whoami');
      el.replaceChildren(h('b', null, w.user), ` · ${w.role}`);
      el.dataset.role = w.role;
      role = w.role;
    } catch (e) {
      el.textContent = e.status === 401 ? 'token rejected' : 'whoami failed';
    }
  }

  function boot() {
    // A token handed over in the link (#token=...) is kept and then removed from the
    // address bar, so it does not linger in history or get shared with a screenshot.
    const m = /(?:^#|[?&])token=([^&]*)/.exec(location.hash);
    if (m) {
      token = decodeURIComponent(m[1]);
      localStorage.setItem(TOKEN_KEY, token);
      history.replaceState(null, '', `${location.pathname}${location.search}#/fleet`);
    }
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('token-input');
      token = input.value.trim();
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
      input.value = '';
      refreshWhoami().then(route);
    });
    $('error-close').addEventListener('click', () => clearError());
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 150);
    });
    window.addEventListener('hashchange', route);
    if (!location.hash || location.hash === '#' || location.hash === '#/') history.replaceState(null, '', '#/fleet');
    // whoami first: pages use the role for hints (it never rejects).
    refreshWhoami().then(route);
  }

  boot();
})();
