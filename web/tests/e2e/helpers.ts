import { readFileSync, mkdirSync, writeFileSync } from 'node:fs'
import { createHmac } from 'node:crypto'
import { expect, type Browser, type Page, type TestInfo, type APIRequestContext } from '@playwright/test'
import AxeBuilder from '@axe-core/playwright'

export const PASSWORD = 'Monstera-en-vacances-e2e'
export const results = new URL('../../test-results/', import.meta.url).pathname

/** A fresh address per run and project. */
export function email(who: string, info: TestInfo) {
  return `${who}-${info.project.name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}@e2e.arosaje.test`
}

/** The link of the last mail to `to` in the API's log (development mode prints mails). */
export async function mailedLink(to: string, path: string): Promise<string> {
  const log = process.env.E2E_API_LOG
  if (!log) throw new Error('E2E_API_LOG is not set')
  const deadline = Date.now() + 20_000
  const pattern = new RegExp(`https?://[^\\s"]+/${path}#token=[A-Za-z0-9._~%-]+`, 'g')
  while (Date.now() < deadline) {
    const text = readFileSync(log, 'utf8')
    const at = text.lastIndexOf(to)
    if (at >= 0) {
      const links = text.slice(at).match(pattern)
      if (links?.length) return links[0]!
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`no ${path} mail to ${to}`)
}

/** Axe on the page as it is: no serious or critical violation. Then a screenshot. */
export async function check(page: Page, name: string, info: TestInfo) {
  await page.waitForLoadState('networkidle').catch(() => {})
  const scan = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze()
  const bad = scan.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
  expect(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`), `axe on ${name}`).toEqual([])
  mkdirSync(`${results}screens`, { recursive: true })
  await page.screenshot({ path: `${results}screens/${info.project.name}-${name}.png`, fullPage: true })
}

/** Registers through the API and opens the mailed link (quick set-up for other journeys). */
export async function registered(request: APIRequestContext, address: string, name: string, botanist = false) {
  const r = await request.post('/api/auth/register', { data: { email: address, password: PASSWORD, display_name: name, botanist } })
  expect(r.status(), await r.text()).toBe(201)
  const link = await mailedLink(address, 'verify-email')
  const token = new URL(link).hash.replace('#token=', '')
  const v = await request.post('/api/auth/verify-email', { data: { token } })
  expect(v.status()).toBe(204)
  const login = await request.post('/api/auth/login', { data: { email: address, password: PASSWORD } })
  expect(login.status()).toBe(200)
  const body = await login.json()
  return { token: body.access_token as string, id: body.user.id as string }
}

/** Logs in through the page. */
export async function login(page: Page, address: string, password = PASSWORD) {
  await page.goto('/login')
  await page.getByLabel('Adresse e-mail').fill(address)
  await page.getByLabel('Mot de passe', { exact: true }).fill(password)
  await page.getByRole('button', { name: 'Connexion' }).click()
  await expect(page).toHaveURL(/\/sittings/)
}

/** A TOTP code (RFC 6238, SHA-1, 6 digits, 30 s) for a base32 secret. */
export function totp(secret: string, now = Date.now()): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'
  let bits = ''
  for (const c of secret.replace(/=+$/, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0')
  const key = Buffer.from(bits.match(/.{8}/g)!.map((b) => parseInt(b, 2)))
  const counter = Buffer.alloc(8)
  counter.writeBigUInt64BE(BigInt(Math.floor(now / 30_000)))
  const h = createHmac('sha1', key).update(counter).digest()
  const o = h[h.length - 1]! & 0xf
  const code = ((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).toString().padStart(6, '0')
  return code
}

export function writeResult(name: string, value: unknown) {
  mkdirSync(results, { recursive: true })
  writeFileSync(`${results}${name}.json`, JSON.stringify(value, null, 2))
}

export const photo = new URL('../../public/icon-512.png', import.meta.url).pathname

/**
 * Goes to a route inside the running app (as a click on a link does). `page.goto` would load
 * the page anew, which then first restores its session from the cookie (one more request).
 */
export async function visit(page: Page, path: string) {
  await page.evaluate(async (p) => {
    type App = { config: { globalProperties: { $router: { push: (to: string) => Promise<unknown> } } } }
    const app = (document.querySelector('#__nuxt') as unknown as { __vue_app__: App }).__vue_app__
    const router = app.config.globalProperties.$router
    // The same route again: leave it first, so that its page loads afresh.
    if (location.pathname + location.search === p) await router.push('/')
    await router.push(p)
  }, path)
  await expect(page).toHaveURL(new RegExp(`${path.replace(/[?]/g, '\\?')}$`))
}

/** A page in a browser context of its own (another person), sized like the project's. */
export async function person(browser: Browser, info: TestInfo): Promise<Page> {
  const use = info.project.use
  const context = await browser.newContext({
    baseURL: use.baseURL, locale: 'fr-FR', viewport: use.viewport ?? null,
    isMobile: use.isMobile, hasTouch: use.hasTouch,
  })
  return context.newPage()
}
