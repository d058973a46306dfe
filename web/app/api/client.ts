// The typed API client: openapi-fetch over the types generated from the API's /openapi.json
// (`npm run gen:api`), so a contract change breaks `npm run typecheck`, not the user.
import createClient, { type Middleware } from 'openapi-fetch'
import type { paths } from './schema'
import { accessToken, isExpired, refresh } from './session'

/** The API's error body. */
export interface ApiErrorBody {
  error: { code: string; message: string; fields?: Record<string, string> }
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public fields: Record<string, string> = {},
    public retryAfter: number | null = null,
  ) {
    super(message)
  }
}

/** Turns an error answer (or a network failure) into an ApiError. */
export async function toApiError(response: Response | null): Promise<ApiError> {
  if (!response) return new ApiError(0, 'network_error', 'network error')
  const retry = response.headers.get('retry-after')
  try {
    const body = (await response.clone().json()) as ApiErrorBody
    if (body?.error?.code) {
      return new ApiError(response.status, body.error.code, body.error.message, body.error.fields ?? {},
        retry ? Number(retry) : null)
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(response.status, `http_${response.status}`, response.statusText, {}, retry ? Number(retry) : null)
}

const pending = new Map<string, Request>()

const auth: Middleware = {
  async onRequest({ request, id }) {
    if (isExpired()) await refresh()
    const token = accessToken()
    if (token) request.headers.set('authorization', `Bearer ${token}`)
    // Kept to replay once after a refresh (a body can be read only once).
    if (token && !request.url.includes('/api/auth/')) pending.set(id, request.clone())
    return request
  },
  async onResponse({ response, id }) {
    const retry = pending.get(id)
    pending.delete(id)
    if (response.status !== 401 || !retry) return response
    const code = (await toApiError(response)).code
    if (code !== 'token_expired' && code !== 'invalid_token') return response
    if (!(await refresh())) return response
    const token = accessToken()
    if (token) retry.headers.set('authorization', `Bearer ${token}`)
    return fetch(retry)
  },
  onError({ id }) {
    pending.delete(id)
  },
}

export const api = createClient<paths>({
  baseUrl: typeof window === 'undefined' ? 'http://localhost' : window.location.origin,
})
api.use(auth)

/** The data of an answer, or throws its ApiError. */
export async function ok<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  let result
  try {
    result = await call
  } catch {
    throw await toApiError(null)
  }
  const response = result.response
  if (!response.ok) {
    // openapi-fetch has read the body already: its error is the API's error body.
    const body = result.error as Partial<ApiErrorBody> | undefined
    const retry = response.headers.get('retry-after')
    if (body?.error?.code) {
      throw new ApiError(response.status, body.error.code, body.error.message, body.error.fields ?? {},
        retry ? Number(retry) : null)
    }
    throw await toApiError(response)
  }
  return result.data as T
}

/** Fetches an authenticated image as an object URL (an <img> cannot send the bearer token). */
export async function imageUrl(path: string): Promise<string> {
  if (isExpired()) await refresh()
  const token = accessToken()
  const response = await fetch(path, { headers: token ? { authorization: `Bearer ${token}` } : {} })
  if (!response.ok) throw await toApiError(response)
  return URL.createObjectURL(await response.blob())
}

/** Uploads a photo of a plant (multipart `file`). */
export async function uploadPhoto(plantId: string, file: Blob): Promise<{ id: string; url: string }> {
  const form = new FormData()
  form.append('file', file)
  return ok(api.POST('/api/plants/{id}/photos', {
    params: { path: { id: plantId } },
    body: form as never,
    bodySerializer: (b) => b as unknown as FormData,
  })) as Promise<{ id: string; url: string }>
}
