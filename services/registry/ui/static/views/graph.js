// Graph (/ui/graph): the dependency graph on a Cytoscape canvas, kept in place as the
// model changes: elements are added, removed or restyled, and only new nodes are
// placed (beside a neighbour), so a live change never scrambles what the reader is
// looking at. A text list below says the same for keyboards and screen readers.
import { el, html, patch } from '../dom.js';
import { capabilityHref } from '../format.js';
import { graphElements, graphList } from './graph-data.js';
import { STYLE, focusLayout, gridded, layout } from './graph-style.js';

const MAX_FOCUS_ZOOM = 1.2;
const BULK = 10; // more new nodes than this at once (a resync): lay everything out again

let cy = null;
export const current = () => cy;

export function create(main, _params, ctx) {
  const focusInput = el('input', { id: 'graph-focus', type: 'search', list: 'graph-namespaces', 'data-testid': 'graph-focus', autocomplete: 'off' });
  const namespaces = el('datalist', { id: 'graph-namespaces' });
  const showAll = el('button', { type: 'button' }, 'Show all');
  const fit = el('button', { type: 'button' }, 'Fit');
  const form = el('form', { class: 'filters', role: 'search' },
    el('div', {}, el('label', { for: 'graph-focus' }, 'Focus on a capability'), focusInput, namespaces),
    el('div', { class: 'buttons' }, showAll, fit));
  const summary = el('p', { role: 'status', class: 'summary' });
  const container = el('div', { id: 'graph', tabindex: '0', role: 'region',
    'aria-label': 'Dependency graph canvas: drag to pan, scroll or + and - to zoom, arrow keys to pan. The same nodes and edges are listed as text below, under "Nodes and edges".' });
  const list = el('ul', { 'data-testid': 'graph-list', class: 'graph-list', 'aria-labelledby': 'graph-list-title' });
  main.append(el('h1', {}, 'Dependency graph'), form, legend(), summary, container,
    el('h2', { id: 'graph-list-title' }, 'Nodes and edges'), list);

  let focused = '';
  const unplaced = new Set(); // added with no neighbour on the canvas yet

  function applyFocus() {
    const node = focused ? cy.getElementById(focused) : cy.collection();
    cy.batch(() => {
      if (node.empty()) cy.elements().removeClass('hidden');
      else {
        cy.elements().addClass('hidden');
        node.closedNeighborhood().removeClass('hidden');
      }
    });
    return node;
  }

  function describe() {
    const problems = cy.edges('.problem').length;
    const cycles = cy.edges('.cycle').length;
    const node = focused && cy.getElementById(focused);
    summary.textContent = node && node.nonempty()
      ? `Showing ${focused} and its ${node.neighborhood('node').length} neighbours.`
      : `${focused ? `No capability "${focused}". ` : ''}All ${cy.nodes().length} nodes, ${cy.edges().length} dependencies: ${problems} not satisfied, ${cycles} in cycles.`;
  }

  // In a grid (large graphs) a node's neighbours sit rows apart: focusing lays the
  // neighbourhood out in rings around it, and "Show all" puts the grid back.
  let regrouped = false;
  function focusOn(ns) {
    focused = ns;
    const node = applyFocus();
    if (node.nonempty() && gridded(cy.nodes().length)) {
      node.closedNeighborhood().nodes().layout(focusLayout(node)).run();
      regrouped = true;
    } else if (node.empty() && regrouped) {
      cy.layout(layout(cy)).run();
      regrouped = false;
    }
    const shown = node.nonempty() ? node.closedNeighborhood() : cy.elements();
    cy.fit(shown, 40);
    if (cy.zoom() > MAX_FOCUS_ZOOM) { // a handful of nodes: not blown up to fill the canvas
      cy.zoom(MAX_FOCUS_ZOOM);
      cy.center(shown);
    }
    describe();
  }

  function start(count) {
    const big = gridded(count);
    cy = window.cytoscape({ container, style: STYLE, minZoom: 0.02, maxZoom: 4, boxSelectionEnabled: false,
      textureOnViewport: big, hideEdgesOnViewport: big });
    cy.on('tap', 'node', (event) => {
      focusInput.value = event.target.id();
      focusOn(event.target.id());
    });
    cy.on('dbltap', 'node', (event) => ctx.navigate(capabilityHref(event.target.id())));
  }

  focusInput.addEventListener('input', () => {
    if (cy && (focusInput.value === '' || cy.getElementById(focusInput.value).nonempty())) focusOn(focusInput.value);
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (cy) focusOn(focusInput.value.trim());
  });
  showAll.addEventListener('click', () => {
    focusInput.value = '';
    if (cy) focusOn('');
  });
  fit.addEventListener('click', () => cy?.fit(cy.elements(':visible'), 30));
  container.addEventListener('keydown', (event) => keys(event));

  return {
    update(model) {
      const wanted = graphElements(model);
      patch(namespaces, html`${[...wanted.nodes.keys()].sort().map((id) => html`<option value="${id}"></option>`)}`);
      patch(list, graphList(wanted));
      if (!library(ctx.schedule)) return; // drawn once the library has loaded
      if (!cy && !model.dependencies) return; // laid out once, with its edges
      const first = !cy;
      if (first) start(wanted.nodes.size);
      const added = apply(wanted, first, unplaced);
      if (first || added > BULK) {
        unplaced.clear();
        cy.layout(layout(cy)).run();
      } else placeBesideNeighbours(unplaced);
      applyFocus();
      describe();
    },
    destroy() {
      cy?.destroy();
      cy = null;
    },
  };
}

