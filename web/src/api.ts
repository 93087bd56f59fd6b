// The API of `tailor serve`. The access token comes from the URL the server
// printed (?token=...) and is kept for this tab only.

const params = new URLSearchParams(location.search);
const fromUrl = params.get('token');
if (fromUrl) sessionStorage.setItem('tailor-token', fromUrl);
export const token: string = fromUrl ?? sessionStorage.getItem('tailor-token') ?? '';

export class ApiError extends Error {
  constructor(public status: number, message: string) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!res.ok) throw new ApiError(res.status, data?.error ?? `${res.status} ${res.statusText}`);
  return data as T;
}

export const get = <T>(path: string) => call<T>('GET', path);
export const post = <T>(path: string, body: unknown = {}) => call<T>('POST', path, body);
export const q = (s: string) => encodeURIComponent(s);

export interface Job {
  id: number;
  kind: string;
  model: { path: string; repo: string; hash: string };
  settings: any;
  state: string;
  units_total: number;
  units_done: number;
  units_failed: number;
  rate: number | null;
  eta_s: number | null;
  error: string;
  active?: boolean;
  log?: { time: number; line: string }[];
}

export interface Task {
  id: number;
  kind: string;
  state: string;
  progress: number;
  message: string;
  error?: string;
  result?: any;
}

export interface Snapshot {
  time: number;
  jobs: Job[];
  tasks: Task[];
}

// Progress snapshots every second (server-sent events; EventSource cannot set
// headers, so the token goes in the query).
export function events(onSnapshot: (s: Snapshot) => void, onState: (ok: boolean) => void): EventSource {
  const es = new EventSource(`/api/events?token=${q(token)}`);
  es.addEventListener('progress', (e) => {
    onState(true);
    onSnapshot(JSON.parse((e as MessageEvent).data));
  });
  es.onerror = () => onState(false);
  return es;
}
