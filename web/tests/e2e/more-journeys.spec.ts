// The journeys journeys.spec.ts and roles.spec.ts leave out: password reset, GDPR, withdrawing
// and cancelling, messages (presence, read marks, search, resume), a second botanist's verdict,
// admin moderation and home view, completion and review. What a test starts from is set up
// through the API (world.ts); what it is about goes through the pages.
import { readFileSync } from 'node:fs'
import { test, expect, type Page, type WebSocketRoute } from '@playwright/test'
import { PASSWORD, check, login, mailedLink, person as browserPerson, visit } from './helpers'
import { accept, admin, adminSession, apply, botanist, call, plant, sitting, someone } from './world'

const bearer = (who: { token: string }) => ({ authorization: `Bearer ${who.token}` })

/** Types and sends a message in the open conversation. */
async function say(page: Page, text: string) {
  await page.getByLabel('Votre message').fill(text)
  await page.getByLabel('Votre message').press('Enter')
  await expect(page.getByTestId('message').filter({ hasText: text })).toHaveCount(1)
}

type Sockets = { page: WebSocketRoute; server: WebSocketRoute }[]

/** Routes the page's live connections through the test, which can then cut them. */
async function cuttable(page: Page): Promise<Sockets> {
  const sockets: Sockets = []
  await page.routeWebSocket(/\/ws\?ticket=/, (ws) => {
    sockets.push({ page: ws, server: ws.connectToServer() })
  })
  return sockets
}

/** A lost connection: the browser offline (no new socket, no ticket), the open socket cut. */
async function cut(page: Page, sockets: Sockets) {
  await page.context().setOffline(true)
  expect(sockets.length).toBeGreaterThan(0)
  for (const socket of sockets.splice(0)) {
    await socket.server.close()
    // Closing the server's side closes the page's too (by default); this makes sure of it.
    await socket.page.close().catch(() => {})
  }
  await expect(page.getByTestId('live-state')).toHaveText('Reconnexion…')
}

/** Back online: the app opens a new socket by itself. */
async function restore(page: Page) {
  await page.context().setOffline(false)
  await expect(page.getByTestId('live-state')).toHaveText('En direct')
}

test('password reset from the login page: mailed link, new password, old sessions ended, new password works', async ({ page, browser, request }, info) => {
  const ana = await someone(request, 'reset', 'Rémi', info)
  const before = await request.post('/api/auth/login', { data: { email: ana.email, password: PASSWORD } })
  const oldRefresh = (await before.json()).refresh_token as string
  // Another browser signed in before the reset.
  const old = await browserPerson(browser, info)
  await login(old, ana.email)

  await page.goto('/login')
  await page.getByRole('link', { name: 'Mot de passe oublié ?' }).click()
  await expect(page).toHaveURL(/\/reset-password$/)
  await check(page, 'reset-request', info)
  await page.getByLabel('Adresse e-mail').fill(ana.email)
  await page.getByRole('button', { name: 'Envoyer' }).click()
  await expect(page.getByRole('status')).toContainText('Si un compte existe pour cette adresse')

  // The mailed link opens the app, which takes the token out of the address bar.
  await page.goto(await mailedLink(ana.email, 'reset-password'))
  await expect(page.getByLabel('Nouveau mot de passe')).toBeVisible()
  expect(page.url()).not.toContain('token=')
  await check(page, 'reset-new-password', info)
  const renewed = `${PASSWORD}-neuf`
  await page.getByLabel('Nouveau mot de passe').fill(renewed)
  await page.getByRole('button', { name: 'Enregistrer' }).click()
  await expect(page.getByRole('status')).toContainText('toutes les sessions ont été fermées')
  await check(page, 'reset-done', info)

  // Every session from before is gone: the API's tokens, and the other browser's session.
  expect((await request.get('/api/me', { headers: bearer(ana) })).status()).toBe(401)
  expect((await request.post('/api/auth/refresh', { data: { refresh_token: oldRefresh } })).status()).toBe(401)
  await old.getByRole('link', { name: 'Mon compte' }).click()
  await expect(old.getByRole('alert').or(old.getByRole('heading', { name: 'Connexion' }))).toBeVisible()
  await expect(old.getByTestId('sessions')).toHaveCount(0)
  await old.context().close()

  // The old password no longer opens the account; the new one does.
  await page.getByRole('link', { name: 'Se connecter' }).first().click()
  await page.getByLabel('Adresse e-mail').fill(ana.email)
  await page.getByLabel('Mot de passe', { exact: true }).fill(PASSWORD)
  await page.getByRole('button', { name: 'Connexion' }).click()
  await expect(page.getByRole('alert')).toHaveText('Adresse ou mot de passe incorrect.')
  await login(page, ana.email, renewed)
})

