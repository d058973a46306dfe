// The live connection (`GET /ws?ticket=`): frames from the server to whoever listens, typing
// and pings to it. After a lost connection it opens a new one with a fresh ticket and sends
// `resume` with the last position it saw, so nothing is missed; frames at or below a position
// already delivered are dropped, so nothing comes twice.

export interface Frame {
  type: string
  position?: number
  data?: Record<string, unknown>
}

export interface LiveOptions {
  ticket: () => Promise<string>
  url: (ticket: string) => string
  socket?: (url: string) => WebSocket
  retryMs?: number
}

export type LiveState = 'idle' | 'connecting' | 'open' | 'closed'

export class Live {
  private ws: WebSocket | null = null
  private last = 0
  private delivered = new Set<number>()
  private listeners = new Set<(frame: Frame) => void>()
  private stateListeners = new Set<(state: LiveState) => void>()
  private stopped = true
  private ping: ReturnType<typeof setInterval> | null = null
  private retry: ReturnType<typeof setTimeout> | null = null
  state: LiveState = 'idle'

  constructor(private options: LiveOptions) {}

  /** The highest log position delivered so far. */
  get position() {
    return this.last
  }

  on(listener: (frame: Frame) => void) {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  onState(listener: (state: LiveState) => void) {
    this.stateListeners.add(listener)
    return () => this.stateListeners.delete(listener)
  }

  private setState(state: LiveState) {
    this.state = state
    for (const l of this.stateListeners) l(state)
  }

  /**
   * The caller holds what the REST API showed up to `position` (e.g. a conversation's newest
   * message): after a lost connection, `resume` starts there at the latest, even when no frame
   * had come yet (else what was sent meanwhile would be missed).
   */
  caughtUp(position: number) {
    if (position > this.last) this.last = position
  }

  /** Starts from `after` (0: live frames only, no catch-up). */
  async start(after = 0) {
    this.stopped = false
    if (after > this.last) this.last = after
    await this.connect()
  }

  stop() {
    this.stopped = true
    if (this.retry) clearTimeout(this.retry)
    if (this.ping) clearInterval(this.ping)
    this.ws?.close()
    this.ws = null
    this.setState('idle')
  }

  send(frame: Record<string, unknown>) {
    if (this.ws?.readyState === 1) this.ws.send(JSON.stringify(frame))
  }

  typing(conversationId: string) {
    this.send({ type: 'typing', conversation_id: conversationId })
  }

  /** A frame from the server: delivered once, in order. */
  receive(frame: Frame) {
    const position = frame.position ?? 0
    if (position > 0) {
      if (this.delivered.has(position)) return
      this.delivered.add(position)
      if (this.delivered.size > 5000) this.delivered = new Set([...this.delivered].slice(-2500))
      if (position > this.last) this.last = position
    }
    if (frame.type === 'resync') this.send({ type: 'resume', after: this.last })
    for (const l of this.listeners) l(frame)
  }

  private async connect() {
    if (this.stopped) return
    this.setState('connecting')
    let ticket: string
    try {
      ticket = await this.options.ticket()
    } catch {
      return this.later()
    }
    if (this.stopped) return
    const make = this.options.socket ?? ((url: string) => new WebSocket(url))
    const ws = make(this.options.url(ticket))
    this.ws = ws
    ws.onopen = () => {
      this.setState('open')
      if (this.last > 0) this.send({ type: 'resume', after: this.last })
      if (this.ping) clearInterval(this.ping)
      this.ping = setInterval(() => this.send({ type: 'ping' }), 25_000)
    }
    ws.onmessage = (event) => {
      try {
        this.receive(JSON.parse(String(event.data)) as Frame)
      } catch {
        // not a frame of ours: ignored
      }
    }
    ws.onclose = () => {
      if (this.ws !== ws) return
      this.ws = null
      if (this.ping) clearInterval(this.ping)
      this.setState('closed')
      this.later()
    }
  }

  private later() {
    if (this.stopped) return
    if (this.retry) clearTimeout(this.retry)
    this.retry = setTimeout(() => void this.connect(), this.options.retryMs ?? 1000)
  }
}
