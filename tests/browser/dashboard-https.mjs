// The dashboard over HTTPS in Chromium: the page, its scripts and its API calls all come over
// TLS from the server's own certificate, which Chromium trusts by its key (SPKI pin) only.
//   EDGEPIPE_URL=https://localhost:8443 ADMIN_TOKEN=... SPKI_SHA256=base64 node dashboard-https.mjs
import { launch } from './chromium.mjs';
import { rm } from 'node:fs/promises';

const BASE = (process.env.EDGEPIPE_URL || '').replace(/\/+$/, '');
const { ADMIN_TOKEN, SPKI_SHA256 } = process.env;
if (!BASE.startsWith('https://') || !ADMIN_TOKEN || !SPKI_SHA256) {
  console.error('set EDGEPIPE_URL (https://...), ADMIN_TOKEN and SPKI_SHA256');
  process.exit(2);
}

const { context, page, profile } = await launch([`--ignore-certificate-errors-spki-list=${SPKI_SHA256}`]);
let failed = false;
try {
  const insecure = [];
  page.on('request', (r) => { if (!r.url().startsWith('https://') && !r.url().startsWith('data:')) insecure.push(r.url()); });
  const resp = await page.goto(`${BASE}/#token=${encodeURIComponent(ADMIN_TOKEN)}`);
  if (!resp || resp.status() !== 200) throw new Error(`dashboard answered ${resp && resp.status()}`);
  const tls = await resp.securityDetails();
  if (!tls) throw new Error('no TLS security details: the page did not come over TLS');
  await page.waitForSelector('[data-testid="device-row"]', { timeout: 20000 });
  const devices = await page.$$eval('[data-testid="device-row"]', (rows) => rows.map((r) => r.dataset.device));
  if (insecure.length) throw new Error(`requests not over https: ${insecure.join(', ')}`);
  console.log(`ok dashboard over ${tls.protocol} (${tls.subjectName}), fleet rows: ${devices.join(" ")}`);
} catch (e) {
  failed = true;
  console.log(`FAIL dashboard over HTTPS: ${String(e.message).split('\n')[0]}`);
} finally {
  await context.close();
  await rm(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
