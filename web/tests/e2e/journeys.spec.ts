import { test, expect } from '@playwright/test'
import { PASSWORD, check, email, login, mailedLink, person, photo, registered, totp, visit, writeResult } from './helpers'

test('landing: installable PWA (manifest, service worker), in French and English', async ({ page }, info) => {
  await page.goto('/')
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Vos plantes entre de bonnes mains')
  const manifest = await page.evaluate(async () => {
    const link = document.querySelector('link[rel=manifest]') as HTMLLinkElement | null
    return link ? (await fetch(link.href)).json() : null
  })
  expect(manifest?.name).toBe("A'rosa-je")
  expect(manifest?.icons?.length).toBeGreaterThan(0)
  const scope = await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.ready
    return registration.active ? registration.scope : null
  })
  expect(scope).toMatch(/\/$/)
  await check(page, 'landing', info)
  await page.getByLabel('Langue').selectOption('en')
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Your plants in good hands')
  await expect(page.locator('html')).toHaveAttribute('lang', 'en')
})

test('keyboard only: skip link and visible focus', async ({ page }, info) => {
  test.skip(info.project.name === 'phone', 'a touch screen has no Tab key; the desktop run covers the keyboard')
  await page.goto('/')
  // The app renders in the browser: Tab only once the page is there (else focus starts nowhere).
  const skip = page.getByRole('link', { name: 'Aller au contenu' })
  await expect(page.getByRole('heading', { level: 1 })).toBeVisible()
  await skip.waitFor({ state: 'attached' })
  await page.keyboard.press('Tab')
  await expect(skip).toBeFocused()
  const outline = await skip.evaluate((el) => getComputedStyle(el).outlineStyle)
  expect(outline).not.toBe('none')
  await page.keyboard.press('Enter')
  await expect(page.locator('#main')).toBeFocused()
})

test('account: register, verify by the mailed link, TOTP with recovery codes, sessions, password change', async ({ page, browser }, info) => {
  const address = email('ana', info)
  await page.goto('/register')
  await check(page, 'register', info)
  await page.getByLabel('Nom affiché').fill('Ana')
  await page.getByLabel('Adresse e-mail').fill(address)
  await page.getByLabel('Mot de passe').fill(PASSWORD)
  await page.getByRole('button', { name: 'Créer un compte' }).last().click()
  await expect(page.getByRole('status')).toContainText('Compte créé')

  // The mailed link opens the app, which confirms the address.
  await page.goto(await mailedLink(address, 'verify-email'))
  await expect(page.getByText('Adresse confirmée')).toBeVisible()
  expect(page.url()).not.toContain('token=')
  await check(page, 'verify-email', info)

  // A wrong password is said in words.
  await page.goto('/login')
  await page.getByLabel('Adresse e-mail').fill(address)
  await page.getByLabel('Mot de passe', { exact: true }).fill('not the password')
  await page.getByRole('button', { name: 'Connexion' }).click()
  await expect(page.getByRole('alert')).toHaveText('Adresse ou mot de passe incorrect.')
  await check(page, 'login-error', info)

  await login(page, address)
  await page.getByRole('link', { name: 'Mon compte' }).click()
  await expect(page.getByTestId('sessions')).toContainText('cette session')
  // No token in any storage a script can read (localStorage holds one flag, "1").
  const stored = await page.evaluate(() => [JSON.stringify(localStorage), sessionStorage.length, document.cookie])
  expect(stored).toEqual([JSON.stringify({ 'arosaje.session': '1' }), 0, ''])

  // TOTP: enrol with the password, confirm with a code, keep the recovery codes.
  await page.locator('input[name=mfa_password]').fill(PASSWORD)
  await page.getByRole('button', { name: 'Activer' }).click()
  const secret = (await page.getByTestId('totp-secret').textContent())!.trim()
  await page.getByLabel('Code').fill(totp(secret))
  await page.getByRole('button', { name: 'Confirmer' }).click()
  const codes = (await page.getByTestId('recovery-codes').textContent())!.trim().split('\n')
  expect(codes.length).toBeGreaterThan(4)
  await check(page, 'account', info)

  // Another session, opened with a recovery code; then "log out everywhere else".
  const page2 = await person(browser, info)
  await page2.goto('/login')
  await page2.getByLabel('Adresse e-mail').fill(address)
  await page2.getByLabel('Mot de passe', { exact: true }).fill(PASSWORD)
  await page2.getByRole('button', { name: 'Connexion' }).click()
  await expect(page2.getByText('Ce compte est protégé')).toBeVisible()
  await page2.getByLabel('Code à deux facteurs').fill(codes[0]!)
  await page2.getByRole('button', { name: 'Connexion' }).click()
  await expect(page2).toHaveURL(/\/sittings/)
  await visit(page, '/account')
  await expect(page.getByTestId('sessions').locator('li')).toHaveCount(2)
  await page.getByRole('button', { name: 'Déconnecter toutes les autres sessions' }).click()
  await expect(page.getByText('Les autres sessions sont fermées.')).toBeVisible()
  await expect(page.getByTestId('sessions').locator('li')).toHaveCount(1)
  await page2.context().close()

  // Password change.
  await page.getByLabel('Mot de passe actuel').first().fill(PASSWORD)
  await page.getByLabel('Nouveau mot de passe').fill(`${PASSWORD}-2`)
  await page.getByRole('button', { name: 'Enregistrer' }).nth(1).click()
  await expect(page.getByText('Mot de passe changé')).toBeVisible()
})

