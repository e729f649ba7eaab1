// Overview (/ui/): the numbers an operator looks at first (capabilities, instances by
// status, rejected manifests), the etcd members with leader and health, and which
// commit the sync applied last. The counts region is aria-live, so a screen reader
// hears them change; it is patched only when a count changes.
import { el, html, patch } from '../dom.js';
import { ageTag, bytes, healthOf, status } from '../format.js';

export function create(main) {
  const counts = el('section', { 'aria-live': 'polite', 'aria-labelledby': 'counts-title', class: 'counts' });
  const rest = el('div');
  main.append(el('h1', {}, 'Overview'), counts, rest);
  return {
    update(model) {
      patch(counts, countsHtml(model));
      patch(rest, html`${clusterHtml(model.cluster)}${commitHtml(model.sync)}`);
    },
  };
}

function tally(values) {
  const out = {};
  for (const value of values) out[value] = (out[value] ?? 0) + 1;
  return out;
}

function countsHtml(model) {
  const caps = [...model.capabilities.values()];
  const types = tally(caps.map((c) => c.type));
  const health = tally(caps.map(healthOf));
  const instances = tally([...model.instances.values()].map((r) => r.status));
  const errors = model.sync?.present ? (model.sync.errors ?? []).length : 0;
  const card = (label, testid, value, detail = '') => html`
    <div class="card"><dt>${label}</dt>
      <dd><span class="number" data-testid="${testid}">${value}</span>${detail ? html` <span class="detail">${detail}</span>` : ''}</dd></div>`;
  return html`<h2 id="counts-title" class="visually-hidden">Counts</h2>
    <dl class="cards">
      ${card('Capabilities', 'overview-capabilities', caps.length,
        `${types.service ?? 0} service, ${types.pattern ?? 0} pattern; ${health.healthy ?? 0} healthy`)}
      ${card(html`<span aria-hidden="true">✓</span> Instances up`, 'overview-instances-up', instances.up ?? 0)}
      ${card(html`<span aria-hidden="true">⚠</span> Instances unhealthy`, 'overview-instances-unhealthy', instances.unhealthy ?? 0)}
      ${card(html`<span aria-hidden="true">?</span> Instances unknown`, 'overview-instances-unknown', instances.unknown ?? 0)}
      ${card('Sync errors', 'overview-sync-errors', errors, errors ? html`<a href="/ui/sync">see the rejected files</a>` : '')}
    </dl>`;
}

function clusterHtml(cluster) {
  if (!cluster) return html`<h2>Cluster</h2><p class="muted">Cluster status not available yet.</p>`;
  const members = cluster.members ?? [];
  const alarms = cluster.alarms ?? [];
  return html`<h2>Cluster</h2>
    ${cluster.leader ? '' : html`<p class="warning"><strong><span aria-hidden="true">⚠</span> NO LEADER</strong>: no member says it leads; etcd cannot accept writes.</p>`}
    ${alarms.length ? html`<div class="warning"><strong><span aria-hidden="true">⚠</span> Alarms</strong><ul>${alarms.map((a) => html`<li>${typeof a === 'string' ? a : JSON.stringify(a)}</li>`)}</ul></div>` : ''}
    <table class="data" data-testid="cluster">
      <caption>Members as the registry last saw them (checked ${ageTag(cluster.checked_at)})</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Endpoint</th><th scope="col">Leader</th>
        <th scope="col">Healthy</th><th scope="col">Version</th><th scope="col">DB size</th></tr></thead>
      <tbody>${members.map(memberRow)}</tbody>
    </table>`;
}

function memberRow(m) {
  return html`<tr data-member="${m.name}" data-leader="${Boolean(m.leader)}" data-healthy="${Boolean(m.healthy)}">
    <th scope="row">${m.name}</th><td>${m.endpoint}</td>
    <td>${m.leader ? html`<strong>yes</strong>` : 'no'}</td>
    <td>${m.healthy ? status('yes') : html`${status('no')}${m.error ? html` <span class="reason">${m.error}</span>` : ''}`}</td>
    <td>${m.version ?? '–'}</td><td>${bytes(m.db_size)}</td></tr>`;
}

export function commitHtml(sync) {
  let body;
  if (!sync) body = html`<span class="muted">sync status not available yet</span>`;
  else if (!sync.present) body = html`<span class="muted">no sync status yet</span>`;
  else {
    const tree = { true: html`<strong class="dirty">dirty</strong> (uncommitted changes were synced)`,
      false: 'clean' }[sync.dirty] ?? '';
    const commit = sync.commit
      ? html`<code title="${sync.commit}">${sync.commit.slice(0, 10)}</code> ${tree}`
      : html`<span class="muted">no git commit (the directory is not a git checkout)</span>`;
    body = html`${commit}, changed ${ageTag(sync.changed_at)}; ${sync.capabilities ?? 0} capabilities declared`;
  }
  return html`<h2>Last synced commit</h2><p data-testid="overview-commit">${body}</p>`;
}
