// Debian's Chromium (never a downloaded browser), headless, in a fresh profile, at a laptop's
// viewport (the caller removes `profile` when done): the one launch the dashboard checks and the device-page benchmark share.
import { chromium } from 'playwright-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// `extraArgs`: e.g. `--ignore-certificate-errors-spki-list=HASH`, which makes Chromium trust one
// server key (the HTTPS check pins the test server's key that way, not a blanket "ignore errors").
export async function launch(extraArgs = []) {
  const profile = await mkdtemp(path.join(tmpdir(), 'edgepipe-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', ...extraArgs],
    viewport: { width: 1366, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  return { context, page, profile };
}
