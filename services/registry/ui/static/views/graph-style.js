// How the graph looks and is laid out. Health is carried by colour AND shape AND the
// icon in the label, so colour is never the only clue; problem edges are red, dashed and
// labelled with the range they fail; cycle edges are thick and purple. Labels fade out
// when zoomed far out, which keeps 1,000 nodes readable and fast.

const HEALTH = {
  healthy: { 'background-color': '#2e7d32', shape: 'ellipse' },
  unhealthy: { 'background-color': '#c62828', shape: 'diamond' },
  unknown: { 'background-color': '#f9a825', shape: 'round-rectangle' },
  none: { 'background-color': '#bdbdbd', shape: 'hexagon' },
};

export const STYLE = [
  { selector: 'node', style: {
    label: 'data(display)', 'font-size': 12, color: '#1a1a1a', 'text-valign': 'bottom', 'text-margin-y': 4,
    'text-background-color': '#ffffff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
    width: 22, height: 22, 'border-width': 2, 'border-color': '#1a1a1a', 'min-zoomed-font-size': 5,
  } },
  ...Object.entries(HEALTH).map(([word, style]) => ({ selector: `node.health-${word}`, style })),
  { selector: 'node.missing', style: {
    'background-color': '#ffffff', 'border-style': 'dashed', 'border-color': '#b3261e', shape: 'rectangle', color: '#b3261e',
  } },
  { selector: 'node:selected', style: { 'border-width': 4, 'border-color': '#0b57d0' } },
  { selector: 'edge', style: {
    width: 1.5, 'line-color': '#616161', 'target-arrow-color': '#616161', 'target-arrow-shape': 'triangle',
    'curve-style': 'bezier', label: 'data(label)', 'font-size': 9, color: '#333333', 'text-rotation': 'autorotate',
    'text-background-color': '#ffffff', 'text-background-opacity': 0.85, 'min-zoomed-font-size': 8,
  } },
  { selector: 'edge.problem', style: {
    'line-color': '#b3261e', 'target-arrow-color': '#b3261e', 'line-style': 'dashed', color: '#b3261e',
  } },
  { selector: 'edge.cycle', style: { width: 4, 'line-color': '#6a1b9a', 'target-arrow-color': '#6a1b9a' } },
  { selector: '.hidden', style: { display: 'none' } },
];

// cose (force-directed) reads best but costs O(n²) per step: beyond ~300 nodes a grid
// sorted by namespace is instant and still navigable with the focus box. cose is given
// a box of the canvas's shape (grown with the node count), or it draws tall and thin.
export const gridded = (count) => count > 300; // cose beyond this costs seconds

export function layout(cy) {
  const count = cy.nodes().length;
  if (!gridded(count)) {
    const scale = Math.max(1, Math.sqrt(count / 30)); // ~50 nodes: labels stay legible
    return { name: 'cose', animate: false, randomize: true, fit: true, padding: 30, nodeDimensionsIncludeLabels: true,
      idealEdgeLength: () => 100, nodeRepulsion: () => 400000, edgeElasticity: () => 100, gravity: 40,
      boundingBox: { x1: 0, y1: 0, w: cy.width() * scale, h: cy.height() * scale } };
  }
  return { name: 'grid', animate: false, fit: true, padding: 30, avoidOverlap: true, sort: (a, b) => (a.id() < b.id() ? -1 : 1) };
}

// A focused node in the middle, its neighbours on a ring around it (large graphs).
export function focusLayout(node) {
  return { name: 'concentric', animate: false, fit: false, avoidOverlap: true, minNodeSpacing: 150,
    concentric: (n) => (n.same(node) ? 2 : 1), levelWidth: () => 1 };
}