test('GDPR: my data downloads as JSON naming my plant; deleting my account signs me out for good', async ({ page, request }, info) => {
  const me = await someone(request, 'gdpr', 'Gaëlle', info)
  const fern = await plant(request, me, `Fougère ${info.project.name} ${Date.now()}`)
  await login(page, me.email)
  await visit(page, '/account')

  const download = page.waitForEvent('download')
  await page.getByRole('button', { name: 'Télécharger mes données' }).click()
  const file = await download
  expect(file.suggestedFilename()).toBe('arosaje-export.json')
  const exported = JSON.parse(readFileSync(await file.path(), 'utf8'))
  expect(JSON.stringify(exported)).toContain(fern.name)
  await expect(page.getByText('Export téléchargé.')).toBeVisible()
  await check(page, 'account-export', info)

  // Erasure asks for the word first.
  const erase = page.getByRole('button', { name: 'Supprimer mon compte' })
  await expect(erase).toBeDisabled()
  await page.getByLabel('Tapez SUPPRIMER pour confirmer').fill('SUPPRIMER')
  await erase.click()
  await expect(page).toHaveURL(/\/$/)
  await expect(page.getByText('Compte supprimé.')).toBeVisible()
  await expect(page.getByRole('link', { name: 'Se connecter' })).toBeVisible()
  await expect(page.getByRole('link', { name: 'Mon compte' })).toHaveCount(0)
  await check(page, 'account-erased', info)

  // The account is gone: its session, and logging in again.
  expect((await request.get('/api/me', { headers: bearer(me) })).status()).toBe(401)
  await page.goto('/login')
  await page.getByLabel('Adresse e-mail').fill(me.email)
  await page.getByLabel('Mot de passe', { exact: true }).fill(PASSWORD)
  await page.getByRole('button', { name: 'Connexion' }).click()
  await expect(page.getByRole('alert')).toHaveText('Adresse ou mot de passe incorrect.')
  await expect(page).toHaveURL(/\/login$/)
})

test('sitter withdraws an application; owner cancels the sitting; states in words', async ({ browser, request }, info) => {
  const owner = await someone(request, 'owner', 'Antoine', info)
  const sitter = await someone(request, 'sitter', 'Manon', info)
  const ficus = await plant(request, owner, `Ficus ${Date.now()}`)
  const id = await sitting(request, owner, [ficus.id])

  const s = await browserPerson(browser, info)
  await login(s, sitter.email)
  await visit(s, `/sittings/${id}`)
  await s.getByLabel('Message au propriétaire').fill('Disponible toute la semaine')
  await s.getByRole('button', { name: 'Proposer mes services' }).click()
  await expect(s.getByText('Candidature envoyée.')).toBeVisible()
  await visit(s, '/sittings')
  await s.getByRole('tab', { name: 'Mes candidatures' }).click()
  const application = s.getByTestId('applications').locator('li', { hasText: 'Lyon' })
  await expect(application.locator('.badge')).toHaveText('en attente')
  await check(s, 'applications', info)

  await application.getByRole('link').click()
  await expect(s).toHaveURL(new RegExp(`/sittings/${id}$`))
  await s.getByRole('button', { name: 'Retirer ma candidature' }).click()
  await expect(s.getByText('Candidature retirée.')).toBeVisible()
  await expect(s.getByRole('button', { name: 'Proposer mes services' })).toBeVisible()
  await check(s, 'sitting-withdrawn', info)
  await visit(s, '/sittings')
  await s.getByRole('tab', { name: 'Mes candidatures' }).click()
  await expect(s.getByRole('tabpanel')).toContainText("Rien pour l'instant.")

  // The owner sees nobody left, and cancels with a reason.
  const o = await browserPerson(browser, info)
  await login(o, owner.email)
  await visit(o, `/sittings/${id}`)
  await expect(o.getByTestId('status')).toHaveText('ouverte')
  await expect(o.getByText("Aucun candidat pour l'instant.")).toBeVisible()
  const cancel = o.getByRole('button', { name: 'Annuler la garde' })
  await expect(cancel).toBeDisabled()
  await o.getByLabel("Motif de l'annulation").fill('Voyage reporté')
  await cancel.click()
  await expect(o.getByTestId('status')).toHaveText('annulée')
  await expect(cancel).toHaveCount(0)
  await check(o, 'sitting-cancelled', info)
  await visit(o, '/sittings')
  await o.getByRole('tab', { name: 'Mes gardes' }).click()
  await expect(o.getByTestId('mine').locator('li', { hasText: 'Lyon' }).locator('.badge')).toHaveText('annulée')
  await s.context().close()
  await o.context().close()
})

