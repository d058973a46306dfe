import { describe, it, expect, beforeEach, vi } from 'vitest'
import { setTokens, accessToken, refresh, restore, isExpired, setRefreshCall } from '~/api/session'

const pair = (n: number) => ({ access_token: `a${n}`, refresh_token: `r${n}`, expires_in: 900 })

describe('session tokens', () => {
  beforeEach(() => setTokens(null))

  it('keeps tokens in memory only: storage holds a flag, no token', () => {
    setTokens(pair(1))
    expect(accessToken()).toBe('a1')
    expect(Object.keys(localStorage)).toEqual(['arosaje.session'])
    expect(localStorage.getItem('arosaje.session')).toBe('1')
    expect(sessionStorage.length).toBe(0)
    expect(document.cookie).toBe('')
    setTokens(null)
    expect(localStorage.length).toBe(0)
  })

  it('restores from the cookie after a reload only when a session may exist', async () => {
    const call = vi.fn(async (token: string | null) => (token === null ? pair(5) : null))
    setRefreshCall(call)
    expect(await restore()).toBe(false)
    expect(call).not.toHaveBeenCalled()
    localStorage.setItem('arosaje.session', '1')
    expect(await restore()).toBe(true)
    expect(call).toHaveBeenCalledWith(null)
    expect(accessToken()).toBe('a5')
  })

  it('forgets the flag when the cookie is refused', async () => {
    setRefreshCall(async () => null)
    localStorage.setItem('arosaje.session', '1')
    expect(await restore()).toBe(false)
    expect(localStorage.getItem('arosaje.session')).toBeNull()
  })

  it('knows when the access token has expired', () => {
    setTokens(pair(1), 1_000)
    expect(isExpired(1_000 + 899_000)).toBe(false)
    expect(isExpired(1_000 + 900_000)).toBe(true)
  })

  it('refreshes once for concurrent callers and rotates the pair', async () => {
    const call = vi.fn(async (token: string | null) => (token === 'r1' ? pair(2) : null))
    setRefreshCall(call)
    setTokens(pair(1))
    const [a, b] = await Promise.all([refresh(), refresh()])
    expect(a && b).toBe(true)
    expect(call).toHaveBeenCalledTimes(1)
    expect(call).toHaveBeenCalledWith('r1')
    expect(accessToken()).toBe('a2')
  })

  it('signs out when the refresh token is refused', async () => {
    setRefreshCall(async () => null)
    setTokens(pair(1))
    expect(await refresh()).toBe(false)
    expect(accessToken()).toBeNull()
  })
})
