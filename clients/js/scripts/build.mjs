// `npm run build` (and `prepack`): what the published package carries
// besides src/: TypeScript declarations generated from the JSDoc of src/
// (types/), the self-contained browser bundle for pages without a bundler
// (dist/venta-realtime.browser.js: every transport and MessagePack in one
// ES module), and a copy of the repository's LICENSE.

import { execFileSync } from 'node:child_process';
import { copyFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);

rmSync(join(here, 'types'), { recursive: true, force: true });
rmSync(join(here, 'dist'), { recursive: true, force: true });

// tsc from the package's own devDependencies, with the package's tsconfig
// (checkJs, strict): a type error fails the build.
execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', join(here, 'tsconfig.json')], {
  stdio: 'inherit',
});

await build({
  entryPoints: [join(here, 'src/index.js')],
  outfile: join(here, 'dist/venta-realtime.browser.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  legalComments: 'eof',
  logLevel: 'warning',
});

// npm packs the LICENSE of the package folder; the repository keeps one.
copyFileSync(join(here, '../../LICENSE'), join(here, 'LICENSE'));
// stderr: `npm pack --json` prints its JSON on stdout.
console.error('built types/, dist/venta-realtime.browser.js, LICENSE');