test('messages: presence once a sitting is accepted, read marks, search, resume after a lost connection', async ({ browser, request }, info) => {
  test.setTimeout(180_000)
  const owner = await someone(request, 'owner', 'Nicolas', info)
  const sitter = await someone(request, 'sitter', 'Léa', info)
  const fern = await plant(request, owner, `Fougère ${Date.now()}`)
  const id = await sitting(request, owner, [fern.id])
  await apply(request, sitter, id)
  const conversation = await call(request, owner, 'POST', '/api/conversations', { participant_ids: [sitter.id] }, 201)
  const thread = `/messages?c=${conversation.id}`

  // The sitter's live connection goes through a route the test can cut.
  const s = await browserPerson(browser, info)
  const sockets = await cuttable(s)
  await login(s, sitter.email)
  await visit(s, thread)
  await expect(s.getByTestId('live-state')).toHaveText('En direct')

  // Presence: hidden while Léa has only applied, shown once Nicolas accepted her.
  const o = await browserPerson(browser, info)
  await login(o, owner.email)
  await visit(o, thread)
  await expect(o.getByTestId('live-state')).toHaveText('En direct')
  const lea = o.getByTestId('conversations').locator('li', { hasText: 'Léa' })
  await expect(lea).toContainText('présence masquée')
  await accept(request, owner, id, sitter)
  await visit(o, thread)
  await expect(lea).toContainText('en ligne')
  await check(o, 'messages-presence', info)

  // Read marks: Léa has the conversation open, so she reads at once; Nicolas sees "Lu".
  const first = `Bonjour, la clé est chez la voisine ${Date.now()}`
  await say(o, first)
  const hers = s.getByTestId('message').filter({ hasText: first })
  await expect(hers).toHaveCount(1)
  await expect(o.getByTestId('message').filter({ hasText: first }).locator('small')).toHaveText(/ · Lu$/)
  await check(o, 'messages-read', info)
  // Her own reading is not shown to her as Nicolas's: Nicolas now types, and that frame comes
  // to her after the read mark's.
  await o.getByLabel('Votre message').pressSequentially('Je repasse', { delay: 300 })
  await expect(s.getByTestId('typing')).toHaveText('Nicolas écrit…')
  await expect(s.getByTestId('message').locator('small').filter({ hasText: /· Lu$/ })).toHaveCount(0)
  await o.getByLabel('Votre message').fill('')
  // Her answer, read by Nicolas: "Lu" on her side.
  await say(s, 'Bien reçu')
  await expect(o.getByTestId('message').filter({ hasText: 'Bien reçu' })).toHaveCount(1)
  await expect(s.getByTestId('message').filter({ hasText: 'Bien reçu' }).locator('small')).toHaveText(/ · Lu$/)

  // Search in her conversations, and nothing found said so.
  await s.getByLabel('Chercher dans mes messages').fill('voisine')
  await s.getByRole('button', { name: 'Rechercher' }).click()
  await expect(s.getByTestId('search-results')).toContainText(first)
  await check(s, 'messages-search', info)
  await s.getByLabel('Chercher dans mes messages').fill('introuvablexyz')
  await s.getByRole('button', { name: 'Rechercher' }).click()
  await expect(s.getByTestId('search-results')).toHaveText("Rien pour l'instant.")

  // The connection is lost (offline, socket cut); Nicolas writes meanwhile.
  await cut(s, sockets)
  await check(s, 'messages-offline', info)
  const meanwhile = `Pendant la coupure ${Date.now()}`
  await say(o, meanwhile)
  await expect(s.getByTestId('message').filter({ hasText: meanwhile })).toHaveCount(0)

  // Back online: the client resumes where it was; the message comes once, nothing is lost.
  await restore(s)
  await expect(s.getByTestId('message').filter({ hasText: meanwhile })).toHaveCount(1)
  const after = `Après la coupure ${Date.now()}`
  await say(o, after)
  // A live frame after the resumed ones: anything resumed twice would have come before it.
  await expect(s.getByTestId('message').filter({ hasText: after })).toHaveCount(1)
  await expect(s.getByTestId('message')).toHaveCount(4)
  await expect(s.getByTestId('message').filter({ hasText: meanwhile })).toHaveCount(1)
  await expect(hers).toHaveCount(1)
  await check(s, 'messages-resumed', info)
  // Her last word, read by Nicolas, so that a page opened now has nothing to mark read.
  await say(s, 'À bientôt')
  await expect(s.getByTestId('message').filter({ hasText: 'À bientôt' }).locator('small')).toHaveText(/ · Lu$/)
  await s.context().close()

  // A page that got no live frame yet (the thread came over REST) loses its connection: it
  // resumes from the thread's newest message, so what came meanwhile is not lost either.
  const s2 = await browserPerson(browser, info)
  const sockets2 = await cuttable(s2)
  await login(s2, sitter.email)
  await visit(s2, thread)
  await expect(s2.getByTestId('live-state')).toHaveText('En direct')
  await expect(s2.getByTestId('message')).toHaveCount(5)
  await cut(s2, sockets2)
  const unseen = `Pendant la deuxième coupure ${Date.now()}`
  await say(o, unseen)
  await restore(s2)
  await expect(s2.getByTestId('message').filter({ hasText: unseen })).toHaveCount(1)
  await expect(s2.getByTestId('message')).toHaveCount(6)
  await s2.context().close()
  await o.context().close()
})

