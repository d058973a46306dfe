import { test, expect } from '@playwright/test'
import { check, email, login, person, registered, visit } from './helpers'

const admin = { email: process.env.E2E_ADMIN_EMAIL ?? 'admin@e2e.arosaje.test', password: process.env.E2E_ADMIN_PASSWORD ?? '' }

test('admin verifies a botanist and makes an auditor; the botanist advises; the auditor reads the log', async ({ browser, request }, info) => {
  test.setTimeout(240_000)
  // Set-up through the API: an owner with a plant in an open sitting (the botanists' queue).
  const owner = await registered(request, email('owner', info), 'Chloé')
  const auth = { authorization: `Bearer ${owner.token}` }
  const plant = await (await request.post('/api/plants', { headers: auth, data: { name: `Ficus ${info.project.name} ${Date.now()}`, care: {} } })).json()
  const today = new Date().toISOString().slice(0, 10)
  const later = new Date(Date.now() + 5 * 86400_000).toISOString().slice(0, 10)
  const sitting = await request.post('/api/sittings', { headers: auth, data: { plant_ids: [plant.id], starts_on: today, ends_on: later, location: { lat: 45.76, lon: 4.84, city: 'Lyon' } } })
  expect(sitting.status(), await sitting.text()).toBe(201)
  const botanistEmail = email('botanist', info)
  await registered(request, botanistEmail, 'Élise', true)
  const auditorEmail = email('auditor', info)
  await registered(request, auditorEmail, 'Paul')

  // Admin: approves the botanist, makes Paul an auditor.
  const adminPage = await person(browser, info)
  await login(adminPage, admin.email, admin.password)
  await adminPage.getByRole('link', { name: 'Administration' }).click()
  const pending = adminPage.getByTestId('verifications').locator('li', { hasText: botanistEmail })
  await pending.getByRole('button', { name: 'Approuver' }).click()
  await expect(pending).toHaveCount(0)
  await expect(adminPage.getByTestId('stats')).toContainText('users')
  await adminPage.getByLabel('Rechercher').first().fill('Paul')
  await adminPage.getByRole('search').getByRole('button', { name: 'Rechercher' }).click()
  const paul = adminPage.getByTestId('users').locator('li', { hasText: auditorEmail })
  await paul.getByLabel('Rôle').selectOption('AUDITOR')
  await paul.getByRole('button', { name: 'Changer le rôle' }).click()
  await expect(adminPage.getByTestId('users').locator('li', { hasText: auditorEmail })).toContainText('AUDITOR')
  await check(adminPage, 'admin', info)

  // Botanist: the queue, an advice, a new version, its versions.
  const bot = await person(browser, info)
  await login(bot, botanistEmail)
  await bot.getByRole('link', { name: 'Botaniste' }).click()
  await check(bot, 'botanist-queue', info)
  await bot.getByTestId('queue').getByRole('button', { name: plant.name }).click()
  await expect(bot.getByText('Pas encore de conseil.')).toBeVisible()
  await bot.getByRole('textbox', { name: 'Conseil', exact: true }).fill('Arroser quand la terre est sèche sur 2 cm.')
  await bot.getByLabel('Priorité').selectOption('urgent')
  await bot.getByRole('button', { name: 'Donner un conseil' }).click()
  await expect(bot.getByTestId('advice')).toContainText('terre est sèche')
  await bot.getByTestId('advice').getByLabel('Nouvelle version').fill('Arroser quand la terre est sèche sur 3 cm.')
  await bot.getByTestId('advice').getByRole('button', { name: 'Nouvelle version' }).click()
  await expect(bot.getByTestId('advice')).toContainText('3 cm')
  await bot.getByRole('button', { name: 'Versions' }).click()
  await expect(bot.getByTestId('advice').locator('ol li')).toHaveCount(2)
  await check(bot, 'botanist-advice', info)

  // Auditor: the log, then the plant's state at a time.
  const aud = await person(browser, info)
  await login(aud, auditorEmail)
  await aud.getByRole('link', { name: 'Audit' }).click()
  await expect(aud.getByTestId('events').locator('li').first()).toBeVisible()
  await aud.getByLabel("Type d'agrégat").fill('Plant')
  await aud.getByLabel('Identifiant').fill(plant.id)
  await aud.getByRole('button', { name: 'Afficher' }).first().click()
  await expect(aud.getByTestId('events')).toContainText('PlantCreated')
  await aud.getByRole('button', { name: 'Afficher' }).last().click()
  await expect(aud.getByTestId('state')).toContainText(plant.name)
  await check(aud, 'audit', info)
  await visit(aud, '/account')
})
