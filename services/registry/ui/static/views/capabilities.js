// Capabilities (/ui/capabilities): every capability with its health and live
// instances, narrowed by a search box and two filters. The filters live in the query
// string (?q=&type=&health=) so a filtered view can be bookmarked; typing only
// schedules a render (at most one per frame), and only the rows whose data changed are
// rebuilt (dom.js patchRows), so a change among 1,000 costs one row.
import { el, html, patchRows } from '../dom.js';
import { ageTag, capabilityHref, healthOf, status } from '../format.js';

const TYPES = ['all', 'service', 'pattern'];
const HEALTH = ['all', 'healthy', 'unhealthy', 'unknown', 'none'];

function select(id, testid, label, options, value) {
  const node = el('select', { id, 'data-testid': testid });
  node.append(...options.map((o) => el('option', { value: o }, o)));
  node.value = options.includes(value) ? value : 'all';
  return [el('label', { for: id }, label), node];
}

export function create(main, _params, ctx) {
  const query = new URLSearchParams(location.search);
  const search = el('input', { id: 'cap-search', type: 'search', 'data-testid': 'capability-search', autocomplete: 'off' });
  search.value = query.get('q') ?? '';
  const [typeLabel, type] = select('cap-type', 'capability-type', 'Type', TYPES, query.get('type'));
  const [healthLabel, health] = select('cap-health', 'capability-health', 'Health', HEALTH, query.get('health'));
  const form = el('form', { class: 'filters', role: 'search' },
    el('div', {}, el('label', { for: 'cap-search' }, 'Search namespace or title'), search),
    el('div', {}, typeLabel, type), el('div', {}, healthLabel, health));
  const summary = el('p', { role: 'status', class: 'summary' });
  const rows = el('tbody');
  const empty = el('p', { class: 'empty', hidden: '' }, 'No capability matches these filters.');
  const table = el('table', { class: 'data', 'data-testid': 'capabilities' });
  table.innerHTML = `<thead><tr><th scope="col">Namespace</th><th scope="col">Title</th><th scope="col">Type</th>
    <th scope="col">Version</th><th scope="col">Health</th><th scope="col">Health checked</th>
    <th scope="col">Live instances</th></tr></thead>`;
  table.append(rows);
  main.append(el('h1', {}, 'Capabilities'), form, summary, table, empty);

  const filters = () => ({ q: search.value.trim().toLowerCase(), type: type.value, health: health.value });

  function changed() {
    const { q, type: t, health: h } = filters();
    const params = new URLSearchParams();
    if (q) params.set('q', search.value.trim());
    if (t !== 'all') params.set('type', t);
    if (h !== 'all') params.set('health', h);
    const text = params.toString();
    history.replaceState(null, '', location.pathname + (text ? `?${text}` : ''));
    ctx.schedule();
  }
  form.addEventListener('submit', (event) => event.preventDefault());
  form.addEventListener('input', changed);
  form.addEventListener('change', changed);

  return {
    update(model) {
      const { q, type: t, health: h } = filters();
      const upByName = liveCounts(model.instances);
      const shown = [...model.capabilities.values()]
        .filter((c) => (t === 'all' || c.type === t) && (h === 'all' || healthOf(c) === h))
        .filter((c) => !q || c.namespace.toLowerCase().includes(q)
          || String(c.metadata?.dc_title ?? '').toLowerCase().includes(q))
        .sort((a, b) => (a.namespace < b.namespace ? -1 : 1));
      patchRows(rows, shown.map((c) => row(c, upByName.get(c.namespace) ?? 0)));
      const total = model.capabilities.size;
      summary.textContent = shown.length === total ? `${total} capabilities` : `Showing ${shown.length} of ${total} capabilities`;
      empty.hidden = shown.length > 0 || total === 0;
      table.hidden = shown.length === 0 && total > 0;
    },
  };
}

// Instances registered under a capability's namespace are those named after it.
export function liveCounts(instances) {
  const out = new Map();
  for (const r of instances.values()) if (r.status === 'up') out.set(r.name, (out.get(r.name) ?? 0) + 1);
  return out;
}

function row(c, live) {
  const word = healthOf(c);
  const sig = JSON.stringify([c.metadata?.dc_title, c.type, c.version, word, c.health?.timestamp, live]);
  return { key: c.namespace, sig, markup: html`<tr data-namespace="${c.namespace}" data-health="${word}">
    <th scope="row"><a href="${capabilityHref(c.namespace)}">${c.namespace}</a></th>
    <td>${c.metadata?.dc_title ?? ''}</td><td>${c.type ?? '–'}</td><td>${c.version ?? '–'}</td>
    <td>${status(word)}</td><td>${c.health ? ageTag(c.health.timestamp) : '–'}</td>
    <td class="num">${live}</td></tr>` };
}
