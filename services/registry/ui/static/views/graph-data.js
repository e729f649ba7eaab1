// What the dependency graph should show, computed from the model alone (no Cytoscape):
// nodes = capabilities plus a "missing" node for every namespace an edge names that
// does not exist; edges = the checked dependencies, marked when they are a problem or
// part of a cycle. graph.js diffs this against the canvas; the text list below the
// canvas is rendered from the same data so both always say the same thing.
import { html } from '../dom.js';
import { capabilityHref, healthOf, icon, status } from '../format.js';

export const edgeId = (e) => `${e.from} → ${e.to} (${e.relationship ?? ''})`;

// "a → b" for every consecutive pair of every cycle ([a, b, a]).
function cycleSteps(cycles) {
  const steps = new Set();
  for (const cycle of cycles) {
    for (let i = 0; i + 1 < cycle.length; i += 1) steps.add(`${cycle[i]} → ${cycle[i + 1]}`);
  }
  return steps;
}

function node(id, health, classes) {
  const display = health === 'missing' ? `${icon('missing')} ${id} (missing)` : `${icon(health)} ${id}`;
  const data = { id, label: id, display, health };
  return { group: 'nodes', data: { ...data, sig: `${display}|${classes}` }, classes };
}

export function graphElements(model) {
  const nodes = new Map();
  const edges = new Map();
  for (const c of model.capabilities.values()) {
    const health = healthOf(c);
    nodes.set(c.namespace, node(c.namespace, health, `health-${health}`));
  }
  const steps = cycleSteps(model.dependencies?.cycles ?? []);
  for (const e of model.dependencies?.edges ?? []) {
    for (const end of [e.from, e.to]) if (!nodes.has(end)) nodes.set(end, node(end, 'missing', 'missing'));
    const problem = e.status !== 'satisfied';
    const classes = [problem ? 'problem' : '', steps.has(`${e.from} → ${e.to}`) ? 'cycle' : ''].join(' ').trim();
    const label = problem ? `${e.range ?? ''} (${e.status})` : (e.relationship ?? '');
    const data = { id: edgeId(e), source: e.from, target: e.to, label, status: e.status, edge: e };
    edges.set(data.id, { group: 'edges', data: { ...data, sig: `${label}|${classes}` }, classes });
  }
  return { nodes, edges };
}

// The keyboard and screen-reader alternative to the canvas: each node, its health, and
// its outgoing edges with their status.
export function graphList({ nodes, edges }) {
  const outgoing = new Map();
  for (const { data } of edges.values()) {
    if (!outgoing.has(data.source)) outgoing.set(data.source, []);
    outgoing.get(data.source).push(data.edge);
  }
  const ids = [...nodes.keys()].sort();
  return html`${ids.map((id) => {
    const { health } = nodes.get(id).data;
    const out = outgoing.get(id) ?? [];
    return html`<li data-node="${id}"><a href="${capabilityHref(id)}">${id}</a>
      ${health === 'missing' ? html`${status('missing')} (no such capability)` : status(health)}
      ${out.length ? html`<ul>${out.map((e) => html`<li>${e.relationship ?? 'depends on'} → ${e.to}
        <code>${e.range ?? ''}</code>: ${status(e.status)}${e.held ? ` (holds ${e.held})` : ''}</li>`)}</ul>` : ''}</li>`;
  })}`;
}
