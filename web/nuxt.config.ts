// A'rosa-je's web client: a static single-page app (no server rendering) that the API serves
// from `WEB_DIR`, installable as a PWA. Every string goes through i18n (French by default).
const api = process.env.AROSAJE_API ?? 'http://127.0.0.1:8000'

export default defineNuxtConfig({
  compatibilityDate: '2026-01-01',
  ssr: false,
  devtools: { enabled: false },
  telemetry: false,
  typescript: { strict: true, typeCheck: false },
  modules: ['@nuxtjs/i18n', '@vite-pwa/nuxt'],
  css: ['~/assets/main.css'],
  app: {
    head: {
      htmlAttrs: { lang: 'fr' },
      title: "A'rosa-je",
      meta: [
        { name: 'viewport', content: 'width=device-width, initial-scale=1' },
        { name: 'theme-color', content: '#2f6b3a' },
        { name: 'description', content: 'Faites garder vos plantes, gardez celles des autres.' },
      ],
      link: [{ rel: 'icon', href: '/icon.svg', type: 'image/svg+xml' }],
    },
  },
  runtimeConfig: {
    public: {
      // Map tiles, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png; empty: no tiles (the map
      // still shows the markers). The API's CSP must allow the same host (`WEB_TILE_URL`).
      tileUrl: '',
    },
  },
  i18n: {
    defaultLocale: 'fr',
    strategy: 'no_prefix',
    detectBrowserLanguage: false,
    locales: [
      { code: 'fr', language: 'fr-FR', name: 'Français', file: 'fr.json' },
      { code: 'en', language: 'en-GB', name: 'English', file: 'en.json' },
    ],
  },
  pwa: {
    registerType: 'autoUpdate',
    manifest: {
      name: "A'rosa-je",
      short_name: "A'rosa-je",
      description: 'Faites garder vos plantes, gardez celles des autres.',
      lang: 'fr',
      start_url: '/',
      display: 'standalone',
      background_color: '#f7f7f2',
      theme_color: '#2f6b3a',
      icons: [
        { src: '/icon-192.png', sizes: '192x192', type: 'image/png' },
        { src: '/icon-512.png', sizes: '512x512', type: 'image/png' },
        { src: '/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
      ],
    },
    workbox: {
      // The offline shell: the app's own files. API answers are never cached (personal data).
      navigateFallback: '/',
      navigateFallbackDenylist: [/^\/api\//, /^\/ws/, /^\/docs/, /^\/openapi\.json/, /^\/metrics/, /^\/health/, /^\/ready/],
      globPatterns: ['**/*.{js,css,html,png,svg,json}'],
    },
    client: { installPrompt: false },
    devOptions: { enabled: false },
  },
  vite: {
    server: {
      proxy: {
        '/api': { target: api, changeOrigin: false },
        '/ws': { target: api.replace(/^http/, 'ws'), ws: true },
      },
    },
  },
  // One shell (index.html) for every route: the API answers client routes with it.
  nitro: { preset: 'static', prerender: { crawlLinks: false, routes: ['/'] } },
})
