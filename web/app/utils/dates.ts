/** `YYYY-MM-DD` of a day `offset` days from `from` (UTC, as the API counts days). */
export function isoDay(offset = 0, from = new Date()): string {
  const d = new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate() + offset))
  return d.toISOString().slice(0, 10)
}
