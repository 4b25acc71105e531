// The page: wires the DOM to the tested modules (api, label_volume, guidance, segments, nifti,
// grid_mapping) and to the views. Text from the server is only ever set as textContent.

import { MedSegApi } from './api.js';
import { LabelVolume, answerRegion } from './label_volume.js';
import { GuidedEdit } from './guidance.js';
import { segmentsFromInfo, modelsFromInfo, strategiesFromInfo, labelInfo } from './segments.js';
import { readLabel, writeLabel } from './nifti.js';
import { ImageView, CT_PRESETS, windowOf } from './view.js';

const TOKEN_KEY = 'medseg.token'; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

const state = {
  api: new MedSegApi(''),
  view: null,
  info: null,
  segments: [],
  models: { automatic: [], interactive: [] },
  imageId: null,
  grid: null,
  label: null,
  edit: null,
  segment: null, // the selected segment {name, value, colour}
  openedAt: 0,
  interactions: 0,
  dirty: false,
  busy: 0,
  trainTimer: null,
  labelTags: {}, // image id -> the tags of its stored labels, from the last listing
  timings: [], // per guided edit and image load, for bench/viewer.py: milliseconds of each part
};

// ---------------------------------------------------------------- messages
function showError(error) {
  const box = $('error');
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function status(text) {
  $('status').textContent = text;
}

async function guarded(what, work) {
  state.busy += 1;
  document.body.dataset.busy = String(state.busy);
  status(`${what}…`);
  try {
    clearError();
    const result = await work();
    return result;
  } catch (e) {
    showError(e);
    status(`${what} failed`);
    return undefined;
  } finally {
    state.busy -= 1;
    document.body.dataset.busy = String(state.busy);
    refreshButtons();
  }
}

// ---------------------------------------------------------------- login
async function start() {
  state.api.onUnauthorized = () => showLogin();
  $('server-line').textContent = window.location.host;
  $('login-form').addEventListener('submit', (e) => { e.preventDefault(); login(); });
  $('logout-button').addEventListener('click', logout);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) state.api.token = saved;
  let needsLogin = false;
  try {
    needsLogin = await state.api.authEnabled() && !saved;
  } catch (e) {
    showError(e);
    return;
  }
  if (needsLogin) showLogin();
  else await enterWorkspace();
}

function showLogin() {
  $('workspace').hidden = true;
  $('login-panel').hidden = false;
  $('logout-button').hidden = true;
  $('username').focus();
}

async function login() {
  try {
    clearError();
    await state.api.login($('username').value, $('password').value);
    sessionStorage.setItem(TOKEN_KEY, state.api.token);
    $('password').value = '';
    $('user-line').textContent = $('username').value;
    await enterWorkspace();
  } catch (e) {
    showError(e);
  }
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.api.token = null;
  $('user-line').textContent = '';
  showLogin();
}

// ---------------------------------------------------------------- workspace
async function enterWorkspace() {
  const info = await guarded('Reading the server', () => state.api.info());
  if (!info) return;
  state.info = info;
  state.segments = segmentsFromInfo(info);
  state.models = modelsFromInfo(info);
  $('login-panel').hidden = true;
  $('workspace').hidden = false;
  $('logout-button').hidden = !state.api.token;
  fillSelect($('strategy'), strategiesFromInfo(info));
  fillSelect($('model'), state.models.automatic);
  fillSelect($('train-model'), Object.keys(info.trainers || {}));
  const interactive = (info.models || {})[state.models.interactive[0]] || {};
  const methods = ((interactive.config || {}).method) || [];
  fillSelect($('method'), ['default', ...(Array.isArray(methods) ? methods : [])]);
  renderSegments();
  if (!state.view) {
    state.view = new ImageView($('gl'));
    await state.view.attach();
    state.view.onPoint = (voxel) => guidedClick(voxel);
    state.view.onBox = (a, b) => guidedBox(a, b);
    state.view.onStroke = (points, plane) => brushStroke(points, plane);
    bindControls();
  }
  state.view.setSegments(state.segments);
  await refreshImages();
  window.medsegViewer = { state, view: state.view, openImage }; // for automation and the browser tests
}

