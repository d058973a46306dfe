/** A button's call: busy while it runs, its error in words, a notice when done. */
export function useAction() {
  const busy = ref(false)
  const error = ref<unknown>(null)
  const notice = ref('')
  async function run<T>(call: () => Promise<T>, done?: string): Promise<T | undefined> {
    busy.value = true
    error.value = null
    notice.value = ''
    try {
      const result = await call()
      if (done) notice.value = done
      return result
    } catch (e) {
      error.value = e
      return undefined
    } finally {
      busy.value = false
    }
  }
  return { busy, error, notice, run }
}

/** A list loaded from the API: loading, error, items, reload. */
export function useList<T>(load: () => Promise<T[]>) {
  const items = ref<T[]>([]) as Ref<T[]>
  const loading = ref(true)
  const error = ref<unknown>(null)
  async function reload() {
    loading.value = true
    error.value = null
    try {
      items.value = await load()
    } catch (e) {
      error.value = e
    } finally {
      loading.value = false
    }
  }
  onMounted(reload)
  return { items, loading, error, reload }
}
