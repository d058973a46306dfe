// The signed-in session. Tokens live in this module's memory only: never in localStorage,
// sessionStorage, cookies or reactive state (so no devtools or persisted store sees them).
// A reload forgets them; the user signs in again. The access token is renewed with the refresh
// token before it expires and after a 401 `token_expired` (each refresh token works once).

export interface Tokens {
  access_token: string
  refresh_token: string
  expires_in: number
}

let tokens: Tokens | null = null
let expiresAt = 0
let refreshing: Promise<boolean> | null = null
let timer: ReturnType<typeof setTimeout> | null = null
const listeners = new Set<(signedIn: boolean) => void>()

/** Where refreshes go; replaced in unit tests. */
export let refreshCall = async (refreshToken: string): Promise<Tokens | null> => {
  const response = await fetch('/api/auth/refresh', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: refreshToken }),
  })
  return response.ok ? ((await response.json()) as Tokens) : null
}
export function setRefreshCall(call: typeof refreshCall) {
  refreshCall = call
}

export function onSessionChange(listener: (signedIn: boolean) => void) {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

export function setTokens(next: Tokens | null, now = Date.now()) {
  tokens = next
  expiresAt = next ? now + next.expires_in * 1000 : 0
  if (timer) clearTimeout(timer)
  timer = null
  if (next && typeof window !== 'undefined') {
    // Renew a minute before expiry (or halfway through a very short lifetime).
    const lead = Math.min(60, next.expires_in / 2) * 1000
    timer = setTimeout(() => void refresh(), Math.max(1000, next.expires_in * 1000 - lead))
  }
  for (const listener of listeners) listener(next !== null)
}

export function accessToken(): string | null {
  return tokens?.access_token ?? null
}

export function isExpired(now = Date.now()): boolean {
  return tokens !== null && now >= expiresAt
}

/** Renews the pair; concurrent callers share one request. False: signed out. */
export function refresh(): Promise<boolean> {
  if (!tokens) return Promise.resolve(false)
  if (!refreshing) {
    const current = tokens.refresh_token
    refreshing = refreshCall(current)
      .then((pair) => {
        setTokens(pair)
        return pair !== null
      })
      .catch(() => false)
      .finally(() => {
        refreshing = null
      })
  }
  return refreshing
}
