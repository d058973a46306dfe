/** A few French cities for a typed place (no geocoding service is called: nothing leaves the app). */
export const PLACES: Record<string, [number, number]> = {
  paris: [48.8566, 2.3522], lyon: [45.764, 4.8357], marseille: [43.2965, 5.3698],
  bordeaux: [44.8378, -0.5792], nantes: [47.2184, -1.5536], toulouse: [43.6047, 1.4442],
  lille: [50.6292, 3.0573], nice: [43.7102, 7.262], strasbourg: [48.5734, 7.7521],
  montpellier: [43.6108, 3.8767], rennes: [48.1173, -1.6778], grenoble: [45.1885, 5.7245],
  dijon: [47.322, 5.0415], angers: [47.4784, -0.5632], reims: [49.2583, 4.0317],
  'le havre': [49.4944, 0.1079], 'saint-étienne': [45.4397, 4.3872], toulon: [43.1242, 5.928],
  brest: [48.3904, -4.4861], tours: [47.3941, 0.6848], limoges: [45.8336, 1.2611],
  clermont: [45.7772, 3.087], 'clermont-ferrand': [45.7772, 3.087], rouen: [49.4432, 1.0999],
}

/** Coordinates of a typed place: a known city, or "lat, lon". */
export function parsePlace(text: string): [number, number] | null {
  const key = text.trim().toLowerCase().normalize('NFC')
  if (PLACES[key]) return PLACES[key]
  const m = key.match(/^(-?\d+(?:\.\d+)?)\s*[,; ]\s*(-?\d+(?:\.\d+)?)$/)
  if (!m) return null
  const lat = Number(m[1]), lon = Number(m[2])
  return Math.abs(lat) <= 90 && Math.abs(lon) <= 180 ? [lat, lon] : null
}