test('owner and sitter: plant with photo, sitting on a map, apply, accept, start, report with photos, live message', async ({ browser }, info) => {
  test.setTimeout(300_000)
  const owner = await person(browser, info)
  const sitter = await person(browser, info)
  const ownerEmail = email('owner', info)
  const sitterEmail = email('sitter', info)
  await registered(owner.request, ownerEmail, 'Camille')
  await registered(sitter.request, sitterEmail, 'Hugo')

  await login(owner, ownerEmail)
  await visit(owner, '/plants')
  await expect(owner.getByText('Aucune plante')).toBeVisible()
  await check(owner, 'plants-empty', info)
  await owner.getByLabel('Nom', { exact: true }).fill('Monstera')
  await owner.getByLabel('Espèce').fill('Monstera deliciosa')
  await owner.getByLabel('Arrosage tous les (jours)').fill('7')
  await owner.getByRole('button', { name: 'Ajouter une plante' }).last().click()
  await expect(owner.getByTestId('plants')).toContainText('Monstera')
  await owner.getByLabel('Ajouter une photo').setInputFiles(photo)
  await owner.getByTestId('plants').getByRole('button', { name: 'Envoyer' }).click()
  await expect(owner.getByTestId('plants').locator('img')).toHaveCount(1)
  await check(owner, 'plants', info)

  await visit(owner, '/sittings/new')
  await owner.getByLabel('Monstera').check()
  await owner.getByLabel('Lieu (ville)').fill('Paris')
  await owner.locator('.map').click({ position: { x: 100, y: 100 } })
  await owner.getByLabel('Latitude').fill('48.8566')
  await owner.getByLabel('Longitude').fill('2.3522')
  await owner.getByLabel('Consignes').fill('Clé chez la gardienne, code 1234')
  await check(owner, 'sitting-new', info)
  await owner.getByRole('button', { name: 'Demander une garde' }).click()
  await expect(owner).toHaveURL(/\/sittings\/[0-9a-f-]{36}$/)
  const sittingPath = new URL(owner.url()).pathname
  await expect(owner.getByTestId('status')).toHaveText('ouverte')
  await expect(owner.getByText('Clé chez la gardienne')).toBeVisible()

  // The sitter finds it near Paris, without the owner's instructions, and applies.
  await login(sitter, sitterEmail)
  await sitter.getByLabel('Lieu (ville)').fill('Paris')
  await sitter.getByRole('button', { name: 'Chercher' }).click()
  await expect(sitter.getByTestId('near').getByRole('link').first()).toBeVisible()
  await check(sitter, 'sittings-near', info)
  await visit(sitter, sittingPath)
  await expect(sitter.getByText('Clé chez la gardienne')).toHaveCount(0)
  await sitter.getByLabel('Message au propriétaire').fill('Avec plaisir !')
  await sitter.getByRole('button', { name: 'Proposer mes services' }).click()
  await expect(sitter.getByText('Candidature envoyée.')).toBeVisible()
  await check(sitter, 'sitting-applied', info)
  await visit(sitter, '/sittings')
  await sitter.getByRole('tab', { name: 'Mes candidatures' }).click()
  await expect(sitter.getByTestId('applications')).toContainText('Paris')

  await visit(owner, sittingPath)
  await expect(owner.getByTestId('applicants')).toContainText('Hugo')
  await check(owner, 'sitting-applicants', info)
  await owner.getByRole('button', { name: 'Accepter Hugo' }).click()
  await expect(owner.getByTestId('status')).toHaveText('acceptée')
  await owner.getByRole('button', { name: 'Commencer la garde' }).click()
  await expect(owner.getByTestId('status')).toHaveText('en cours')

  // The accepted sitter now sees the home, and reports with before/after photos.
  await visit(sitter, sittingPath)
  await expect(sitter.getByText('Clé chez la gardienne')).toBeVisible()
  await sitter.getByLabel('Note').fill('Arrosée, feuilles dépoussiérées')
  await sitter.getByLabel('Photo avant').setInputFiles(photo)
  await sitter.getByLabel('Photo après').setInputFiles(photo)
  await sitter.getByRole('button', { name: 'Envoyer un compte rendu' }).click()
  await expect(sitter.getByText('Compte rendu envoyé.')).toBeVisible()
  await check(sitter, 'sitting-report', info)

  await visit(owner, sittingPath)
  await expect(owner.getByTestId('reports')).toContainText('Arrosée')
  await expect(owner.getByTestId('reports').locator('img')).toHaveCount(2)

  // Messages: the owner writes to the sitter; it appears live on the sitter's page.
  await owner.getByRole('button', { name: 'Écrire' }).click()
  await expect(owner).toHaveURL(/\/messages\?c=/)
  await visit(sitter, '/messages')
  await expect(sitter.getByTestId('live-state')).toHaveText('En direct')
  await sitter.getByTestId('conversations').getByRole('button', { name: 'Camille' }).click()
  await expect(owner.getByTestId('live-state')).toHaveText('En direct')
  await check(sitter, 'messages', info)
  await owner.getByLabel('Votre message').pressSequentially('Merci Hugo')
  await expect(sitter.getByTestId('typing')).toHaveText('Camille écrit…')
  const text = `Tout va bien ? ${Date.now()}`
  await owner.getByLabel('Votre message').fill(text)
  const sentAt = Date.now()
  await owner.getByLabel('Votre message').press('Enter')
  await expect(sitter.getByTestId('thread')).toContainText(text, { timeout: 10_000 })
  const delay = Date.now() - sentAt
  writeResult(`message-delay-${info.project.name}`, { delay_ms: delay, note: 'from pressing Enter in one browser context to the text shown in the other' })
  await check(owner, 'messages-owner', info)

  // The sitter answers; the owner sees it live; the sitter finds it by search.
  await sitter.getByLabel('Votre message').fill('Oui, tout pousse !')
  await sitter.getByLabel('Votre message').press('Enter')
  await expect(owner.getByTestId('thread')).toContainText('Oui, tout pousse !')
  await sitter.getByLabel('Chercher dans mes messages').fill('pousse')
  await sitter.getByRole('button', { name: 'Rechercher' }).click()
  await expect(sitter.getByTestId('search-results')).toContainText('tout pousse')

  await owner.context().close()
  await sitter.context().close()
})
