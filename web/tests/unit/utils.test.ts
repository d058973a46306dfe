import { describe, it, expect } from 'vitest'
import { parsePlace } from '~/utils/places'
import { tokenFromHash } from '~/utils/fragment'
import { isoDay } from '~/utils/dates'
import { KNOWN_CODES, describeError } from '~/utils/errors'
import { ApiError } from '~/api/client'
import fr from '../../i18n/locales/fr.json'
import en from '../../i18n/locales/en.json'

const keys = (o: object, p = ''): string[] =>
  Object.entries(o).flatMap(([k, v]) => (typeof v === 'object' ? keys(v, `${p}${k}.`) : [`${p}${k}`]))

describe('utilities', () => {
  it('reads a typed place: a known city or coordinates', () => {
    expect(parsePlace(' Lyon ')).toEqual([45.764, 4.8357])
    expect(parsePlace('48.85, 2.35')).toEqual([48.85, 2.35])
    expect(parsePlace('91, 2')).toBeNull()
    expect(parsePlace('Atlantis')).toBeNull()
  })

  it('takes the token from a mailed link fragment', () => {
    expect(tokenFromHash('#token=abc.def')).toBe('abc.def')
    expect(tokenFromHash('#other=1')).toBeNull()
    expect(tokenFromHash('')).toBeNull()
  })

  it('counts days in UTC', () => {
    expect(isoDay(1, new Date('2026-12-31T23:30:00Z'))).toBe('2027-01-01')
  })
})

describe('i18n', () => {
  it('has the same keys in French and English', () => {
    expect(keys(fr).sort()).toEqual(keys(en).sort())
  })

  it('words every known API error code in both languages', () => {
    for (const code of KNOWN_CODES) {
      expect((fr.errors as Record<string, string>)[code], code).toBeTruthy()
      expect((en.errors as Record<string, string>)[code], code).toBeTruthy()
    }
  })

  it('describes an error by its code, its fields and its Retry-After', () => {
    const t = (k: string, v?: Record<string, unknown>) => (k === 'errors.generic' ? `generic ${v?.code}` : k)
    expect(describeError(new ApiError(429, 'export_in_progress', 'x', {}, 30), t)).toBe('errors.export_in_progress (30 s)')
    expect(describeError(new ApiError(422, 'validation_failed', 'x', { email: 'is invalid' }), t))
      .toBe('errors.validation_failed email : is invalid')
    expect(describeError(new ApiError(409, 'brand_new_code', 'x'), t)).toBe('generic brand_new_code')
  })
})
