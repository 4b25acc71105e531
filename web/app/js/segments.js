// Segments: the app's label names and values (from GET /info/), their colours, and the
// label_info a submit sends. Names come from the server and are shown with textContent only;
// ``escapeHtml`` is for the one place text is put into markup (none today, kept tested).

// Distinct colours, the first ones Slicer's generic anatomy colours would give.
const PALETTE = [
  [241, 214, 145], [177, 122, 101], [111, 184, 210], [216, 101, 79], [221, 130, 101],
  [144, 238, 144], [192, 104, 88], [220, 245, 20], [78, 63, 0], [255, 250, 220],
  [230, 220, 70], [200, 200, 235], [250, 250, 210], [244, 214, 49], [0, 151, 206],
  [183, 156, 220], [183, 214, 211], [152, 189, 207], [178, 212, 242], [68, 172, 100],
];

export function colourOf(value) {
  return PALETTE[(value - 1) % PALETTE.length];
}

// [{name, value, colour}] sorted by value, from /info/'s "labels" (a {name: value} object, or a
// list of names numbered from 1 as MONAI Label also allows).
export function segmentsFromInfo(info) {
  const labels = (info && info.labels) || {};
  let pairs;
  if (Array.isArray(labels)) pairs = labels.map((name, n) => [String(name), n + 1]);
  else pairs = Object.entries(labels).map(([name, value]) => [String(name), Number(value)]);
  return pairs
    .filter(([, value]) => Number.isInteger(value) && value > 0 && value < 256)
    .sort((a, b) => a[1] - b[1])
    .map(([name, value]) => ({ name, value, colour: colourOf(value) }));
}

// NiiVue's drawing colour table: 256 RGBA entries, 0 transparent.
export function drawColormap(segments) {
  const R = new Array(256).fill(0);
  const G = new Array(256).fill(0);
  const B = new Array(256).fill(0);
  const A = new Array(256).fill(0);
  const labels = new Array(256).fill('');
  for (const s of segments) {
    [R[s.value], G[s.value], B[s.value]] = s.colour;
    A[s.value] = 255;
    labels[s.value] = s.name;
  }
  return { R, G, B, A, labels };
}

// label_info of PUT /datastore/label: every segment of the app, so a structure left empty is
// absent rather than unnamed (the same as MedSeg's Slicer module sends).
export function labelInfo(segments) {
  return segments.map((s) => ({ name: s.name, idx: s.value }));
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;',
    "'": '&#39;' }[c]));
}

// The models a user can segment with, and the interactive ones, from /info/'s "models".
export function modelsFromInfo(info) {
  const models = (info && info.models) || {};
  const automatic = [];
  const interactive = [];
  for (const [name, model] of Object.entries(models)) {
    const type = String((model && model.type) || '');
    if (type === 'deepgrow' || type === 'deepedit' || name === 'interactive') interactive.push(name);
    else automatic.push(name);
  }
  return { automatic, interactive };
}

// The strategy the server marks as its measured default comes first, so the menu preselects it.
export function strategiesFromInfo(info) {
  const strategies = (info && info.strategies) || {};
  const isDefault = (name) => Boolean(strategies[name] && strategies[name].default === true);
  const names = Object.keys(strategies);
  return [...names.filter(isDefault), ...names.filter((name) => !isDefault(name))];
}
