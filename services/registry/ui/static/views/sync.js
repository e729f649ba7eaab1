// Sync problems (/ui/sync): what the gitops sync refused or would not touch in its last
// run, straight from /chora/sync/status: rejected manifest files with the reason,
// capabilities in etcd that no manifest owns, and prunes it held back.
import { el, html, patch } from '../dom.js';
import { commitHtml } from './overview.js';

export function create(main) {
  const body = el('div');
  main.append(el('h1', {}, 'Sync problems'), body);
  return {
    update(model) {
      patch(body, page(model.sync));
    },
  };
}

function page(sync) {
  if (!sync) return html`<p class="muted">Sync status not available yet.</p>`;
  if (!sync.present) return html`<p class="empty">No sync status yet: the gitops sync has not reported a run.</p>`;
  const errors = sync.errors ?? [];
  const unowned = sync.unowned ?? [];
  const held = sync.prunes_held ?? [];
  return html`${commitHtml(sync)}
    <h2>Rejected manifests</h2>
    ${errors.length ? html`<table class="data" data-testid="sync-errors">
      <caption>${errors.length === 1 ? '1 file' : `${errors.length} files`} rejected by the last sync</caption>
      <thead><tr><th scope="col">File</th><th scope="col">Namespace</th><th scope="col">Reason</th></tr></thead>
      <tbody>${errors.map((e) => html`<tr data-file="${e.file}">
        <th scope="row"><code>${e.file}${e.line ? `:${e.line}:${e.column ?? 1}` : ''}</code></th><td>${e.namespace ?? '–'}</td><td class="reason">${e.reason}</td></tr>`)}</tbody>
    </table>` : html`<p class="empty ok"><span aria-hidden="true">✓</span> No rejected manifests: every file in the last sync was accepted.</p>`}
    ${unowned.length ? html`<h2>Unowned capabilities</h2>
      <p>In etcd, but no manifest declares them (the sync leaves them alone):</p>
      <ul data-testid="sync-unowned">${unowned.map((ns) => html`<li><code>${ns}</code></li>`)}</ul>` : ''}
    ${held.length || sync.prune_refusal ? html`<h2>Prunes held back</h2>
      ${sync.prune_refusal ? html`<p class="warning">${sync.prune_refusal}</p>` : ''}
      <ul data-testid="sync-prunes-held">${held.map((ns) => html`<li><code>${ns}</code></li>`)}</ul>` : ''}`;
}
