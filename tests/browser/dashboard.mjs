// End-to-end checks of the edgepipe dashboard in Debian's Chromium (never a downloaded
// browser). Needs a running server with data:
//   EDGEPIPE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=... VIEWER_TOKEN=... \
//   ANOMALY_DEVICE=dev-001 SCREENSHOT_DIR=/tmp/shots node dashboard.mjs
// Prints one line per check and exits 0 only if every check passed.
import { mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launch } from './chromium.mjs';

const BASE = (process.env.EDGEPIPE_URL || '').replace(/\/+$/, '');
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || '';
const VIEWER_TOKEN = process.env.VIEWER_TOKEN || '';
const ANOMALY_DEVICE = process.env.ANOMALY_DEVICE || '';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(tmpdir(), 'edgepipe-screenshots');
const TIMEOUT_MS = 20_000;

if (!BASE || !ADMIN_TOKEN || !VIEWER_TOKEN) {
  console.error('set EDGEPIPE_URL, ADMIN_TOKEN and VIEWER_TOKEN (and ANOMALY_DEVICE, SCREENSHOT_DIR)');
  process.exit(2);
}

// The API as seen from Node, independent of the page, to verify what the UI did.
async function api(pathname, tok = ADMIN_TOKEN) {
  const res = await fetch(BASE + pathname, { headers: { Authorization: `Bearer ${tok}` } });
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`GET ${pathname}: ${res.status} ${body ? body.message : ''}`);
  return body;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const testid = (id) => `[data-testid="${id}"]`;

async function main() {
  await mkdir(SHOTS, { recursive: true });
  const { context, page, profile } = await launch();
  page.setDefaultTimeout(TIMEOUT_MS);

  // Uncaught exceptions in the page fail the check during which they happened.
  let pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  const results = [];
  async function check(name, fn) {
    pageErrors = [];
    let error = null;
    try {
      await fn();
      if (pageErrors.length) throw new Error(`JS error in page: ${pageErrors.join(' | ')}`);
    } catch (e) {
      error = e;
    }
    const shot = path.join(SHOTS, `${name.split(')')[0]}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    const oneLine = (s) => String(s).split('\n')[0];
    console.log(error ? `FAIL ${name}: ${oneLine(error.message)}` : `ok ${name}`);
    results.push(!error);
  }

  // Rows' data attributes carry the raw numbers, so "live" is judged on values.
  const fleetSnapshot = () => page.$$eval(testid('device-row'), (rows) => rows.map((r) => [
    r.dataset.device, Number(r.dataset.lastSeen), Number(r.dataset.readings)]));

  // Opens a case page and waits until its state is rendered.
  async function openCase(id) {
    await page.goto(`${BASE}/#/case/${id}`);
    await page.waitForSelector(testid('case-state'));
  }

  await check('a) fleet lists devices and updates live', async () => {
    await page.goto(`${BASE}/#token=${encodeURIComponent(ADMIN_TOKEN)}`);
    await page.waitForSelector(testid('device-row'));
    if (page.url().includes('token=')) throw new Error('token was left in the URL');
    const before = await fleetSnapshot();
    await sleep(6500);
    const after = await fleetSnapshot();
    const prev = new Map(before.map(([d, seen, n]) => [d, { seen, n }]));
    const changed = after.some(([d, seen, n]) => prev.has(d) && (seen !== prev.get(d).seen || n > prev.get(d).n));
    if (!changed) throw new Error(`no device's last-seen or reading count changed in 6.5 s (${before.length} rows)`);
  });

  await check('b) device chart renders with anomaly markers', async () => {
    if (!ANOMALY_DEVICE) throw new Error('ANOMALY_DEVICE is not set');
    await page.goto(`${BASE}/#/device/${encodeURIComponent(ANOMALY_DEVICE)}`);
    await page.waitForSelector('[data-testid^="chart-"] canvas').catch(() => {
      throw new Error(`no chart canvas on the page of ${ANOMALY_DEVICE}`);
    });
    // Widen the window step by step in case the device's anomalies are older than 1 h.
    const count = async () => Number(await page.textContent(testid('anomaly-marker-count')));
    let n = 0;
    for (const range of ['1h', '24h', '7d']) {
      await page.click(testid(`range-${range}`));
      const deadline = Date.now() + 8000;
      while ((n = await count()) < 1 && Date.now() < deadline) await sleep(250);
      if (n >= 1) break;
    }
    if (n < 1) throw new Error(`anomaly-marker-count is ${n} for ${ANOMALY_DEVICE} even over 7d`);
  });

  // A case that is open now (for c), and one that is not resolved (for e).
  let ackedId = null;
  await check('c) acknowledging a case in the UI is stored by the server', async () => {
    const open = await api('/api/v1/cases?state=open&limit=50');
    if (!open.cases.length) throw new Error('the server has no open case to acknowledge');
    const id = open.cases[0].id;
    await page.goto(`${BASE}/#/cases`);
    await page.waitForSelector(testid('case-row'));
    await openCase(id);
    await page.click(testid('action-acknowledge'));
    await page.waitForFunction((sel) => document.querySelector(sel)?.textContent === 'acknowledged', testid('case-state'));
    const c = await api(`/api/v1/cases/${id}`);
    if (c.state !== 'acknowledged') throw new Error(`API says case ${id} is ${c.state}`);
    ackedId = id;
  });

  await check('d) SQL console returns rows', async () => {
    await page.goto(`${BASE}/#/sql`);
    await page.fill(testid('sql-input'), 'SELECT device_id, count(*) AS n FROM readings GROUP BY device_id');
    await page.click(testid('sql-run'));
    await page.waitForSelector(`${testid('sql-result')} ${testid('sql-row')}`);
    const n = await page.locator(testid('sql-row')).count();
    if (n < 1) throw new Error('no rows');
  });

  await check('e) a viewer cannot resolve a case (403 banner)', async () => {
    let id = ackedId;
    if (id == null) {
      const active = await api('/api/v1/cases?state=open,acknowledged,investigating&limit=1');
      if (!active.cases.length) throw new Error('the server has no unresolved case');
      id = active.cases[0].id;
    }
    // Switch to the viewer through the header's token box, as a person would.
    await page.goto(`${BASE}/#/fleet`);
    await page.fill(testid('token-input'), VIEWER_TOKEN);
    await page.click(testid('token-save'));
    await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.role === 'viewer', testid('whoami'))
      .catch(async () => {
        throw new Error(`header does not show role viewer for VIEWER_TOKEN (shows "${await page.textContent(testid('whoami'))}")`);
      });
    await openCase(id);
    const [res] = await Promise.all([
      page.waitForResponse((r) => r.url().includes(`/api/v1/cases/${id}/actions`)),
      page.click(testid('action-resolve')),
    ]);
    if (res.status() !== 403) throw new Error(`resolve answered ${res.status()}, not 403`);
    const banner = page.locator(testid('error'));
    await banner.waitFor({ state: 'visible' });
    const text = (await banner.textContent()) || '';
    if (!text.trim()) throw new Error('error banner is empty');
    const c = await api(`/api/v1/cases/${id}`);
    if (c.state === 'resolved' || c.state === 'false_positive') throw new Error(`case ${id} became ${c.state}`);
  });

  await context.close();
  await rm(profile, { recursive: true, force: true });
  const passed = results.filter(Boolean).length;
  console.log(`screenshots in ${SHOTS}`);
  console.log(`${passed} passed, ${results.length - passed} failed`);
  return passed === results.length;
}

main().then((ok) => process.exit(ok ? 0 : 1), (e) => {
  console.error(`FAIL setup: ${e.message}`);
  process.exit(1);
});
