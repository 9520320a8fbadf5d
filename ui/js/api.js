// The dashboard's only ways to the server: `gql` (POST /graphql) and `live` (one shared
// graphql-transport-ws connection to /graphql/ws). The token lives in sessionStorage: it
// survives a reload of this tab, dies with the tab, and never appears in a URL.

const TOKEN_KEY = 'hookline.token';

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    live.closeAll();
  },
  /** Called when the server rejects the token (set by the app). */
  onRejected: () => {},
};

export class GqlError extends Error {
  constructor(errors, data = null) {
    super(errors.map((e) => e.message).join('; ') || 'request failed');
    this.errors = errors;
    this.data = data;
    this.code = errors[0]?.extensions?.code || null;
  }
}

function rejectedToken(errors) {
  return errors.some((e) => e?.extensions?.code === 'UNAUTHENTICATED');
}

/** Runs a query or mutation; resolves to `data`, rejects with a GqlError. */
export async function gql(query, variables = {}, { signal, token = session.token } = {}) {
  let res;
  try {
    res = await fetch('/graphql', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ query, variables }),
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new GqlError([{ message: 'The server cannot be reached.', extensions: { code: 'NETWORK' } }]);
  }
  let body;
  try {
    body = await res.json();
  } catch {
    throw new GqlError([{ message: `The server answered HTTP ${res.status}.`, extensions: { code: 'HTTP' } }]);
  }
  if (body.errors?.length) {
    if (rejectedToken(body.errors)) session.onRejected(body.errors[0].message);
    throw new GqlError(body.errors, body.data);
  }
  return body.data;
}

// ---- graphql-transport-ws ---------------------------------------------------------------------

/**
 * One WebSocket for all of the page's subscriptions, opened on the first and closed shortly
 * after the last. Reconnects with backoff and resubscribes; reports its state to listeners.
 */
class Live {
  constructor() {
    this.subs = new Map();
    this.nextId = 1;
    this.ws = null;
    this.acked = false;
    this.state = 'idle';
    this.listeners = new Set();
    this.retries = 0;
    this.retryTimer = null;
    this.idleTimer = null;
    this.pingTimer = null;
  }

  url() {
    const u = new URL('/graphql/ws', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.toString();
  }

  onState(fn) {
    this.listeners.add(fn);
    fn(this.state, this.detail);
    return () => this.listeners.delete(fn);
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    for (const fn of this.listeners) fn(state, detail);
  }

  /**
   * Subscribes; `sink.next(data)` for every result, `sink.error(errors)` when the server ends
   * it with errors. Returns the unsubscribe function.
   */
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.subs.set(id, { query, variables, sink });
    clearTimeout(this.idleTimer);
    if (!this.ws) this.connect();
    else if (this.acked) this.send({ id, type: 'subscribe', payload: { query, variables } });
    return () => {
      if (!this.subs.delete(id)) return;
      if (this.acked) this.send({ id, type: 'complete' });
      if (this.subs.size === 0) {
        clearTimeout(this.idleTimer);
        this.idleTimer = setTimeout(() => this.close(), 1500);
      }
    };
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  connect() {
    clearTimeout(this.retryTimer);
    const token = session.token;
    if (!token) return;
    this.setState(this.retries ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(this.url(), 'graphql-transport-ws');
    this.ws = ws;
    this.acked = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: `Bearer ${token}` } }));
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      const wasAcked = this.acked;
      this.ws = null;
      this.acked = false;
      clearInterval(this.pingTimer);
      if (!wasAcked && ev.code === 1002 && ev.reason) {
        // connection_init refused: the token is bad or expired.
        this.setState('refused', ev.reason);
        session.onRejected(ev.reason);
        return;
      }
      if (this.subs.size === 0) {
        this.setState('idle');
        return;
      }
      this.retries += 1;
      const delay = Math.min(15000, 500 * 2 ** Math.min(this.retries, 5)) * (0.8 + Math.random() * 0.4);
      this.setState('reconnecting', `retrying in ${Math.ceil(delay / 1000)} s`);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    };
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'connection_ack':
        this.acked = true;
        this.retries = 0;
        this.setState('connected');
        for (const [id, s] of this.subs) {
          this.send({ id, type: 'subscribe', payload: { query: s.query, variables: s.variables } });
        }
        clearInterval(this.pingTimer);
        this.pingTimer = setInterval(() => this.send({ type: 'ping' }), 25000);
        break;
      case 'ping':
        this.send({ type: 'pong' });
        break;
      case 'next': {
        const s = this.subs.get(msg.id);
        if (!s) break;
        if (msg.payload?.errors?.length) {
          this.subs.delete(msg.id);
          this.send({ id: msg.id, type: 'complete' });
          if (rejectedToken(msg.payload.errors)) session.onRejected(msg.payload.errors[0].message);
          s.sink.error?.(msg.payload.errors);
        } else {
          s.sink.next(msg.payload.data);
        }
        break;
      }
      case 'error': {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        s?.sink.error?.(Array.isArray(msg.payload) ? msg.payload : [{ message: 'subscription failed' }]);
        break;
      }
      case 'complete': {
        const s = this.subs.get(msg.id);
        this.subs.delete(msg.id);
        s?.sink.complete?.();
        break;
      }
      default:
        break;
    }
  }

  close() {
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    this.acked = false;
    this.retries = 0;
    if (ws) ws.close(1000, 'done');
    this.setState('idle');
  }

  closeAll() {
    this.subs.clear();
    this.close();
  }
}

export const live = new Live();
