// The page's label logic, run by node's test runner (tests/unit/test_web_logic.py runs it in CI).
import test from 'node:test';
import assert from 'node:assert/strict';
import { LabelVolume, answerRegion } from '../app/js/label_volume.js';

const grid = { dims: [20, 10, 6], spacingMm: [0.5, 1, 3], affine: null };

test('a brush is round in millimetres on an anisotropic grid', () => {
  const label = new LabelVolume(grid);
  const changed = label.paintStroke([[10, 5, 3]], 1.0, 2);
  // 1 mm: 2 voxels each way along i (0.5 mm), 1 along j (1 mm), none along k (3 mm)
  const painted = [];
  label.values.forEach((v, x) => { if (v) painted.push(x); });
  assert.equal(changed, painted.length);
  assert.ok(label.values[label.index(12, 5, 3)] === 2 && label.values[label.index(10, 6, 3)] === 2);
  assert.equal(label.values[label.index(13, 5, 3)], 0);
  assert.equal(label.values[label.index(10, 5, 4)], 0);
  assert.equal(label.values[label.index(12, 6, 3)], 0); // sqrt(1 + 1) mm > 1 mm
});

test('a disc on a slice stays on that slice, and the eraser takes only its segment', () => {
  const label = new LabelVolume({ ...grid, spacingMm: [1, 1, 1] });
  label.paintStroke([[5, 5, 2], [6, 5, 2]], 2.0, 1, { plane: 2 });
  for (let k = 0; k < 6; k += 1) {
    if (k !== 2) assert.equal(label.values[label.index(5, 5, k)], 0);
  }
  label.paintStroke([[9, 5, 2]], 1.0, 3, { plane: 2 });
  label.paintStroke([[8, 5, 2]], 3.0, 0, { plane: 2, segment: 1 });
  assert.equal(label.values[label.index(9, 5, 2)], 3, 'the other segment is kept');
  assert.equal(label.values[label.index(7, 5, 2)], 0, 'the erased segment is gone');
  assert.equal(label.values[label.index(3, 5, 2)], 1, 'beyond the eraser it stays');
});

test('undo restores exactly what each edit replaced, and redo replays it', () => {
  const label = new LabelVolume(grid);
  label.paintStroke([[4, 4, 2]], 2, 1);
  const afterFirst = label.values.slice();
  label.paintStroke([[5, 4, 2]], 2, 2); // overlaps the first
  const afterSecond = label.values.slice();
  assert.equal(label.undo(), 'brush');
  assert.deepEqual(label.values, afterFirst);
  assert.equal(label.redo(), 'brush');
  assert.deepEqual(label.values, afterSecond);
  label.undo();
  label.undo();
  assert.equal(label.count(1) + label.count(2), 0);
  assert.equal(label.undo(), null);
  label.redo();
  label.paintStroke([[0, 0, 0]], 1, 3); // a new edit drops the redo stack
  assert.equal(label.redo(), null);
});

test('an answer changes its segment inside its region only', () => {
  const label = new LabelVolume(grid);
  label.values[label.index(1, 1, 1)] = 1; // the segment, outside the region: kept
  label.values[label.index(6, 6, 2)] = 1; // the segment, inside but not in the answer: cleared
  label.values[label.index(7, 6, 2)] = 2; // another segment, claimed by the answer
  label.values[label.index(8, 6, 2)] = 2; // another segment, not claimed: kept
  const region = [[5, 9], [5, 8], [2, 3]];
  const answer = new Uint8Array(4 * 3 * 1);
  answer[(7 - 5) + 4 * (6 - 5)] = 1;
  answer[(5 - 5) + 4 * (5 - 5)] = 1;
  label.pasteAnswer(region, answer, 1);
  assert.equal(label.values[label.index(1, 1, 1)], 1);
  assert.equal(label.values[label.index(6, 6, 2)], 0);
  assert.equal(label.values[label.index(7, 6, 2)], 1);
  assert.equal(label.values[label.index(8, 6, 2)], 2);
  assert.equal(label.values[label.index(5, 5, 2)], 1);
  label.undo();
  assert.equal(label.values[label.index(6, 6, 2)], 1);
  assert.equal(label.values[label.index(7, 6, 2)], 2);
  assert.throws(() => label.pasteAnswer(region, new Uint8Array(3), 1), /does not fill/);
});

test('the region of an answer: the changed region, or the whole image', () => {
  assert.deepEqual(answerRegion({ label_grid: 'changed_region', region_vox: [[1, 2], [3, 4], [5, 6]] }, [9, 9, 9]),
    [[1, 2], [3, 4], [5, 6]]);
  assert.deepEqual(answerRegion({ label_grid: 'image' }, [9, 8, 7]), [[0, 9], [0, 8], [0, 7]]);
});
