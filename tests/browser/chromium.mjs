// Debian's Chromium (never a downloaded browser), headless, in a fresh profile, at a laptop's
// viewport (the caller removes `profile` when done): the one launch the dashboard checks and the device-page benchmark share.
import { chromium } from 'playwright-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function launch() {
  const profile = await mkdtemp(path.join(tmpdir(), 'edgepipe-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1366, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  return { context, page, profile };
}
