// Services (/ui/services): every registered instance, sorted by name then id, with its
// status, its interfaces as links, and how long ago it was last heard of. The row
// builder is shared with the capability page, which lists the instances named after it.
import { el, html, patchRows } from '../dom.js';
import { ageTag, interfaces, status } from '../format.js';

export function sortedInstances(instances) {
  return [...instances.values()].sort((a, b) => (a.name === b.name
    ? String(a.id).localeCompare(String(b.id)) : (a.name < b.name ? -1 : 1)));
}

const HEAD = (withName) => html`<thead><tr>${withName ? html`<th scope="col">Name</th>` : ''}
  <th scope="col">Id</th><th scope="col">Version</th><th scope="col">Status</th>
  <th scope="col">Interfaces</th><th scope="col">Last heartbeat</th>
  <th scope="col">Registered</th></tr></thead>`;

// The capability page's few instances: one string.
export function instanceTable(records, { testid, withName, caption }) {
  return html`<table class="data" data-testid="${testid}">
    <caption>${caption}</caption>${HEAD(withName)}
    <tbody>${records.map((r) => instanceRow(r, withName).markup)}</tbody></table>`;
}

function instanceRow(r, withName) {
  const sig = JSON.stringify([r.version, r.status, r.interfaces, r.last_heartbeat, r.registered_at]);
  return { key: `${r.name}\u0000${r.id}`, sig, markup: html`<tr data-service="${r.name}" data-id="${r.id}" data-status="${r.status}">
    ${withName ? html`<td>${r.name}</td>` : ''}
    <th scope="row"><code>${r.id}</code></th><td>${r.version ?? '–'}</td>
    <td class="status-cell">${status(r.status)}</td><td>${interfaces(r)}</td>
    <td>${ageTag(r.last_heartbeat)}</td>
    <td><time datetime="${r.registered_at ?? ''}">${r.registered_at ?? '–'}</time></td></tr>` };
}

// Up to thousands of instances: the table stays, rows change one by one (patchRows).
export function create(main) {
  const caption = el('caption');
  const rows = el('tbody');
  const table = el('table', { class: 'data', 'data-testid': 'services' });
  table.append(caption);
  table.insertAdjacentHTML('beforeend', HEAD(true).toString());
  table.append(rows);
  const empty = el('p', { class: 'empty', hidden: '' }, 'No instance is registered.');
  const note = el('p', { class: 'note' },
    'A last heartbeat is the latest this registry forwarded, announced every 2 s.');
  main.append(el('h1', {}, 'Services'), table, note, empty);
  return {
    update(model) {
      const records = sortedInstances(model.instances);
      const names = new Set(records.map((r) => r.name)).size;
      caption.textContent = `${records.length} instances of ${names} services`;
      patchRows(rows, records.map((r) => instanceRow(r, true)));
      table.hidden = note.hidden = records.length === 0;
      empty.hidden = records.length > 0;
    },
  };
}
