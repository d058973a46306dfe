import { api, ok } from '~/api/client'
import { setTokens, onSessionChange, accessToken } from '~/api/session'
import type { components } from '~/api/schema'

export type Me = components['schemas']['UserView']

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
  return { user, ready, role, login, loadMe, logout, forget }
}

/** Clears the profile when the session ends (a failed refresh). */
export function watchSession() {
  const { user } = useAuth()
  onSessionChange((signedIn) => {
    if (!signedIn) user.value = null
  })
}
