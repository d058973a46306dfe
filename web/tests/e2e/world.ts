// Set-up through the API for the journeys whose subject is elsewhere: people, plants, sittings
// in the state a test starts from. What a test is about goes through the pages.
import { expect, type APIRequestContext, type TestInfo } from '@playwright/test'
import { PASSWORD, email, registered } from './helpers'

export const admin = {
  email: process.env.E2E_ADMIN_EMAIL ?? 'admin@e2e.arosaje.test',
  password: process.env.E2E_ADMIN_PASSWORD ?? '',
}

/** Someone with a verified address, signed in through the API. */
export interface Person {
  email: string
  id: string
  token: string
}

export async function someone(request: APIRequestContext, who: string, name: string, info: TestInfo, botanist = false): Promise<Person> {
  const address = email(who, info)
  const { token, id } = await registered(request, address, name, botanist)
  return { email: address, id, token }
}

/** A call as `who`; fails the test unless the status is `status`. */
export async function call(request: APIRequestContext, who: { token: string }, method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, data?: unknown, status?: number) {
  const r = await request.fetch(path, { method, headers: { authorization: `Bearer ${who.token}` }, data })
  const body = await r.text()
  if (status !== undefined) expect(r.status(), `${method} ${path}: ${body}`).toBe(status)
  else expect(r.ok(), `${method} ${path}: ${body}`).toBe(true)
  return body ? JSON.parse(body) : null
}

export async function plant(request: APIRequestContext, owner: Person, name: string): Promise<{ id: string; name: string }> {
  return call(request, owner, 'POST', '/api/plants', { name, care: { watering_interval_days: 5 } }, 201)
}

const day = (offset: number) => new Date(Date.now() + offset * 86400_000).toISOString().slice(0, 10)

/** An open sitting of `plants` from today, for `days` days, in Lyon. */
export async function sitting(request: APIRequestContext, owner: Person, plantIds: string[], instructions?: string, days = 4): Promise<string> {
  const created = await call(request, owner, 'POST', '/api/sittings', {
    plant_ids: plantIds, starts_on: day(0), ends_on: day(days),
    location: { lat: 45.764, lon: 4.8357, city: 'Lyon' }, instructions,
  }, 201)
  return created.id as string
}

export async function apply(request: APIRequestContext, sitter: Person, sittingId: string) {
  await call(request, sitter, 'POST', `/api/sittings/${sittingId}/applications`, { message: 'Avec plaisir' }, 201)
}

export async function accept(request: APIRequestContext, owner: Person, sittingId: string, sitter: Person) {
  await call(request, owner, 'POST', `/api/sittings/${sittingId}/accept`, { sitter_id: sitter.id }, 200)
}

/** The test run's administrator, signed in through the API (ADMIN_MFA=optional in the e2e run). */
export async function adminSession(request: APIRequestContext): Promise<Person> {
  const r = await request.post('/api/auth/login', { data: { email: admin.email, password: admin.password } })
  expect(r.status(), await r.text()).toBe(200)
  const body = await r.json()
  return { email: admin.email, id: body.user.id, token: body.access_token }
}

/** A botanist: registered asking for the role, approved by the administrator. */
export async function botanist(request: APIRequestContext, name: string, info: TestInfo): Promise<Person> {
  const b = await someone(request, 'botanist', name, info, true)
  const a = await adminSession(request)
  await call(request, a, 'POST', `/api/admin/verifications/${b.id}/approve`)
  // Signed in again: the role is in the new token.
  const r = await request.post('/api/auth/login', { data: { email: b.email, password: PASSWORD } })
  expect(r.status()).toBe(200)
  const body = await r.json()
  expect(body.user.role).toBe('BOTANIST')
  return { ...b, token: body.access_token }
}
