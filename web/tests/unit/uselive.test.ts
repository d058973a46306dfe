import { describe, it, expect, vi } from 'vitest'

vi.mock('~/api/client', () => ({ api: { POST: vi.fn() }, ok: vi.fn() }))

import { useLive } from '~/composables/useLive'
import { setTokens } from '~/api/session'

describe('the live connection and the session', () => {
  it('closes when the session ends, and a later use opens a new one', () => {
    vi.spyOn(console, 'warn').mockImplementation(() => {})
    setTokens({ access_token: 'a', refresh_token: 'r', expires_in: 900 })
    const { live } = useLive()
    const stop = vi.spyOn(live, 'stop')
    expect(useLive().live).toBe(live)
    setTokens(null)
    expect(stop).toHaveBeenCalledTimes(1)
    expect(useLive().live).not.toBe(live)
  })
})