test("botanists: a second botanist finds another's advice, reads its versions, validates it", async ({ page, request }, info) => {
  const owner = await someone(request, 'owner', 'Chloé', info)
  const calathea = await plant(request, owner, `Calathea ${info.project.name} ${Date.now()}`)
  await sitting(request, owner, [calathea.id])
  const elise = await botanist(request, 'Élise', info)
  const advice = await call(request, elise, 'POST', `/api/plants/${calathea.id}/advice`, { body: 'Brumiser chaque matin.' }, 201)
  await call(request, elise, 'PATCH', `/api/advice/${advice.id}`, { body: 'Brumiser chaque matin, sans mouiller les fleurs.' })
  const julien = await botanist(request, 'Julien', info)

  await login(page, julien.email)
  await page.getByRole('link', { name: 'Botaniste' }).click()
  // Advised already: no longer in the queue; found by its name.
  await expect(page.getByText('Chargement…')).toHaveCount(0)
  await expect(page.getByRole('tabpanel')).not.toContainText(calathea.name)
  await page.getByLabel('Chercher une plante').fill(calathea.name)
  await page.getByRole('button', { name: 'Rechercher' }).click()
  await page.getByTestId('found').getByRole('button', { name: calathea.name }).click()
  const item = page.getByTestId('advice').locator(':scope > li', { hasText: 'sans mouiller' })
  await expect(item).toContainText('Élise · v2')
  await expect(item).toContainText('Validation : en attente')
  await item.getByRole('button', { name: 'Versions' }).click()
  await expect(item.locator('ol li')).toHaveText(['v1 — Brumiser chaque matin.', 'v2 — Brumiser chaque matin, sans mouiller les fleurs.'])
  await check(page, 'botanist-peer-review', info)
  await item.getByRole('button', { name: 'Valider' }).click()
  await expect(item).toContainText('Validation : validé')
  await expect(page.getByText('Avis enregistré.')).toBeVisible()

  // The owner reads it validated once.
  const seen = await call(request, owner, 'GET', `/api/plants/${calathea.id}/advice`)
  expect(seen.items[0].validation).toMatchObject({ status: 'validated', validations: 1, rejections: 0 })
})