function fillSelect(select, values) {
  select.replaceChildren(...values.map((v) => {
    const option = document.createElement('option');
    option.value = v;
    option.textContent = v;
    return option;
  }));
}

function renderSegments() {
  const list = $('segments');
  list.replaceChildren(...state.segments.map((s, n) => {
    const item = document.createElement('li');
    const label = document.createElement('label');
    const radio = document.createElement('input');
    radio.type = 'radio';
    radio.name = 'segment';
    radio.value = String(s.value);
    radio.checked = n === 0;
    radio.addEventListener('change', () => selectSegment(s));
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = `rgb(${s.colour.join(',')})`;
    const name = document.createElement('span');
    name.textContent = s.name;
    label.append(radio, swatch, name);
    item.append(label);
    return item;
  }));
  state.segment = state.segments[0] || null;
}

function selectSegment(segment) {
  state.segment = segment;
  state.edit = null; // clicks belong to one segment's edit
}

function bindControls() {
  $('refresh-images').addEventListener('click', refreshImages);
  $('next-image').addEventListener('click', nextImage);
  $('segment-button').addEventListener('click', segmentWithModel);
  $('submit').addEventListener('click', submit);
  $('undo').addEventListener('click', () => undoRedo('undo'));
  $('redo').addEventListener('click', () => undoRedo('redo'));
  $('new-edit').addEventListener('click', () => { state.edit = null; status('The next click starts a new edit'); });
  $('opacity').addEventListener('input', labelStyle);
  $('outline').addEventListener('change', labelStyle);
  $('show-version').addEventListener('click', showVersion);
  $('diff-version').addEventListener('click', diffVersion);
  $('restore-version').addEventListener('click', restoreVersion);
  $('versions').addEventListener('change', refreshButtons);
  $('train-start').addEventListener('click', trainStart);
  $('train-stop').addEventListener('click', trainStop);
  for (const radio of document.querySelectorAll('input[name=tool]')) {
    radio.addEventListener('change', () => state.view.setMode(radio.value));
  }
  document.addEventListener('keydown', (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.target instanceof HTMLInputElement) return;
    if (e.key === 'z') { e.preventDefault(); undoRedo('undo'); }
    if (e.key === 'y') { e.preventDefault(); undoRedo('redo'); }
  });
}

function refreshButtons() {
  const open = Boolean(state.label);
  $('segment-button').disabled = !open || !state.models.automatic.length;
  $('submit').disabled = !open;
  $('undo').disabled = !open || !state.label.undoStack.length;
  $('redo').disabled = !open || !state.label.redoStack.length;
  const version = $('versions').value;
  for (const id of ['show-version', 'diff-version', 'restore-version']) $(id).disabled = !open || !version;
}

// ---------------------------------------------------------------- images
async function refreshImages() {
  const store = await guarded('Listing the images', () => state.api.datastore());
  if (!store) return;
  state.labelTags = {};
  const rows = Object.entries(store.objects || {}).map(([id, object]) => {
    const labels = (object && object.labels) || {};
    state.labelTags[id] = Object.keys(labels);
    const row = document.createElement('tr');
    row.dataset.image = id;
    if (id === state.imageId) row.className = 'open';
    const versions = ((labels.final || {}).info || {}).version;
    for (const text of [id, Object.keys(labels).join(', ') || '—', versions === undefined ? '' : `v${versions}`]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      cell.title = text; // a PACS id (a series UID) is longer than the column
      row.append(cell);
    }
    row.addEventListener('click', () => openImage(id));
    return row;
  });
  $('images-table').querySelector('tbody').replaceChildren(...rows);
  status(`${rows.length} images`);
}

