// One capability (/ui/capabilities/{namespace}): what the manifest declares, each of its
// dependencies checked against the version held (from /v1/dependencies), who depends on
// it, the heartbeat daemon's health record, and the instances registered under it. An
// unknown namespace says so, and the page fills in by itself if it appears later.
import { el, html, patch } from '../dom.js';
import { ageTag, capabilityHref, healthOf, plain, status } from '../format.js';
import { instanceTable, sortedInstances } from './services.js';

export function create(main, { namespace }) {
  const body = el('div');
  main.append(el('h1', {}, namespace), body);
  return {
    update(model) {
      patch(body, page(namespace, model));
    },
  };
}

function page(ns, model) {
  const c = model.capabilities.get(ns);
  const edges = model.dependencies?.edges ?? [];
  const dependents = edges.filter((e) => e.to === ns);
  if (!c) {
    return html`<p class="warning" role="status"><strong>Not found:</strong> the registry holds no capability
      <code>${ns}</code>. This page shows it as soon as the sync declares it.</p>
      ${dependents.length ? dependentsHtml(dependents) : ''}
      <p><a href="/ui/capabilities">All capabilities</a></p>`;
  }
  const instances = sortedInstances(model.instances).filter((r) => r.name === ns);
  return html`${c.metadata?.dc_title ? html`<p class="subtitle">${c.metadata.dc_title}</p>` : ''}
    <p class="facts"><span>Type <strong>${c.type ?? '–'}</strong></span>
      <span>Version <strong>${c.version ?? '–'}</strong></span>
      <span>Health ${status(healthOf(c))}</span></p>
    ${c.metadata?.dc_description ? html`<p class="description">${c.metadata.dc_description}</p>` : ''}
    ${cyclesHtml(ns, model.dependencies?.cycles ?? [])}
    <h2>Dependencies</h2>${model.dependencies ? dependenciesHtml(edges.filter((e) => e.from === ns))
      : html`<p class="muted">Dependency checks are not available yet.</p>`}
    ${dependentsHtml(dependents)}
    <h2>Health</h2>${healthHtml(c.health)}
    <h2>Instances</h2>${instances.length ? instanceTable(instances, { testid: 'instances', withName: false, caption: `${instances.length} instances registered as ${ns}` })
      : html`<p class="empty">No instance is registered under this namespace.</p>`}
    <h2>Metadata</h2>${metadataHtml(c.metadata)}`;
}

function cyclesHtml(ns, cycles) {
  const mine = cycles.filter((cycle) => cycle.includes(ns));
  if (!mine.length) return '';
  return html`<div class="warning" data-testid="cycles"><strong><span aria-hidden="true">⚠</span> Part of a dependency cycle</strong>
    <ul>${mine.map((cycle) => html`<li>${cycle.join(' → ')}</li>`)}</ul></div>`;
}

function edgeRows(list, side) {
  return list.map((e) => html`<tr data-capability="${e[side]}" data-status="${e.status}">
    <th scope="row"><a href="${capabilityHref(e[side])}">${e[side]}</a></th>
    <td>${e.relationship ?? '–'}</td><td><code>${e.range ?? '–'}</code></td><td>${e.held ?? 'none'}</td>
    <td>${status(e.status)}</td><td>${e.reason ?? ''}</td></tr>`);
}

const EDGE_HEAD = (who) => html`<thead><tr><th scope="col">${who}</th><th scope="col">Relationship</th>
  <th scope="col">Range</th><th scope="col">Held</th><th scope="col">Status</th><th scope="col">Reason</th></tr></thead>`;

function dependenciesHtml(list) {
  if (!list.length) return html`<p class="empty">Declares no dependency.</p>`;
  return html`<table class="data" data-testid="dependencies">${EDGE_HEAD('Capability')}
    <tbody>${edgeRows(list, 'to')}</tbody></table>`;
}

function dependentsHtml(list) {
  return html`<h2>Dependents</h2>${list.length
    ? html`<table class="data" data-testid="dependents">${EDGE_HEAD('Capability')}<tbody>${edgeRows(list, 'from')}</tbody></table>`
    : html`<p class="empty">No capability depends on this one.</p>`}`;
}

function healthHtml(health) {
  if (!health) {
    return html`<p data-testid="health-record">${status('none')}: no health record (the heartbeat daemon keeps one for services only, while they are alive).</p>`;
  }
  return html`<dl class="record" data-testid="health-record">${Object.entries(health).map(([key, value]) => html`
    <div><dt>${key}</dt><dd>${key === 'status' ? status(healthOf({ health }))
      : html`${plain(value)}${key === 'timestamp' || key === 'failing_since' ? html` (${ageTag(value)})` : ''}`}</dd></div>`)}</dl>`;
}

function metadataHtml(metadata) {
  const entries = Object.entries(metadata ?? {});
  if (!entries.length) return html`<p class="empty">No metadata.</p>`;
  return html`<dl class="record">${entries.map(([key, value]) => html`
    <div><dt>${key}</dt><dd>${plain(value)}</dd></div>`)}</dl>`;
}
