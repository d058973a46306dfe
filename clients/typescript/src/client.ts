// A small client written the way an app would use the API, against the types generated from
// the OpenAPI document (src/schema.d.ts, made by `npm run generate`). It is never run: if the
// document changes a path, a field or a status this code relies on, `tsc` fails.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Plant = components["schemas"]["PlantView"];
type ApiError = components["schemas"]["ErrorBody"];

export function client(baseUrl: string, accessToken?: string) {
  const headers: Record<string, string> = {};
  if (accessToken !== undefined) {
    headers["Authorization"] = `Bearer ${accessToken}`;
  }
  return createClient<paths>({ baseUrl, headers });
}

/** Logs in; a TOTP code only for accounts that need one (401 `mfa_required`). */
export async function logIn(
  baseUrl: string,
  email: string,
  password: string,
  totpCode?: string,
): Promise<{ accessToken: string; refreshToken: string; expiresIn: number } | ApiError> {
  const body: components["schemas"]["LoginBody"] = { email, password };
  if (totpCode !== undefined) {
    body.totp_code = totpCode;
  }
  const { data, error } = await client(baseUrl).POST("/api/auth/login", { body });
  if (error !== undefined) {
    return error;
  }
  return {
    accessToken: data.access_token,
    refreshToken: data.refresh_token,
    expiresIn: data.expires_in,
  };
}

/** Creates a plant, retry-safe through `Idempotency-Key`; a 202 means "read it again soon". */
export async function addPlant(
  baseUrl: string,
  token: string,
  name: string,
  wateringDays: number,
): Promise<Plant | { pending: string } | ApiError> {
  const { data, error, response } = await client(baseUrl, token).POST("/api/plants", {
    params: { header: { "Idempotency-Key": crypto.randomUUID() } },
    body: { name, care: { watering_interval_days: wateringDays } },
  });
  if (error !== undefined) {
    // Field-level messages on 422 `validation_failed`.
    const fields: Record<string, string> = error.error.fields ?? {};
    void fields;
    return error;
  }
  if (response.status === 202 && "status" in data && data.status === "pending") {
    return { pending: data.id };
  }
  return data as Plant;
}

/** Every plant of mine, following the cursor. */
export async function allMyPlants(baseUrl: string, token: string): Promise<Plant[]> {
  const plants: Plant[] = [];
  let cursor: string | undefined;
  for (;;) {
    const query: { limit: number; cursor?: string } = { limit: 100 };
    if (cursor !== undefined) {
      query.cursor = cursor;
    }
    const { data, error } = await client(baseUrl, token).GET("/api/plants", { params: { query } });
    if (error !== undefined) {
      throw new Error(`${error.error.code}: ${error.error.message}`);
    }
    plants.push(...data.items);
    if (data.next_cursor === null || data.next_cursor === undefined) {
      return plants;
    }
    cursor = data.next_cursor;
  }
}

/** Renames a plant; a 404 is a plant that is gone or not mine. */
export async function rename(baseUrl: string, token: string, id: string, name: string) {
  const { data, error, response } = await client(baseUrl, token).PATCH("/api/plants/{id}", {
    params: { path: { id } },
    body: { name },
  });
  if (response.status === 404) {
    return null;
  }
  if (error !== undefined) {
    throw new Error(error.error.code);
  }
  return data;
}

/** The signed-in devices, to offer "log out everywhere else". */
export async function devices(baseUrl: string, token: string) {
  const api = client(baseUrl, token);
  const { data } = await api.GET("/api/me/sessions");
  const others = (data?.items ?? []).filter((session) => !session.current);
  if (others.length > 0) {
    await api.DELETE("/api/me/sessions");
  }
  return others.map((session) => ({ id: session.id, seen: session.last_seen_at }));
}

/** Starts enrolling an authenticator app: the current password is required (422 otherwise, 429
 * `too_many_password_attempts` after too many wrong ones); confirm with a code from the app. */
export async function enrolTotp(baseUrl: string, token: string, currentPassword: string) {
  const { data, error } = await client(baseUrl, token).POST("/api/me/mfa/totp", {
    body: { current_password: currentPassword },
  });
  if (error !== undefined) {
    return error;
  }
  return { secret: data.secret, otpauthUrl: data.otpauth_url };
}
