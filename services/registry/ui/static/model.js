// The live data model: read everything once, then keep it current from one change
// stream (/v1/watch?include=sync,cluster,beats), so no page ever polls. Views only read
// `model`; every change calls the one listener (app.js), which batches renders.

const STREAM = '/v1/watch?include=sync,cluster,beats&last_event_id=';
const DEPENDENCIES_DEBOUNCE_MS = 150;
const MAX_BACKOFF_MS = 5000;

export const model = {
  loaded: false,
  starting: '', // why the first read has not succeeded yet (shown as a notice)
  live: 'connecting', // 'open' while the stream is connected
  capabilities: new Map(), // namespace → capability
  instances: new Map(), // name + NUL + id → instance record
  dependencies: null, // GET /v1/dependencies, null until read
  sync: null, // GET /v1/sync, null until read
  cluster: null, // GET /v1/cluster, null until read
};

let listener = () => {};
let lastEventId = '';
let dependenciesTimer = 0;
let dependenciesAsked = 0; // answers to older requests are dropped

export function onChange(fn) { listener = fn; }

const changed = () => listener();
const instanceKey = (record) => `${record.name}\u0000${record.id}`;
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function read(path) {
  const response = await fetch(path, { headers: { accept: 'application/json' } });
  if (response.status === 401 || response.status === 403) {
    throw new Error('this registry requires a token to read (--require-read-token); '
      + 'a browser cannot send one on the change stream, so the dashboard cannot show it');
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return { body: await response.json(), index: Number(response.headers.get('X-Registry-Index')) };
}

// The side reads (dependencies, sync, cluster) must not block the dashboard.
async function optional(path) {
  try {
    return (await read(path)).body;
  } catch {
    return null;
  }
}

function replaceLists(services, capabilities) {
  model.instances = new Map(services.map((r) => [instanceKey(r), r]));
  model.capabilities = new Map(capabilities.map((c) => [c.namespace, c]));
}

// First read, retried with a capped backoff while the registry answers 503 (starting).
export async function start() {
  for (let wait = 250; ; wait = Math.min(wait * 2, MAX_BACKOFF_MS)) {
    try {
      // The two lists first, alone: the registry answers one request at a time, and
      // the dependency checks (~0.1 s at 1,000 capabilities) would hold the tables back.
      // Sync and cluster are read when the stream opens.
      const [capabilities, services] = await Promise.all([
        read('/v1/capabilities'), read('/v1/services')]);
      replaceLists(services.body, capabilities.body);
      Object.assign(model, { loaded: true, starting: '' });
      changed();
      connect(String(Math.min(capabilities.index, services.index) || ''));
      await readDependencies();
      return;
    } catch (error) {
      model.starting = error.message.includes('token') ? error.message : 'registry starting…';
      changed();
      await sleep(wait);
    }
  }
}

async function readDependencies() {
  const asked = ++dependenciesAsked;
  const answer = await optional('/v1/dependencies');
  if (asked === dependenciesAsked && answer) {
    model.dependencies = answer;
    changed();
  }
}

function rereadDependencies() {
  clearTimeout(dependenciesTimer);
  dependenciesTimer = setTimeout(readDependencies, DEPENDENCIES_DEBOUNCE_MS);
}

async function rereadSides() {
  const [sync, cluster] = await Promise.all([optional('/v1/sync'), optional('/v1/cluster')]);
  if (sync) model.sync = sync;
  if (cluster) model.cluster = cluster;
  changed();
}

const HANDLERS = {
  registered: putInstance,
  status_changed: putInstance,
  updated: putInstance,
  deregistered(data) {
    model.instances.delete(instanceKey(data.record ?? data));
  },
  capability_changed(data) {
    if (data.capability) model.capabilities.set(data.namespace, data.capability);
    else model.capabilities.delete(data.namespace);
    rereadDependencies();
  },
  resync(data) {
    replaceLists(data.services, data.capabilities);
    rereadDependencies();
  },
  sync_changed(data) { model.sync = data; },
  cluster_changed(data) { model.cluster = data; },
  // Heartbeats and health rewrites are not changes: a summary every 2 s keeps ages true.
  beats(data) {
    for (const [name, id, last] of data.instances) {
      const record = model.instances.get(instanceKey({ name, id }));
      if (record && last) record.last_heartbeat = last;
    }
    for (const [namespace, health] of Object.entries(data.health)) {
      const capability = model.capabilities.get(namespace);
      if (capability) capability.health = health;
    }
  },
};

function putInstance(data) {
  model.instances.set(instanceKey(data.record), data.record);
}

// EventSource reconnects by itself after a network error, but gives up for good on an
// HTTP error (a 503 while the registry restarts): then open a new one, from the last
// event seen, after a capped backoff.
function connect(position, wait = 250) {
  const source = new EventSource(STREAM + encodeURIComponent(position));
  source.addEventListener('open', () => {
    wait = 250;
    model.live = 'open';
    changed();
    rereadSides();
  });
  source.addEventListener('error', () => {
    model.live = 'connecting';
    changed();
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => connect(lastEventId || position, Math.min(wait * 2, MAX_BACKOFF_MS)), wait);
    }
  });
  for (const [kind, apply] of Object.entries(HANDLERS)) {
    source.addEventListener(kind, (event) => {
      if (event.lastEventId) lastEventId = event.lastEventId;
      apply(JSON.parse(event.data));
      changed();
    });
  }
}
