import test from 'node:test';
import assert from 'node:assert/strict';
import { readLabel, writeLabel, isGzip } from '../app/js/nifti.js';
import { segmentsFromInfo, drawColormap, labelInfo, escapeHtml, modelsFromInfo, strategiesFromInfo } from '../app/js/segments.js';
import { GuidedEdit } from '../app/js/guidance.js';
import { detailOf, fileNameOf } from '../app/js/api.js';

test('a written label reads back with its grid and values', async () => {
  const grid = { dims: [3, 4, 5], spacingMm: [0.7, 0.8, 2.5],
    affine: [[-0.7, 0, 0, 10], [0, 0, 0.8 * 0 + 2.5, -3], [0, -0.8, 0, 7.5], [0, 0, 0, 1]] };
  const values = new Uint8Array(60).map((_, n) => n % 4);
  const bytes = await writeLabel(grid, values);
  assert.ok(isGzip(bytes));
  const back = await readLabel(bytes);
  assert.deepEqual(back.dims, grid.dims);
  assert.deepEqual(back.values, values);
  back.spacingMm.forEach((s, a) => assert.ok(Math.abs(s - grid.spacingMm[a]) < 1e-6));
  back.affine.forEach((row, r) => row.forEach((v, c) => assert.ok(Math.abs(v - grid.affine[r][c]) < 1e-5)));
  await assert.rejects(readLabel(new Uint8Array(10)), /shorter than a NIfTI header/);
  await assert.rejects(writeLabel(grid, new Uint8Array(5)), /does not fill/);
});

test('segments, colours and label_info come from /info/', () => {
  const segments = segmentsFromInfo({ labels: { liver: 2, '<b>x</b>': 1, bad: 0, worse: 300 } });
  assert.deepEqual(segments.map((s) => [s.name, s.value]), [['<b>x</b>', 1], ['liver', 2]]);
  assert.deepEqual(labelInfo(segments), [{ name: '<b>x</b>', idx: 1 }, { name: 'liver', idx: 2 }]);
  const cmap = drawColormap(segments);
  assert.equal(cmap.A[0], 0);
  assert.equal(cmap.A[2], 255);
  assert.equal(cmap.labels[2], 'liver');
  assert.deepEqual(segmentsFromInfo({ labels: ['a', 'b'] }).map((s) => s.value), [1, 2]);
  assert.equal(escapeHtml('<img src=x onerror="a">&\''), '&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;');
  assert.deepEqual(modelsFromInfo({ models: { unet3d: { type: 'segmentation' }, interactive: { type: 'deepgrow' } } }),
    { automatic: ['unet3d'], interactive: ['interactive'] });
});

test('the strategy menu puts the server\'s default first', () => {
  const info = { strategies: { first: {}, epistemic: { default: false }, random: { default: true } } };
  assert.deepEqual(strategiesFromInfo(info), ['random', 'first', 'epistemic']);
  assert.deepEqual(strategiesFromInfo({ strategies: { random: {}, first: {} } }), ['random', 'first']);
  assert.deepEqual(strategiesFromInfo({}), []);
});

test('a guided edit asks with the prior and the changed region, and only its latest answer counts', () => {
  const edit = new GuidedEdit('img1', 'liver');
  assert.ok(edit.empty);
  edit.setBox([10, 2, 5], [3, 8, 5]);
  edit.addClick([4.4, 5.6, 5], true);
  edit.addClick([9, 3, 5], false);
  const first = edit.snapshot();
  assert.deepEqual(first.params, { label: 'liver', foreground: [[4, 6, 5]], background: [[9, 3, 5]],
    label_kind: 'prior', changed_region_only: true, box: [[3, 2, 5], [10, 8, 5]], edit_id: edit.id });
  assert.ok(first.needsPrior && /^[A-Za-z0-9_-]{1,64}$/.test(edit.id));
  edit.answered(); // later requests continue the edit the server remembers, without the prior
  const later = edit.snapshot();
  assert.ok(later.params.continue_edit && !later.needsPrior && !('label_kind' in later.params));
  edit.forgotten();
  assert.ok(edit.snapshot().needsPrior);
  assert.notEqual(new GuidedEdit('img1', 'liver').id, edit.id);
  assert.equal(edit.interactions, 3);
  const latest = edit.snapshot();
  assert.ok(edit.isCurrent(latest, 'img1', 'liver'));
  const second = edit.snapshot();
  assert.ok(!edit.isCurrent(latest, 'img1', 'liver'), 'overtaken by a later request');
  assert.ok(edit.isCurrent(second, 'img1', 'liver'));
  assert.ok(!edit.isCurrent(second, 'img2', 'liver'), 'another image is on screen');
  assert.ok(!edit.isCurrent(second, 'img1', 'spleen'), 'another segment is selected');
});

test('server refusals read as what they say', () => {
  assert.equal(detailOf(422, '{"detail": "box must be [[i, j, k], [i, j, k]]"}'), 'box must be [[i, j, k], [i, j, k]]');
  assert.equal(detailOf(422, '{"detail": [{"loc": ["query", "image"], "msg": "field required"}]}'),
    'image: field required');
  assert.equal(detailOf(502, '<html>Bad gateway</html>'), '<html>Bad gateway</html>');
  assert.equal(detailOf(500, ''), 'no detail (HTTP 500)');
});

test('the image file name comes from Content-Disposition', () => {
  assert.equal(fileNameOf('attachment; filename="case 1.nii.gz"'), 'case 1.nii.gz');
  assert.equal(fileNameOf("attachment; filename*=UTF-8''ct%20%C3%A9.nrrd"), 'ct \u00e9.nrrd');
  assert.equal(fileNameOf(null), null);
});
