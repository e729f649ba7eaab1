// Services (/ui/services): every registered instance, sorted by name then id, with its
// status, its interfaces as links, and how long ago it was last heard of. The row
// builder is shared with the capability page, which lists the instances named after it.
import { el, html, patch } from '../dom.js';
import { ageTag, interfaces, status } from '../format.js';

export function sortedInstances(instances) {
  return [...instances.values()].sort((a, b) => (a.name === b.name
    ? String(a.id).localeCompare(String(b.id)) : (a.name < b.name ? -1 : 1)));
}

export function instanceTable(records, { testid, withName, caption }) {
  return html`<table class="data" data-testid="${testid}">
    <caption>${caption}</caption>
    <thead><tr>${withName ? html`<th scope="col">Name</th>` : ''}<th scope="col">Id</th>
      <th scope="col">Version</th><th scope="col">Status</th><th scope="col">Interfaces</th>
      <th scope="col">Last heartbeat</th><th scope="col">Registered</th></tr></thead>
    <tbody>${records.map((r) => instanceRow(r, withName))}</tbody></table>`;
}

function instanceRow(r, withName) {
  return html`<tr data-service="${r.name}" data-id="${r.id}" data-status="${r.status}">
    ${withName ? html`<td>${r.name}</td>` : ''}
    <th scope="row"><code>${r.id}</code></th><td>${r.version ?? '–'}</td>
    <td class="status-cell">${status(r.status)}</td><td>${interfaces(r)}</td>
    <td>${ageTag(r.last_heartbeat)}</td>
    <td><time datetime="${r.registered_at ?? ''}">${r.registered_at ?? '–'}</time></td></tr>`;
}

export function create(main) {
  const body = el('div');
  main.append(el('h1', {}, 'Services'), body);
  return {
    update(model) {
      const records = sortedInstances(model.instances);
      const names = new Set(records.map((r) => r.name)).size;
      patch(body, records.length === 0
        ? html`<p class="empty">No instance is registered.</p>`
        : html`${instanceTable(records, { testid: 'services', withName: true, caption: `${records.length} instances of ${names} services` })}
          <p class="note">A last heartbeat is the latest this registry forwarded, announced every 2 s.</p>`);
    },
  };
}
