import test from 'node:test';
import assert from 'node:assert/strict';
import { GridMapping } from '../app/js/grid_mapping.js';

// native 4 x 3 x 2; shown as RAS x = native j reversed, RAS y = native k, RAS z = native i
const orientation = { dimsRAS: [3, 3, 2, 4], img2RASstart: [8, 0, 0], img2RASstep: [-4, 12, 1] };

test('a shown voxel maps to the file\'s own i, j, k', () => {
  const m = new GridMapping(orientation, [4, 3, 2]);
  assert.deepEqual(m.nativeOfRas([0, 0, 0]), [0, 2, 0]);
  assert.deepEqual(m.nativeOfRas([2, 1, 3]), [3, 0, 1]);
  assert.deepEqual(m.nativeOfRas([9.4, -2, 3.2]), [3, 0, 0], 'clamped to the image');
  for (const ras of [[0, 0, 0], [2, 1, 3], [1, 0, 2]]) assert.deepEqual(m.rasOfNative(m.nativeOfRas(ras)), ras);
  assert.equal(m.nativeAxisOfRas(0), 1);
  assert.equal(m.nativeAxisOfRas(1), 2);
  assert.equal(m.nativeAxisOfRas(2), 0);
});

test('labels go to the drawing and back unchanged, each voxel where it belongs', () => {
  const m = new GridMapping(orientation, [4, 3, 2]);
  const native = Uint8Array.from({ length: 24 }, (_, n) => n + 1);
  const bitmap = m.rasBitmapOf(native);
  assert.deepEqual(m.nativeOfBitmap(bitmap), native);
  // RAS (x, y, z) = (2, 1, 3) is native (3, 0, 1): flat 3 + 4 * (0 + 3 * 1) = 15
  assert.equal(bitmap[2 + 3 * (1 + 2 * 3)], native[15]);
  assert.throws(() => new GridMapping(orientation, [4, 3, 3]), /does not hold/);
});
