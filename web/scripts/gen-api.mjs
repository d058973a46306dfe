// Regenerates app/api/schema.d.ts from the API's OpenAPI document, obtained the way
// scripts/check-client.sh does: `arosaje openapi` (no database needed). OPENAPI_JSON=<file>
// uses a document at hand instead; AROSAJE_BIN=<path> a built binary instead of `cargo run`.
import { execFileSync } from 'node:child_process'
import { writeFileSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const web = fileURLToPath(new URL('..', import.meta.url))
const root = fileURLToPath(new URL('../..', import.meta.url))
let document
if (process.env.OPENAPI_JSON) {
  document = readFileSync(process.env.OPENAPI_JSON, 'utf8')
} else if (process.env.AROSAJE_BIN) {
  document = execFileSync(process.env.AROSAJE_BIN, ['openapi'], { encoding: 'utf8' })
} else {
  document = execFileSync('cargo', ['run', '--quiet', '--locked', '--', 'openapi'], {
    cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20,
  })
}
JSON.parse(document)
writeFileSync(`${web}openapi.json`, document)
execFileSync('npx', ['openapi-typescript', 'openapi.json', '-o', 'app/api/schema.d.ts'], {
  cwd: web, stdio: 'inherit',
})
