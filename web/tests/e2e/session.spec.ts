import { test, expect } from '@playwright/test'
import { check, email, login, mailedLink, registered } from './helpers'

test('a reload and a second tab keep the session (HttpOnly cookie); logout ends it everywhere', async ({ page, request }, info) => {
  const address = email('reload', info)
  await registered(request, address, 'Rémi')
  await login(page, address)

  // A reload: the access token was in memory only; the cookie brings the session back.
  await page.goto('/account')
  await expect(page).toHaveURL(/\/account$/)
  await expect(page.getByTestId('sessions')).toContainText('cette session')
  await check(page, 'account-after-reload', info)

  // Scripts cannot read the refresh token; the browser holds it HttpOnly, SameSite=Strict.
  expect(await page.evaluate(() => document.cookie)).toBe('')
  const cookies = await page.context().cookies()
  const refresh = cookies.find((c) => c.name === '__Host-arosaje_refresh')
  expect(refresh?.httpOnly).toBe(true)
  expect(refresh?.secure).toBe(true)
  expect(refresh?.sameSite).toBe('Strict')
  expect(refresh?.path).toBe('/')

  // A second tab of the same browser is signed in too, and both tabs keep working: their
  // refreshes take turns (a token presented twice would revoke the session).
  const tab = await page.context().newPage()
  await tab.goto('/plants')
  await expect(tab).toHaveURL(/\/plants$/)
  await expect(tab.getByRole('link', { name: 'Mon compte' })).toBeVisible()
  await tab.reload()
  await expect(tab.getByRole('link', { name: 'Mon compte' })).toBeVisible()
  await page.reload()
  await expect(page.getByTestId('sessions')).toContainText('cette session')
  await expect(tab).toHaveURL(/\/plants$/)
  await expect(tab.getByRole('link', { name: 'Mon compte' })).toBeVisible()

  // Logging out clears the cookie: a reload of either tab asks to log in again.
  await page.getByRole('button', { name: 'Se déconnecter' }).click()
  await expect(page).toHaveURL(/\/login/)
  expect((await page.context().cookies()).some((c) => c.name === '__Host-arosaje_refresh')).toBe(false)
  await tab.goto('/plants')
  await expect(tab).toHaveURL(/\/login\?next=/)
})

test('the verification link opened in the tab that shows the page already verifies the address', async ({ page, request }, info) => {
  const address = email('same-tab', info)
  const r = await request.post('/api/auth/register', { data: { email: address, password: 'Monstera-en-vacances-e2e', display_name: 'Tab' } })
  expect(r.status()).toBe(201)
  await page.goto('/verify-email')
  await expect(page.getByRole('alert')).toHaveText('Ce lien ne contient pas de jeton.')
  // Only the fragment changes: the page is not loaded again, it must still take the token.
  const link = new URL(await mailedLink(address, 'verify-email'))
  await page.goto(`/verify-email${link.hash}`)
  await expect(page.getByText('Adresse confirmée')).toBeVisible()
  expect(page.url()).not.toContain('token=')
  await login(page, address)
})
