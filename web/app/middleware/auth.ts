// Pages that need a signed-in user send the others to the login page (and back afterwards).
export default defineNuxtRouteMiddleware((to) => {
  const { user } = useAuth()
  if (!user.value) return navigateTo({ path: '/login', query: { next: to.fullPath } })
})
