import { describe, it, expect, vi } from 'vitest'
import { Live, type Frame } from '~/api/live'

class FakeSocket {
  static all: FakeSocket[] = []
  sent: string[] = []
  readyState = 0
  onopen: (() => void) | null = null
  onmessage: ((e: { data: string }) => void) | null = null
  onclose: (() => void) | null = null
  constructor(public url: string) {
    FakeSocket.all.push(this)
  }
  open() {
    this.readyState = 1
    this.onopen?.()
  }
  frame(f: Frame) {
    this.onmessage?.({ data: JSON.stringify(f) })
  }
  send(text: string) {
    this.sent.push(text)
  }
  close() {
    this.readyState = 3
    this.onclose?.()
  }
}

describe('live connection', () => {
  it('resumes after a lost connection from the last position, with no duplicate', async () => {
    vi.useFakeTimers()
    let n = 0
    const live = new Live({
      ticket: async () => `t${++n}`,
      url: (t) => `ws://x/ws?ticket=${t}`,
      socket: (url) => new FakeSocket(url) as unknown as WebSocket,
      retryMs: 10,
    })
    const seen: number[] = []
    live.on((f) => f.position && seen.push(f.position))
    await live.start()
    const first = FakeSocket.all.at(-1)!
    expect(first.url).toBe('ws://x/ws?ticket=t1')
    first.open()
    first.frame({ type: 'message.created', position: 5, data: {} })
    first.frame({ type: 'message.created', position: 7, data: {} })
    first.close()
    await vi.advanceTimersByTimeAsync(20)
    const second = FakeSocket.all.at(-1)!
    expect(second).not.toBe(first)
    expect(second.url).toBe('ws://x/ws?ticket=t2')
    second.open()
    expect(JSON.parse(second.sent[0]!)).toEqual({ type: 'resume', after: 7 })
    second.frame({ type: 'message.created', position: 7, data: {} })
    second.frame({ type: 'message.created', position: 9, data: {} })
    expect(seen).toEqual([5, 7, 9])
    expect(live.position).toBe(9)
    live.stop()
    vi.useRealTimers()
  })

  it('resumes from what the page loaded when no frame had come before the connection was lost', async () => {
    vi.useFakeTimers()
    const live = new Live({
      ticket: async () => 't',
      url: (t) => `ws://x/ws?ticket=${t}`,
      socket: (url) => new FakeSocket(url) as unknown as WebSocket,
      retryMs: 10,
    })
    await live.start()
    const first = FakeSocket.all.at(-1)!
    first.open()
    expect(first.sent).toEqual([])
    // The page shows a conversation loaded over REST, newest message at position 12.
    live.caughtUp(12)
    live.caughtUp(3)
    first.close()
    await vi.advanceTimersByTimeAsync(20)
    const second = FakeSocket.all.at(-1)!
    expect(second).not.toBe(first)
    second.open()
    expect(JSON.parse(second.sent[0]!)).toEqual({ type: 'resume', after: 12 })
    live.stop()
    vi.useRealTimers()
  })

  it('passes frames without a position (typing) every time', async () => {
    const live = new Live({ ticket: async () => 't', url: (t) => t, socket: (u) => new FakeSocket(u) as unknown as WebSocket })
    const types: string[] = []
    live.on((f) => types.push(f.type))
    live.receive({ type: 'typing', data: {} })
    live.receive({ type: 'typing', data: {} })
    expect(types).toEqual(['typing', 'typing'])
  })
})