async function nextImage() {
  const id = await guarded('Asking for the next image', () => state.api.nextImage($('strategy').value));
  if (id === null) status('No image left to label');
  else if (id) await openImage(id);
}

async function openImage(imageId) {
  if (state.dirty && !window.confirm('Your edits to this image are not submitted. Open another image anyway?')) return;
  await guarded(`Opening ${imageId}`, async () => {
    const startedAt = performance.now();
    const file = await state.api.imageFile(imageId);
    const fetchedAt = performance.now();
    state.grid = await state.view.show(file.bytes, file.name);
    state.timings.push({ what: 'load', fetch_ms: fetchedAt - startedAt, show_ms: performance.now() - fetchedAt,
      bytes: file.bytes.length });
    state.imageId = imageId;
    state.label = new LabelVolume(state.grid);
    state.edit = null;
    state.dirty = false;
    state.interactions = 0;
    state.openedAt = performance.now();
    $('image-title').textContent = `${imageId} (${state.grid.dims.join(' × ')} voxels, `
      + `${state.grid.spacingMm.map((s) => s.toFixed(2)).join(' × ')} mm)`;
    windowPresets();
    state.view.setLabelStyle(Number($('opacity').value), $('outline').checked, false);
    await loadVersions();
    // A folder datastore keeps versions; a PACS only the final label (as a DICOM SEG).
    if ($('versions').value || (state.labelTags[imageId] || []).includes('final')) {
      await loadStoredLabel(() => state.api.labelBytes(imageId, 'final'), 'final label');
    }
    for (const row of $('images-table').querySelectorAll('tbody tr')) {
      row.className = row.dataset.image === imageId ? 'open' : '';
    }
    status(`Opened ${imageId}`);
  });
}

function windowPresets() {
  const holder = $('window-presets');
  const buttons = [];
  const add = (name, apply) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = name;
    b.addEventListener('click', apply);
    buttons.push(b);
  };
  // The view opened the image with the first of these already applied.
  if (state.view.isCT()) {
    for (const [name, [centre, width]] of Object.entries(CT_PRESETS)) add(name, () => state.view.setWindow(...windowOf(centre, width)));
  } else {
    add('auto', () => state.view.autoWindow());
  }
  holder.replaceChildren(...buttons);
}

function labelStyle() {
  if (state.view) state.view.setLabelStyle(Number($('opacity').value), $('outline').checked);
}

function showLabel() {
  state.view.showLabel(state.label.values);
  refreshButtons();
}

function checkGrid(answer, what) {
  if (answer.dims.join() !== state.grid.dims.join()) {
    throw new Error(`${what} is ${answer.dims.join('×')} voxels, the image ${state.grid.dims.join('×')}`);
  }
}

async function loadStoredLabel(fetchBytes, what) {
  const answer = await readLabel(await fetchBytes());
  checkGrid(answer, `the ${what}`);
  state.label.replaceAll(what, answer.values);
  showLabel();
}

// ---------------------------------------------------------------- segmentation and guided editing
async function segmentWithModel() {
  const model = $('model').value;
  const imageId = state.imageId;
  await guarded(`Segmenting with ${model}`, async () => {
    const answer = await state.api.infer(model, imageId, {});
    if (imageId !== state.imageId) return;
    const label = await readLabel(answer.bytes);
    checkGrid(label, `${model}'s answer`);
    state.label.replaceAll(`${model} prediction`, label.values);
    state.edit = null;
    touched();
    showLabel();
    status(`Segmented with ${model}`);
  });
}

function currentEdit() {
  const method = $('method').value === 'default' ? null : $('method').value;
  if (!state.edit || state.edit.segmentName !== state.segment.name || state.edit.imageId !== state.imageId) {
    state.edit = new GuidedEdit(state.imageId, state.segment.name, method);
  }
  state.edit.method = method;
  return state.edit;
}

