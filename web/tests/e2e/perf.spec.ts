import { test, expect, type Page } from '@playwright/test'
import { email, login, registered, visit, writeResult } from './helpers'

/** Milliseconds from navigation start until `ready` holds, as the page's own clock says. */
async function readyAt(page: Page, ready: () => Promise<void>) {
  await ready()
  return page.evaluate(() => Math.round(performance.now()))
}

test('time to interactive of the landing and sittings pages, CPU x1 and x4', async ({ page, request }, info) => {
  const user = email('perf', info)
  await registered(request, user, 'Perf')
  const cdp = await page.context().newCDPSession(page)
  const numbers: Record<string, number> = {}
  for (const rate of [1, 4]) {
    await cdp.send('Emulation.setCPUThrottlingRate', { rate })
    await page.goto('/', { waitUntil: 'commit' })
    numbers[`landing_x${rate}_ms`] = await readyAt(page, async () => {
      await expect(page.getByRole('link', { name: 'Voir les gardes près de moi' })).toBeEnabled()
    })
    const nav = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming
      return { domInteractive: Math.round(n.domInteractive), load: Math.round(n.loadEventEnd) }
    })
    numbers[`landing_x${rate}_dom_interactive_ms`] = nav.domInteractive
    await login(page, user)
    // The sittings page inside the running app: from the route change to a usable search.
    await visit(page, '/plants')
    const start = await page.evaluate(() => performance.now())
    await visit(page, '/sittings')
    const end = await readyAt(page, async () => {
      await expect(page.getByRole('button', { name: 'Chercher' })).toBeEnabled()
      await expect(page.getByText('Chargement…')).toHaveCount(0)
    })
    numbers[`sittings_x${rate}_ms`] = Math.round(end - start)
  }
  await cdp.send('Emulation.setCPUThrottlingRate', { rate: 1 })
  writeResult(`tti-${info.project.name}`, numbers)
})
