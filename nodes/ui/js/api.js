// The node's API as the views call it: JSON over fetch with the token (when the operator
// gave one) as a Bearer header, and the live event stream (/api/events, Server-Sent
// Events read over fetch so that the token goes in the header, not in the URL).

const TOKEN_KEY = "wellspring.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal or failure of an API call, with the node's own message. */
export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

function headers() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}`, Accept: "application/json" } : { Accept: "application/json" };
}

/** GET a JSON body; an ApiError with the node's message when the answer is not 2xx. */
export async function get(path, { signal } = {}) {
  return call(path, { headers: headers(), signal, cache: "no-store" });
}

/** POST a JSON body, answered as get() is. */
export async function post(path, body) {
  return call(path, {
    method: "POST",
    headers: { ...headers(), "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
}

async function call(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "the node does not answer (is it running?)", path);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message, path);
  }
  return response.json();
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * The live event stream, one connection for the page. onEvent(kind, data) for each
 * event; onState("open" | "retrying" | "refused" | "unavailable") as the connection goes.
 * Reconnects with back-off; returns a function that closes it.
 */
export function events(onEvent, onState) {
  let stopped = false;
  let controller = null;
  let delay = 500;

  async function connect() {
    while (!stopped) {
      controller = new AbortController();
      try {
        const response = await fetch("/api/events", {
          headers: { ...headers(), Accept: "text/event-stream" },
          signal: controller.signal,
          cache: "no-store",
        });
        if (response.status === 401 || response.status === 403) {
          onState("refused");
          return;
        }
        if (response.status === 404) {
          onState("unavailable");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`${response.status}`);
        onState("open");
        delay = 500;
        await read(response.body, onEvent);
      } catch (e) {
        if (stopped) return;
      }
      onState("retrying");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  connect();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

/** Reads an event stream: "event:" and "data:" lines, dispatched at each blank line. */
async function read(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let kind = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (data.length) dispatch(kind, data.join("\n"), onEvent);
        kind = "message";
        data = [];
      } else if (line.startsWith(":")) {
        // a keep-alive comment
      } else if (line.startsWith("event:")) {
        kind = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }
}

function dispatch(kind, text, onEvent) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = { text };
  }
  onEvent(data.kind ?? kind, data);
}
