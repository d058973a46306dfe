import { describe, it, expect, vi } from 'vitest'
import { mount } from '@vue/test-utils'
import { computed } from 'vue'
import PhotoInput from '~/components/PhotoInput.vue'
import AsyncState from '~/components/AsyncState.vue'
import { describeError } from '~/utils/errors'
import { ApiError } from '~/api/client'

// Nuxt's auto-imports, for components mounted outside Nuxt.
vi.stubGlobal('computed', computed)
vi.stubGlobal('describeError', describeError)
vi.stubGlobal('useI18n', () => ({ t: (k: string) => k }))

describe('PhotoInput', () => {
  it('asks phones for the camera and emits the chosen file', async () => {
    const wrapper = mount(PhotoInput, { props: { label: 'Photo', name: 'p' } })
    const input = wrapper.get('input[type=file]')
    expect(input.attributes('accept')).toBe('image/*')
    expect(input.attributes('capture')).toBe('environment')
    const file = new File(['x'], 'leaf.jpg', { type: 'image/jpeg' })
    Object.defineProperty(input.element, 'files', { value: [file] })
    await input.trigger('change')
    expect(wrapper.emitted('pick')?.[0]).toEqual([file])
  })
})

describe('AsyncState', () => {
  it('shows loading, then the error in words with a retry, then empty, then the content', async () => {
    const wrapper = mount(AsyncState, {
      props: { loading: true, error: null, empty: false },
      slots: { default: '<p class="content">content</p>' },
    })
    expect(wrapper.get('[role=status]').text()).toBe('common.loading')
    await wrapper.setProps({ loading: false, error: new ApiError(409, 'sitting_not_open', 'x') })
    expect(wrapper.get('[role=alert]').text()).toContain('errors.sitting_not_open')
    await wrapper.get('button').trigger('click')
    expect(wrapper.emitted('retry')).toHaveLength(1)
    await wrapper.setProps({ error: null, empty: true })
    expect(wrapper.text()).toBe('common.empty')
    await wrapper.setProps({ empty: false })
    expect(wrapper.find('.content').exists()).toBe(true)
  })
})
