// The label map the page edits, in the image's own voxel order (index i + nx * (j + ny * k),
// the file's order, the one the REST API's clicks and boxes use), with undo and redo.
//
// Every edit is recorded as the voxels it changed and their values before and after, so undo
// restores exactly what an edit replaced, however later edits overlap it; a large answer costs
// memory in proportion to what it changed, not to the image.

export class LabelVolume {
  // grid: {dims: [nx, ny, nz], spacingMm: [sx, sy, sz], affine}
  constructor(grid, values = null) {
    this.grid = grid;
    const [nx, ny, nz] = grid.dims;
    this.values = values || new Uint8Array(nx * ny * nz);
    if (this.values.length !== nx * ny * nz) throw new Error('the label does not fill the image grid');
    this.undoStack = [];
    this.redoStack = [];
  }

  index(i, j, k) {
    const [nx, ny] = this.grid.dims;
    return i + nx * (j + ny * k);
  }

  contains([i, j, k]) {
    const [nx, ny, nz] = this.grid.dims;
    return i >= 0 && j >= 0 && k >= 0 && i < nx && j < ny && k < nz;
  }

  count(value) {
    let n = 0;
    for (let x = 0; x < this.values.length; x += 1) n += this.values[x] === value ? 1 : 0;
    return n;
  }

  // Apply {index: newValue} changes as one undoable edit; returns the number of voxels changed.
  commit(what, indices, newValues) {
    const changed = [];
    const before = [];
    const after = [];
    for (let n = 0; n < indices.length; n += 1) {
      const x = indices[n];
      const v = typeof newValues === 'number' ? newValues : newValues[n];
      if (this.values[x] !== v) {
        changed.push(x);
        before.push(this.values[x]);
        after.push(v);
        this.values[x] = v;
      }
    }
    if (changed.length) {
      this.undoStack.push({ what, indices: Uint32Array.from(changed), before: Uint8Array.from(before),
        after: Uint8Array.from(after) });
      this.redoStack = [];
    }
    return changed.length;
  }

  undo() {
    return this.move(this.undoStack, this.redoStack, 'before');
  }

  redo() {
    return this.move(this.redoStack, this.undoStack, 'after');
  }

  // Take the latest edit off ``from``, write its ``side`` values, and keep it on ``to``.
  move(from, to, side) {
    const edit = from.pop();
    if (!edit) return null;
    edit.indices.forEach((x, n) => { this.values[x] = edit[side][n]; });
    to.push(edit);
    return edit.what;
  }

  // The voxels within radiusMm of the centre voxel, on this grid's spacing (a brush is round in
  // millimetres, whatever the voxel size). plane: null for a ball, or the axis (0, 1, 2) held
  // fixed, for a disc on the slice being drawn on.
  ballIndices(centre, radiusMm, plane = null) {
    const { dims, spacingMm } = this.grid;
    const reach = spacingMm.map((s, a) => (a === plane ? 0 : Math.floor(radiusMm / s)));
    const out = [];
    const r2 = radiusMm * radiusMm;
    for (let dk = -reach[2]; dk <= reach[2]; dk += 1) {
      const k = centre[2] + dk;
      if (k < 0 || k >= dims[2]) continue;
      for (let dj = -reach[1]; dj <= reach[1]; dj += 1) {
        const j = centre[1] + dj;
        if (j < 0 || j >= dims[1]) continue;
        for (let di = -reach[0]; di <= reach[0]; di += 1) {
          const i = centre[0] + di;
          if (i < 0 || i >= dims[0]) continue;
          const d2 = (di * spacingMm[0]) ** 2 + (dj * spacingMm[1]) ** 2 + (dk * spacingMm[2]) ** 2;
          if (d2 <= r2) out.push(this.index(i, j, k));
        }
      }
    }
    return out;
  }

  // A brush stroke (value > 0) or an eraser stroke (value 0, erasing only ``segment`` when given)
  // through the points, as one edit.
  paintStroke(points, radiusMm, value, { plane = null, segment = null } = {}) {
    const seen = new Set();
    for (const p of points) {
      for (const x of this.ballIndices(p, radiusMm, plane)) seen.add(x);
    }
    let indices = [...seen];
    if (value === 0 && segment !== null) indices = indices.filter((x) => this.values[x] === segment);
    return this.commit(value ? 'brush' : 'eraser', indices, value);
  }

  // A guided-editing answer for one segment: inside ``region`` ([[i0, i1], [j0, j1], [k0, k1]],
  // end exclusive) the segment becomes the answer's object (values > 0); outside it nothing
  // changes. Other segments' voxels are replaced only where the answer claims them.
  pasteAnswer(region, answerValues, segment) {
    const [[i0, i1], [j0, j1], [k0, k1]] = region;
    const w = i1 - i0;
    const h = j1 - j0;
    if (answerValues.length !== w * h * (k1 - k0)) throw new Error('the answer does not fill its region');
    const indices = [];
    const values = [];
    let n = 0;
    for (let k = k0; k < k1; k += 1) {
      for (let j = j0; j < j1; j += 1) {
        for (let i = i0; i < i1; i += 1, n += 1) {
          const x = this.index(i, j, k);
          const inObject = answerValues[n] > 0;
          if (inObject) {
            indices.push(x);
            values.push(segment);
          } else if (this.values[x] === segment) {
            indices.push(x);
            values.push(0);
          }
        }
      }
    }
    return this.commit('guided edit', indices, values);
  }

  // Replace the whole map (a model's prediction, a stored version) as one undoable edit.
  replaceAll(what, newValues) {
    const indices = [];
    const values = [];
    for (let x = 0; x < newValues.length; x += 1) {
      if (this.values[x] !== newValues[x]) {
        indices.push(x);
        values.push(newValues[x]);
      }
    }
    return this.commit(what, indices, values);
  }
}

// The region an answer covers: its region_vox when it is the changed region only, else the image.
export function answerRegion(params, dims) {
  if (params && params.label_grid === 'changed_region' && Array.isArray(params.region_vox)) {
    return params.region_vox.map(([a, b]) => [Number(a), Number(b)]);
  }
  return dims.map((n) => [0, n]);
}
