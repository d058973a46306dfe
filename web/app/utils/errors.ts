import { ApiError } from '~/api/client'

/** Every API error code the app words itself (both locales carry each; a unit test checks). */
export const KNOWN_CODES = [
  'network_error', 'validation_failed', 'malformed_json', 'invalid_credentials', 'mfa_required',
  'mfa_invalid', 'mfa_locked', 'mfa_already_enabled', 'mfa_not_enabled', 'mfa_enrollment_required',
  'no_pending_enrolment', 'too_many_password_attempts', 'rate_limited', 'rate_limiter_unavailable',
  'sessions_unavailable', 'export_in_progress', 'email_taken', 'already_registered',
  'email_not_verified', 'account_disabled', 'invalid_token', 'token_expired', 'missing_token',
  'session_revoked', 'invalid_refresh_token', 'refresh_token_reused', 'access_denied', 'not_found',
  'concurrent_modification', 'request_in_progress', 'request_timeout', 'payload_too_large',
  'unsupported_media_type', 'invalid_image', 'already_applied', 'not_applied', 'not_an_applicant',
  'own_sitting', 'not_the_owner', 'not_the_sitter', 'sitter_unavailable', 'sitting_not_open',
  'sitting_closed', 'sitting_expired', 'sitting_not_accepted', 'sitting_not_in_progress',
  'sitting_not_completed', 'sitting_not_ended', 'sitting_not_started_yet', 'sitting_in_progress',
  'already_reviewed', 'not_a_participant', 'not_the_author', 'own_advice', 'not_a_botanist',
  'own_account', 'nothing_to_change', 'step_up_required', 'idempotency_key_reused',
  'account_settling', 'erasure_settling', 'database_busy', 'internal_error',
] as const

type Translate = (key: string, values?: Record<string, unknown>) => string

/** The words for an error: the code's own sentence, the fields it names, and when to retry. */
export function describeError(error: unknown, t: Translate): string {
  const e = error instanceof ApiError ? error : new ApiError(0, 'network_error', String(error))
  const known = (KNOWN_CODES as readonly string[]).includes(e.code)
  let text = known ? t(`errors.${e.code}`) : t('errors.generic', { code: e.code })
  const fields = Object.entries(e.fields)
  if (fields.length) text += ' ' + fields.map(([name, why]) => `${name} : ${why}`).join(' ; ')
  if (e.retryAfter) text += ` (${e.retryAfter} s)`
  return text
}