async function guidedClick(voxel) {
  if (!state.label || !state.segment) return;
  const foreground = state.view.mode === 'foreground';
  currentEdit().addClick(voxel, foreground);
  await askGuided(`${foreground ? 'Foreground' : 'Background'} click at ${voxel.join(', ')}`);
}

async function guidedBox(a, b) {
  if (!state.label || !state.segment) return;
  state.edit = null; // a box starts the object again
  currentEdit().setBox(a, b);
  await askGuided(`Box ${a.join(', ')} – ${b.join(', ')}`);
}

// One request of an edit at a time: clicks made while it runs wait, and go together in the next
// request, so answers land in the order the server computed them and its memory of the edit
// always matches the segment on screen.
async function askGuided(what) {
  const edit = state.edit;
  const model = state.models.interactive[0];
  if (!model) {
    showError('this server serves no interactive model');
    return;
  }
  if (edit.inFlight) {
    edit.pending = what;
    return;
  }
  edit.inFlight = true;
  try {
    await guarded(what, () => guidedRequest(edit, model, what));
  } finally {
    edit.inFlight = false;
  }
  if (edit.pending && edit === state.edit) {
    const next = edit.pending;
    edit.pending = null;
    await askGuided(next);
  }
}

async function guidedRequest(edit, model, what) {
  const startedAt = performance.now();
  const segment = state.segment;
  let request = edit.snapshot();
  const prior = request.needsPrior ? await writeLabel(state.grid, state.label.values) : null;
  const priorAt = performance.now();
  let answer;
  try {
    answer = await state.api.infer(model, request.imageId, request.params, prior);
  } catch (e) {
    if (e.status !== 409) throw e;
    edit.forgotten(); // the server no longer holds the edit: send the segment again
    request = edit.snapshot();
    answer = await state.api.infer(model, request.imageId, request.params,
      await writeLabel(state.grid, state.label.values));
  }
  const answeredAt = performance.now();
  if (!edit.isCurrent(request, state.imageId, state.segment && state.segment.name) || edit !== state.edit) {
    return; // another image, segment or edit is on screen now
  }
  edit.answered();
  const result = await readLabel(answer.bytes);
  const region = answerRegion(answer.params, state.grid.dims);
  state.label.pasteAnswer(region, result.values, segment.value);
  touched();
  showLabel();
  const shownAt = performance.now();
  state.timings.push({ what: 'guided', prior_ms: priorAt - startedAt, request_ms: answeredAt - priorAt,
    overlay_ms: shownAt - answeredAt, total_ms: shownAt - startedAt, prior_bytes: prior ? prior.length : 0,
    answer_bytes: answer.bytes.length, server_infer_s: (answer.params.latencies || {}).infer ?? null });
  const seconds = answer.params.latencies ? answer.params.latencies.infer : null;
  status(`${what}: ${answer.params.object_voxels ?? '?'} voxels in ${segment.name}`
    + `${seconds !== null ? ` (${seconds} s)` : ''}`);
}

function brushStroke(points, plane) {
  if (!state.label || !state.segment) return;
  const radius = Math.max(0.5, Number($('brush-mm').value) || 3);
  const erase = state.view.mode === 'eraser';
  const changed = state.label.paintStroke(points, radius, erase ? 0 : state.segment.value,
    { plane, segment: erase ? state.segment.value : null });
  state.edit = null; // the server's memo of the clicks no longer holds what is on screen
  touched();
  showLabel();
  status(`${erase ? 'Erased' : 'Painted'} ${changed} voxels of ${state.segment.name}`);
}

function undoRedo(which) {
  if (!state.label) return;
  const what = which === 'undo' ? state.label.undo() : state.label.redo();
  if (what) {
    state.edit = null;
    touched();
    showLabel();
    status(`${which === 'undo' ? 'Undid' : 'Redid'} ${what}`);
  }
}

function touched() {
  state.interactions += 1;
  state.dirty = true;
}

