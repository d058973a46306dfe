// Pages that need a signed-in user send the others to the login page (and back afterwards).
// A reload first brings the session back from its cookie.
export default defineNuxtRouteMiddleware(async (to) => {
  const { user, restore } = useAuth()
  await restore()
  if (!user.value) return navigateTo({ path: '/login', query: { next: to.fullPath } })
})
