// How values read on every page: a status is always a word plus an icon (colour comes
// third, from CSS), times are ages that the app's one-second tick keeps current, and
// only http(s) interface URLs become links (a manifest could hold `javascript:`).
import { html } from './dom.js';

const ICONS = {
  up: '✓', healthy: '✓', satisfied: '✓', yes: '✓',
  unhealthy: '⚠', invalid: '⚠', no: '⚠',
  unknown: '?',
  none: '–', down: '–',
  unsatisfied: '✗', missing: '✗',
};

export function status(word) {
  const text = word || 'none';
  return html`<span class="status status-${text}"><span class="icon" aria-hidden="true">${ICONS[text] ?? '•'}</span> ${text}</span>`;
}

export function icon(word) {
  return ICONS[word] ?? '•';
}

// A capability's health as one of healthy / unhealthy / unknown / none (no record).
export function healthOf(capability) {
  const word = capability?.health?.status;
  if (!capability?.health) return 'none';
  return ['healthy', 'unhealthy', 'unknown'].includes(word) ? word : 'unknown';
}

export function age(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return '–';
  const seconds = Math.max(0, Math.round((now - then) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

// An age the tick in app.js updates in place (it finds them by data-testid).
export function ageTag(iso) {
  if (!iso) return html`<span>–</span>`;
  return html`<time data-testid="age" data-ts="${iso}" datetime="${iso}" title="${iso}">${age(iso)}</time>`;
}

export function bytes(n) {
  if (typeof n !== 'number') return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function isWebUrl(value) {
  try {
    return ['http:', 'https:'].includes(new URL(String(value)).protocol);
  } catch {
    return false;
  }
}

// {REST: "http://..."} as links named by the interface; anything else as plain text.
export function interfaces(record) {
  const entries = Object.entries(record?.interfaces ?? {});
  if (entries.length === 0) return html`<span class="muted">none</span>`;
  return entries.map(([name, url], i) => html`${i ? ', ' : ''}${isWebUrl(url)
    ? html`<a href="${url}" title="${url}">${name}</a>`
    : html`<span title="${name}">${name}: ${url}</span>`}`);
}

export const capabilityHref = (ns) => `/ui/capabilities/${encodeURIComponent(ns)}`;

// A value of free-form metadata: text as is, lists of text joined, anything else JSON.
export function plain(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value !== 'object') return String(value);
  if (Array.isArray(value) && value.every((v) => typeof v !== 'object')) return value.join(', ');
  return JSON.stringify(value);
}