// ---------------------------------------------------------------- submit and versions
async function submit() {
  const imageId = state.imageId;
  await guarded(`Submitting ${imageId}`, async () => {
    const bytes = await writeLabel(state.grid, state.label.values);
    const effort = { interactions: state.interactions,
      seconds: Math.round((performance.now() - state.openedAt) / 100) / 10 };
    await state.api.submitLabel(imageId, bytes, labelInfo(state.segments), effort);
    state.dirty = false;
    await loadVersions();
    await refreshImages();
    status(`Submitted ${imageId} as final (${$('versions').value ? `version ${$('versions').value}` : 'stored'})`);
  });
}

async function loadVersions() {
  let versions = [];
  try {
    versions = (await state.api.labelVersions(state.imageId)).versions || [];
  } catch (e) {
    if (e.status !== 404 && e.status !== 501) throw e; // no versions kept: a PACS datastore
  }
  const select = $('versions');
  select.replaceChildren(...versions.slice().reverse().map((v) => {
    const option = document.createElement('option');
    option.value = String(v.version);
    const effort = v.effort ? `, ${v.effort.interactions ?? '?'} interactions, ${v.effort.seconds ?? '?'} s` : '';
    option.textContent = `v${v.version} ${v.time || ''}${effort}`;
    return option;
  }));
  refreshButtons();
}

async function showVersion() {
  const version = $('versions').value;
  await guarded(`Showing version ${version}`, () => loadStoredLabel(
    () => state.api.labelVersionBytes(state.imageId, version), `version ${version}`));
}

async function diffVersion() {
  const version = $('versions').value;
  await guarded(`Comparing with version ${version}`, async () => {
    const stored = await readLabel(await state.api.labelVersionBytes(state.imageId, version));
    checkGrid(stored, `version ${version}`);
    const lines = diffLines(stored.values, state.label.values);
    $('diff-result').textContent = lines.length ? `Against v${version}: ${lines.join('; ')}` : `Same as v${version}`;
  });
}

// Per segment: voxels the current label adds and removes against ``stored``.
export function diffLines(stored, current) {
  const added = new Map();
  const removed = new Map();
  for (let x = 0; x < current.length; x += 1) {
    if (stored[x] !== current[x]) {
      if (current[x]) added.set(current[x], (added.get(current[x]) || 0) + 1);
      if (stored[x]) removed.set(stored[x], (removed.get(stored[x]) || 0) + 1);
    }
  }
  return state.segments.filter((s) => added.has(s.value) || removed.has(s.value))
    .map((s) => `${s.name} +${added.get(s.value) || 0} −${removed.get(s.value) || 0} voxels`);
}

async function restoreVersion() {
  const version = $('versions').value;
  await guarded(`Restoring version ${version}`, async () => {
    await state.api.restoreLabelVersion(state.imageId, version);
    await loadVersions();
    await refreshImages();
    await loadStoredLabel(() => state.api.labelBytes(state.imageId, 'final'), 'final label');
    state.dirty = false;
    status(`Version ${version} is the final label again`);
  });
}

// ---------------------------------------------------------------- training
async function trainStart() {
  const model = $('train-model').value;
  const answer = await guarded(`Starting training of ${model}`, () => state.api.trainStart(model, {}));
  if (answer !== undefined) pollTraining();
}

async function trainStop() {
  await guarded('Stopping training', () => state.api.trainStop());
  pollTraining();
}

function pollTraining() {
  clearTimeout(state.trainTimer);
  const tick = async () => {
    try {
      const answer = await state.api.trainStatus();
      const running = answer && answer.status === 'RUNNING';
      const details = answer && answer.details ? ` ${String(answer.details).slice(-160)}` : '';
      $('train-status').textContent = answer ? `${answer.status || 'no training'}${details}` : 'no training';
      if (running) state.trainTimer = setTimeout(tick, 2000);
    } catch (e) {
      $('train-status').textContent = e.message;
    }
  };
  tick();
}

window.addEventListener('beforeunload', (e) => {
  if (state.dirty) e.preventDefault();
});

start();
