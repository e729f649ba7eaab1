// Boot and routing. The server answers index.html for every page URL, so this module
// picks the view from the path, turns clicks on /ui/ links into History API
// navigation (no reload, the live model stays), and re-renders the current view at
// most once per animation frame however many changes arrive.
import { model, onChange, start } from './model.js';
import { age } from './format.js';
import { el } from './dom.js';
import * as overview from './views/overview.js';
import * as capabilities from './views/capabilities.js';
import * as capability from './views/capability.js';
import * as services from './views/services.js';
import * as graph from './views/graph.js';
import * as sync from './views/sync.js';

const ROUTES = [
  { pattern: /^\/ui\/?$/, view: overview, nav: '/ui/' },
  { pattern: /^\/ui\/capabilities\/?$/, view: capabilities, nav: '/ui/capabilities' },
  { pattern: /^\/ui\/capabilities\/(.+)$/, view: capability, nav: '/ui/capabilities', sub: true },
  { pattern: /^\/ui\/services\/?$/, view: services, nav: '/ui/services' },
  { pattern: /^\/ui\/graph\/?$/, view: graph, nav: '/ui/graph' },
  { pattern: /^\/ui\/sync\/?$/, view: sync, nav: '/ui/sync' },
];

const notFound = {
  create(main) {
    main.append(el('h1', {}, 'Page not found'),
      el('p', {}, 'This address is not a page of the dashboard. ', el('a', { href: '/ui/' }, 'Go to the overview'), '.'));
    return { update() {} };
  },
};

const main = document.getElementById('main');
const live = document.getElementById('live');
const notice = document.getElementById('notice');
let current = { update() {} };
let frame = 0;

function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // a malformed %-escape: show the path as typed
  }
}

function markNav(route) {
  for (const link of document.querySelectorAll('nav[aria-label="Main"] a')) {
    const here = route && link.getAttribute('href') === route.nav;
    if (here) link.setAttribute('aria-current', route.sub ? 'true' : 'page');
    else link.removeAttribute('aria-current');
  }
}

function show(moveFocus) {
  const path = location.pathname;
  const route = ROUTES.find((r) => r.pattern.test(path));
  const match = route ? path.match(route.pattern) : null;
  current.destroy?.();
  main.replaceChildren();
  current = (route ? route.view : notFound).create(main, { namespace: match?.[1] && decoded(match[1]) }, { navigate, schedule });
  markNav(route);
  const heading = main.querySelector('h1');
  document.title = `${heading.textContent} · chora registry`;
  if (model.loaded) current.update(model);
  if (moveFocus) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function navigate(path) {
  history.pushState(null, '', path);
  show(true);
  window.scrollTo(0, 0);
}

function render() {
  frame = 0;
  live.dataset.state = model.live;
  live.textContent = model.live === 'open' ? 'Live' : 'Connecting…';
  notice.hidden = !model.starting;
  notice.textContent = model.starting;
  if (model.loaded) current.update(model);
}

function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

// In-app links navigate without a reload; the rest (modifier keys, other origins,
// in-page anchors such as the skip link, static files) keep the browser's behaviour.
document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest('a[href]');
  if (!link || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui/')) return;
  if (url.pathname.startsWith('/ui/static/')) return;
  if (url.hash && url.pathname === location.pathname && url.search === location.search) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener('popstate', () => show(false));

// The one timer: ages tick without re-rendering anything else.
setInterval(() => {
  const now = Date.now();
  for (const time of document.querySelectorAll('[data-testid=age]')) {
    const text = age(time.dataset.ts, now);
    if (time.textContent !== text) time.textContent = text;
  }
}, 1000);

window.chora = { graph: graph.current, model };
onChange(schedule);
show(false);
render();
start();
