import { api, ok } from '~/api/client'
import { setTokens, onSessionChange, accessToken, restore as restoreTokens } from '~/api/session'
import type { components } from '~/api/schema'

export type Me = components['schemas']['UserView']

let restoring: Promise<void> | null = null

/** Who is signed in (the profile only: tokens stay in api/session.ts). */
export function useAuth() {
  const user = useState<Me | null>('user', () => null)
  const ready = useState<boolean>('auth-ready', () => false)

  async function login(email: string, password: string, totpCode?: string) {
    const pair = await ok(api.POST('/api/auth/login', {
      body: { email, password, totp_code: totpCode || undefined },
    }))
    setTokens(pair)
    await loadMe()
  }

  async function loadMe() {
    user.value = accessToken() ? await ok(api.GET('/api/me')) : null
    ready.value = true
  }

  /** Once per page load: the session of the HttpOnly cookie, if any (a reload, a new tab). */
  function restore(): Promise<void> {
    restoring ??= (async () => {
      try {
        if (!user.value && (await restoreTokens())) await loadMe()
      } catch {
        // A request cut short (the page reloading, the network gone) says nothing of the
        // session: keep the flag the other tabs share, so the next load tries again.
        user.value = null
      } finally {
        ready.value = true
      }
    })()
    return restoring
  }

  async function logout() {
    try {
      await api.POST('/api/auth/logout')
    } finally {
      setTokens(null)
      user.value = null
    }
  }

  function forget() {
    setTokens(null)
    user.value = null
  }

  const role = computed(() => user.value?.role ?? null)
  return { user, ready, role, login, loadMe, restore, logout, forget }
}

/** Clears the profile when the session ends (a failed refresh). */
export function watchSession() {
  const { user } = useAuth()
  onSessionChange((signedIn) => {
    if (!signedIn) user.value = null
  })
}
