// Between the image's own voxel order (the file's i, j, k: what the REST API speaks) and the
// order NiiVue shows and draws in (the volume reoriented to RAS by flipping and permuting axes,
// never resampled). NiiVue describes the second by three numbers per axis on its volume:
// dimsRAS ([3, nx, ny, nz] in RAS order), img2RASstart and img2RASstep, so that RAS voxel
// (x, y, z) is the native voxel at flat index sum over axes of start[a] + [x, y, z][a] * step[a]
// (NiiVue's own ImageWriter uses this to save a drawing in native order).

export class GridMapping {
  // orientation: {dimsRAS, img2RASstart, img2RASstep}; nativeDims: [nx, ny, nz] of the file
  constructor(orientation, nativeDims) {
    this.rasDims = orientation.dimsRAS.slice(1, 4).map(Number);
    this.start = Array.from(orientation.img2RASstart, Number);
    this.step = Array.from(orientation.img2RASstep, Number);
    this.nativeDims = nativeDims.map(Number);
    const count = this.nativeDims[0] * this.nativeDims[1] * this.nativeDims[2];
    if (this.rasDims[0] * this.rasDims[1] * this.rasDims[2] !== count) {
      throw new Error('the displayed grid does not hold the image\'s voxels');
    }
  }

  nativeIndexOfRas([x, y, z]) {
    return this.start[0] + this.start[1] + this.start[2] + x * this.step[0] + y * this.step[1] + z * this.step[2];
  }

  ijkOfIndex(index) {
    const [nx, ny] = this.nativeDims;
    return [index % nx, Math.floor(index / nx) % ny, Math.floor(index / (nx * ny))];
  }

  // Native [i, j, k] of a voxel NiiVue reports (its location's ``vox``, RAS order).
  nativeOfRas(rasVoxel) {
    const ras = rasVoxel.map((v, a) => Math.min(this.rasDims[a] - 1, Math.max(0, Math.round(v))));
    return this.ijkOfIndex(this.nativeIndexOfRas(ras));
  }

  // NiiVue's RAS-ordered voxel of a native [i, j, k] (the inverse of nativeOfRas).
  rasOfNative(ijk) {
    return [0, 1, 2].map((a) => {
      const n = this.nativeAxisOfRas(a);
      return this.step[a] > 0 ? ijk[n] : this.rasDims[a] - 1 - ijk[n];
    });
  }

  // The native axis (0 i, 1 j, 2 k) that RAS axis ``rasAxis`` runs along.
  nativeAxisOfRas(rasAxis) {
    const stride = Math.abs(this.step[rasAxis]);
    const [nx, ny] = this.nativeDims;
    return stride === 1 ? 0 : stride === nx ? 1 : stride === nx * ny ? 2 : -1;
  }

  // NiiVue's drawing bitmap (RAS order) from native label values, into ``out`` if given.
  rasBitmapOf(nativeValues, out = null) {
    const [dx, dy, dz] = this.rasDims;
    const bitmap = out || new Uint8Array(dx * dy * dz);
    const base = this.start[0] + this.start[1] + this.start[2];
    let r = 0;
    for (let z = 0; z < dz; z += 1) {
      for (let y = 0; y < dy; y += 1) {
        let x0 = base + y * this.step[1] + z * this.step[2];
        for (let x = 0; x < dx; x += 1, x0 += this.step[0]) bitmap[r++] = nativeValues[x0];
      }
    }
    return bitmap;
  }

  // Native label values from NiiVue's drawing bitmap.
  nativeOfBitmap(bitmap) {
    const [dx, dy, dz] = this.rasDims;
    const out = new Uint8Array(dx * dy * dz);
    const base = this.start[0] + this.start[1] + this.start[2];
    let r = 0;
    for (let z = 0; z < dz; z += 1) {
      for (let y = 0; y < dy; y += 1) {
        let x0 = base + y * this.step[1] + z * this.step[2];
        for (let x = 0; x < dx; x += 1, x0 += this.step[0]) out[x0] = bitmap[r++];
      }
    }
    return out;
  }
}

// NiiVue's slice tiles: 0 axial, 1 coronal, 2 sagittal, each holding one RAS axis fixed.
export const FIXED_RAS_AXIS = { 0: 2, 1: 1, 2: 0 };