// Cytoscape (~400 KB) is loaded by the graph page only, the first time it is shown:
// the other pages, the 1,000-row tables above all, neither parse it nor hold it.
let loading = null;
function library(whenLoaded) {
  if (window.cytoscape) return true;
  loading ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement('script'), { src: '/ui/static/vendor/cytoscape.min.js' });
    script.addEventListener('load', resolve);
    script.addEventListener('error', () => reject(new Error('the graph library did not load')));
    document.head.append(script);
  });
  loading.then(whenLoaded);
  return false;
}

// Make the canvas match `wanted`; returns how many nodes were added. New elements are
// added in one call (one by one costs seconds at 1,000 nodes).
function apply({ nodes, edges }, first, unplaced) {
  const fresh = [];
  cy.batch(() => {
    cy.edges().filter((e) => !edges.has(e.id())).remove();
    cy.nodes().filter((n) => !nodes.has(n.id())).remove();
    for (const [id, spec] of [...nodes, ...edges]) {
      const ele = cy.getElementById(id);
      if (ele.empty()) fresh.push(spec.group === 'nodes' ? { ...spec, position: viewportCentre() } : spec);
      else if (ele.data('sig') !== spec.data.sig) {
        ele.data(spec.data);
        ele.classes(spec.classes);
      }
    }
    cy.add(fresh);
  });
  const added = fresh.filter((spec) => spec.group === 'nodes');
  if (!first) added.forEach((spec) => unplaced.add(spec.data.id));
  return added.length;
}

function viewportCentre() {
  const { x1, x2, y1, y2 } = cy.extent();
  return { x: (x1 + x2) / 2 + (Math.random() - 0.5) * 80, y: (y1 + y2) / 2 + (Math.random() - 0.5) * 80 };
}

// A new node goes next to a neighbour that already has a place (its edges may come a
// moment after it, with the next read of /v1/dependencies).
function placeBesideNeighbours(unplaced) {
  for (const id of [...unplaced]) {
    const node = cy.getElementById(id);
    const anchor = node.neighborhood('node').filter((n) => !unplaced.has(n.id()))[0];
    if (node.empty()) unplaced.delete(id);
    else if (anchor) {
      const { x, y } = anchor.position();
      node.position({ x: x + (Math.random() - 0.5) * 120, y: y + 60 + Math.random() * 40 });
      unplaced.delete(id);
    }
  }
}

function keys(event) {
  if (!cy) return;
  const step = 60;
  const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  const centre = { x: cy.width() / 2, y: cy.height() / 2 };
  if (moves[event.key]) cy.panBy({ x: moves[event.key][0], y: moves[event.key][1] });
  else if (event.key === '+' || event.key === '=') cy.zoom({ level: cy.zoom() * 1.2, renderedPosition: centre });
  else if (event.key === '-') cy.zoom({ level: cy.zoom() / 1.2, renderedPosition: centre });
  else return;
  event.preventDefault();
}

function legend() {
  const item = (cls, mark, text) => el('li', {}, el('span', { class: `swatch ${cls}`, 'aria-hidden': 'true' }, mark), ` ${text}`);
  return el('ul', { class: 'legend', 'aria-label': 'Legend' },
    item('healthy', '✓', 'healthy (circle)'), item('unhealthy', '⚠', 'unhealthy (diamond)'),
    item('unknown', '?', 'unknown (rounded square)'), item('none', '–', 'no health record (hexagon)'),
    item('missing', '✗', 'missing: named by a dependency, not declared (dashed square)'),
    item('problem', '', 'dependency not satisfied (red dashed edge, labelled with the range)'),
    item('cycle', '', 'dependency cycle (thick purple edge)'));
}
