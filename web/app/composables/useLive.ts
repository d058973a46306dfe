import { ref, onBeforeUnmount } from 'vue'
import { api, ok } from '~/api/client'
import { Live, type LiveState } from '~/api/live'
import { onSessionChange } from '~/api/session'

let live: Live | null = null

// Signed out (logout, a refused refresh, an erased account): the socket closes, and no ticket
// is asked for again until the next sign-in opens it anew.
onSessionChange((signedIn) => {
  if (!signedIn) stopLive()
})

/** The one live connection of this tab, opened on first use while signed in. */
export function useLive() {
  if (!live) {
    live = new Live({
      ticket: async () => (await ok(api.POST('/api/ws/ticket'))).ticket,
      url: (ticket) => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?ticket=${encodeURIComponent(ticket)}`,
    })
  }
  const state = ref<LiveState>(live.state)
  const off = live.onState((s) => (state.value = s))
  onBeforeUnmount(() => off())
  return { live, state }
}

/** Closes the live connection (sign-out). */
export function stopLive() {
  live?.stop()
  live = null
}