test("admin: stats, a sitting's home read for a stated reason (recorded), an advice hidden with a reason", async ({ page, request }, info) => {
  const owner = await someone(request, 'owner', 'Camille', info)
  const basil = await plant(request, owner, `Basilic ${Date.now()}`)
  const instructions = `Code 4721, clé sous le pot ${Date.now()}`
  const id = await sitting(request, owner, [basil.id], instructions)
  const elise = await botanist(request, 'Élise', info)
  const advice = await call(request, elise, 'POST', `/api/plants/${basil.id}/advice`, { body: 'Arroser au whisky.' }, 201)
  const boss = await adminSession(request)
  const stats = await call(request, boss, 'GET', '/api/admin/stats')

  await login(page, admin.email, admin.password)
  await page.getByRole('link', { name: 'Administration' }).click()
  await expect(page.getByTestId('stats')).toBeVisible()
  // The counts the API gives (`events`, the log's last position, moves with every access).
  const shown = JSON.parse((await page.getByTestId('stats').textContent())!)
  expect({ ...shown, events: 0 }).toEqual({ ...stats, events: 0 })
  expect(shown.events).toBeGreaterThanOrEqual(stats.events)
  await check(page, 'admin-stats', info)

  // A home's secrets: only with a reason.
  const home = page.getByRole('form', { name: "Voir l'adresse d'une garde" })
  await home.getByLabel('Identifiant de la garde').fill(id)
  const show = home.getByRole('button', { name: 'Afficher' })
  await expect(show).toBeDisabled()
  const reason = `Signalement ${Date.now()} : vérifier l'adresse`
  await home.getByLabel('Motif (obligatoire, enregistré)').fill(reason)
  await show.click()
  await expect(page.getByTestId('home')).toContainText(instructions)
  await expect(page.getByTestId('home')).toContainText('"approximate": false')
  // The look is recorded, with its reason.
  const recorded = await call(request, boss, 'GET', `/api/audit/events?event_type=AccessRecorded&actor_id=${boss.id}&limit=100`)
  expect(JSON.stringify(recorded.items)).toContain(reason)

  // Moderation: the advice is hidden from everyone but admins, with the reason.
  const moderation = page.getByRole('form', { name: 'Masquer un conseil' })
  await moderation.getByLabel('Identifiant du conseil').fill(advice.id)
  await moderation.getByLabel('Motif (obligatoire, enregistré)').fill('Conseil dangereux')
  await moderation.getByRole('button', { name: 'Supprimer' }).click()
  await expect(page.getByText("C'est fait.")).toBeVisible()
  await check(page, 'admin-moderation', info)
  expect((await call(request, owner, 'GET', `/api/plants/${basil.id}/advice`)).items).toEqual([])
  const asAdmin = await call(request, boss, 'GET', `/api/plants/${basil.id}/advice`)
  expect(asAdmin.items[0].moderation.reason).toBe('Conseil dangereux')
})

test('owner completes a running sitting and reviews the sitter', async ({ page, request }, info) => {
  const owner = await someone(request, 'owner', 'Sarah', info)
  const sitter = await someone(request, 'sitter', 'Nathan', info)
  const olive = await plant(request, owner, `Olivier ${Date.now()}`)
  const id = await sitting(request, owner, [olive.id])
  await apply(request, sitter, id)
  await accept(request, owner, id, sitter)
  await call(request, owner, 'POST', `/api/sittings/${id}/start`, {}, 200)

  await login(page, owner.email)
  await visit(page, `/sittings/${id}`)
  await expect(page.getByTestId('status')).toHaveText('en cours')
  await page.getByRole('button', { name: 'Terminer la garde' }).click()
  await expect(page.getByTestId('status')).toHaveText('terminée')
  await expect(page.getByText('Garde terminée.')).toBeVisible()
  await page.getByLabel('Note (1 à 5)').fill('4')
  await page.getByLabel('Commentaire').fill('Plantes en pleine forme')
  await page.getByRole('button', { name: 'Laisser un avis' }).click()
  await expect(page.getByText('Merci pour votre avis.')).toBeVisible()
  await check(page, 'sitting-reviewed', info)

  const profile = await call(request, owner, 'GET', `/api/users/${sitter.id}`)
  expect(profile).toMatchObject({ average_rating: 4, completed_sittings: 1 })
  expect(profile.recent_reviews[0].comment).toBe('Plantes en pleine forme')
  // Once only, said in words.
  await page.getByRole('button', { name: 'Laisser un avis' }).click()
  await expect(page.getByRole('alert')).toHaveText('Vous avez déjà laissé un avis.')
})
