// JavaScript per route of the built app (`npm run generate` first), gzipped: the entry with
// its static imports, the route's page chunk with its own, and the default locale's messages.
// Fails when the landing route passes its budget (150 KB gzipped).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { pathToFileURL } from 'node:url'

const web = new URL('..', import.meta.url)
const manifestUrl = new URL('node_modules/.cache/nuxt/.nuxt/dist/server/client.manifest.mjs', web)
const manifest = (await import(pathToFileURL(manifestUrl.pathname).href)).default
const budget = Number(process.env.LANDING_BUDGET_KB ?? 150) * 1024

const gz = new Map()
function size(file) {
  if (!gz.has(file)) gz.set(file, gzipSync(readFileSync(new URL(`.output/public/_nuxt/${file}`, web)), { level: 9 }).length)
  return gz.get(file)
}
function closure(key, seen = new Set()) {
  const chunk = manifest[key]
  if (!chunk || seen.has(key)) return seen
  seen.add(key)
  for (const dep of chunk.imports ?? []) closure(dep, seen)
  return seen
}
const entry = Object.keys(manifest).find((k) => manifest[k].isEntry)
const locale = Object.keys(manifest).find((k) => k.endsWith('locales/fr.json'))
const rows = []
for (const page of Object.keys(manifest).filter((k) => k.startsWith('pages/')).sort()) {
  const keys = new Set([...closure(entry), ...closure(page), ...closure(locale)])
  const files = [...keys].map((k) => manifest[k].file).filter((f) => f.endsWith('.js'))
  const bytes = files.reduce((sum, f) => sum + size(f), 0)
  rows.push({ route: page, js_gzip_kb: Math.round(bytes / 102.4) / 10, files: files.length })
}
console.table(rows)
mkdirSync(new URL('test-results/', web), { recursive: true })
writeFileSync(new URL('test-results/bundle-sizes.json', web), JSON.stringify(rows, null, 2))
const landing = rows.find((r) => r.route === 'pages/index.vue')
if (!landing) throw new Error('no landing page in the manifest')
if (landing.js_gzip_kb * 1024 > budget) {
  console.error(`landing route: ${landing.js_gzip_kb} KB gzipped, over the ${budget / 1024} KB budget`)
  process.exit(1)
}
console.log(`landing route: ${landing.js_gzip_kb} KB of JavaScript gzipped (budget ${budget / 1024} KB)`)
