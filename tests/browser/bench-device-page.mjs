// Times the dashboard's device page in Debian's Chromium: from navigation start until every
// metric chart has drawn its buckets (data fetched + rendered). Needs a running server:
//   EDGEPIPE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=... DEVICE=dev-0000 METRICS=5 RUNS=15 \
//   RANGE=7d node bench-device-page.mjs
// Prints one JSON object: every run's milliseconds, median, p90, and the first (cold) load.
import { rm } from 'node:fs/promises';
import { launch } from './chromium.mjs';

const BASE = (process.env.EDGEPIPE_URL || '').replace(/\/+$/, '');
const TOKEN = process.env.ADMIN_TOKEN || '';
const DEVICE = process.env.DEVICE || '';
const METRICS = Number(process.env.METRICS || 5);
const RUNS = Number(process.env.RUNS || 15);
const RANGE = process.env.RANGE || '7d';

if (!BASE || !TOKEN || !DEVICE) {
  console.error('set EDGEPIPE_URL, ADMIN_TOKEN and DEVICE');
  process.exit(2);
}

async function main() {
  const { context, page, profile } = await launch();
  page.setDefaultTimeout(30_000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // The token handed over in the link is kept in the profile's localStorage.
  await page.goto(`${BASE}/#token=${encodeURIComponent(TOKEN)}`);
  await page.waitForSelector('[data-testid="fleet-table"], table', { timeout: 30_000 }).catch(() => {});

  const runs = [];
  let buckets = null;
  let requests = null;
  for (let i = 0; i < RUNS; i++) {
    await page.goto('about:blank');
    await page.goto(`${BASE}/#/device/${encodeURIComponent(DEVICE)}?range=${RANGE}`);
    // Ready when every metric's chart has a canvas and its note says how many buckets it
    // drew (set after the series request returned, right before uPlot renders).
    const handle = await page.waitForFunction((n) => {
      const panels = [...document.querySelectorAll('[data-testid^="chart-"]')];
      if (panels.length < n) return false;
      for (const p of panels) {
        if (!p.querySelector('canvas')) return false;
        const note = p.parentElement.querySelector('h2 span');
        if (!note || !/buckets of/.test(note.textContent)) return false;
      }
      // Where the time went: each request's start and duration (ms since navigation start).
      const requests = performance.getEntriesByType('resource').map((r) => ({
        url: r.name.replace(location.origin, '').slice(0, 60),
        start: Math.round(r.startTime),
        ms: Math.round(r.duration),
      }));
      return { ms: performance.now(), notes: panels.map((p) => p.parentElement.querySelector('h2').textContent), requests };
    }, METRICS, { polling: 'raf', timeout: 30_000 });
    const v = await handle.jsonValue();
    runs.push(v.ms);
    buckets = v.notes;
    requests = v.requests;
  }
  await context.close();
  await rm(profile, { recursive: true, force: true });
  if (errors.length) throw new Error(`JS errors in page: ${errors.join(' | ')}`);
  const sorted = [...runs].slice(1).sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  console.log(JSON.stringify({
    device: DEVICE, range: RANGE, runs_ms: runs.map((x) => Math.round(x)),
    first_ms: Math.round(runs[0]), median_ms: Math.round(q(0.5)), p90_ms: Math.round(q(0.9)),
    max_ms: Math.round(sorted[sorted.length - 1]), charts: buckets, last_run_requests: requests,
  }, null, 1));
}

main().catch((e) => { console.error(e); process.exit(1); });
