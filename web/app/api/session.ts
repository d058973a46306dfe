// The signed-in session. The access token lives in this module's memory only: never in
// localStorage, sessionStorage, readable cookies or reactive state (so no devtools or persisted
// store sees it). The refresh token also lives in an HttpOnly cookie the API sets at login
// (`__Host-arosaje_refresh`, SameSite=Strict), which no script can read: after a reload,
// `restore()` asks `POST /api/auth/refresh` with `{}` and the cookie brings the session back.
// localStorage keeps one flag, `arosaje.session` = "1", that says a cookie may exist (no secret
// in it), so an anonymous visitor's pages make no pointless request.
// The access token is renewed before it expires and after a 401 `token_expired`. Each refresh
// token works once, and the tabs of one browser share the cookie: refreshes take a Web Lock, so
// two tabs never present the same token (which the API would take for theft).

export interface Tokens {
  access_token: string
  refresh_token: string
  expires_in: number
}

const HINT = 'arosaje.session'
let tokens: Tokens | null = null
let expiresAt = 0
let refreshing: Promise<boolean> | null = null
let timer: ReturnType<typeof setTimeout> | null = null
const listeners = new Set<(signedIn: boolean) => void>()

async function post(body: object): Promise<Response> {
  return fetch('/api/auth/refresh', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
}

/** Where refreshes go; replaced in unit tests. `null`: the cookie only (a reload). */
export let refreshCall = async (refreshToken: string | null): Promise<Tokens | null> => {
  const run = async () => {
    // The cookie first: another tab may have rotated the pair this tab holds in memory.
    let response = await post({})
    // No cookie (a browser that refused it, e.g. plain http on another host): the memory's.
    if (response.status === 422 && refreshToken) response = await post({ refresh_token: refreshToken })
    return response.ok ? ((await response.json()) as Tokens) : null
  }
  const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined
  return locks ? locks.request('arosaje-refresh', run) : run()
}
export function setRefreshCall(call: typeof refreshCall) {
  refreshCall = call
}

export function onSessionChange(listener: (signedIn: boolean) => void) {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

function hint(on: boolean) {
  try {
    if (on) localStorage.setItem(HINT, '1')
    else localStorage.removeItem(HINT)
  } catch {
    // Storage may be disabled; the session then lasts as long as the page.
  }
}

function hinted(): boolean {
  try {
    return localStorage.getItem(HINT) === '1'
  } catch {
    return false
  }
}

export function setTokens(next: Tokens | null, now = Date.now()) {
  tokens = next
  expiresAt = next ? now + next.expires_in * 1000 : 0
  if (timer) clearTimeout(timer)
  timer = null
  hint(next !== null)
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

function renew(current: string | null): Promise<boolean> {
  if (!refreshing) {
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

/** Renews the pair; concurrent callers share one request. False: signed out. */
export function refresh(): Promise<boolean> {
  if (!tokens) return Promise.resolve(false)
  return renew(tokens.refresh_token)
}

/** After a reload: brings the session back from the cookie, if there may be one. */
export function restore(): Promise<boolean> {
  if (tokens) return Promise.resolve(true)
  if (!hinted()) return Promise.resolve(false)
  return renew(null)
}
