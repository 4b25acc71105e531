// NIfTI-1 label files, read and written by the page itself: the server's answers (a whole label
// map, or the changed region only) and the label the page submits, on the image's own grid.
// Only what a label needs: a 3D grid, an integer or float voxel type, the sform or qform.

const HEADER_BYTES = 348;
const DATA_OFFSET = 352; // the header plus the 4-byte extension flag (no extensions)

const TYPES = {
  2: { name: 'uint8', bytes: 1, read: (v, o) => v.getUint8(o) },
  4: { name: 'int16', bytes: 2, read: (v, o, le) => v.getInt16(o, le) },
  8: { name: 'int32', bytes: 4, read: (v, o, le) => v.getInt32(o, le) },
  16: { name: 'float32', bytes: 4, read: (v, o, le) => v.getFloat32(o, le) },
  64: { name: 'float64', bytes: 8, read: (v, o, le) => v.getFloat64(o, le) },
  256: { name: 'int8', bytes: 1, read: (v, o) => v.getInt8(o) },
  512: { name: 'uint16', bytes: 2, read: (v, o, le) => v.getUint16(o, le) },
  768: { name: 'uint32', bytes: 4, read: (v, o, le) => v.getUint32(o, le) },
};

export function isGzip(bytes) {
  return bytes.length > 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

async function throughStream(bytes, stream) {
  const out = new Response(new Blob([bytes]).stream().pipeThrough(stream));
  return new Uint8Array(await out.arrayBuffer());
}

export function gunzip(bytes) {
  return throughStream(bytes, new DecompressionStream('gzip'));
}

export function gzip(bytes) {
  return throughStream(bytes, new CompressionStream('gzip'));
}

// {dims: [nx, ny, nz], spacingMm, affine (4x4 rows, voxel index -> world mm, RAS), values (Uint8Array
// of label values, i fastest)}. Refuses what is not a 3D NIfTI-1 label with integer values.
export async function readLabel(fileBytes) {
  const bytes = isGzip(fileBytes) ? await gunzip(fileBytes) : fileBytes;
  if (bytes.length < HEADER_BYTES) throw new Error('the label file is shorter than a NIfTI header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le = true;
  if (view.getInt32(0, true) !== HEADER_BYTES) {
    if (view.getInt32(0, false) !== HEADER_BYTES) throw new Error('the label file is not NIfTI-1');
    le = false;
  }
  const ndim = view.getInt16(40, le);
  const dims = [1, 2, 3].map((a) => view.getInt16(40 + 2 * a, le));
  for (let a = 4; a <= Math.min(ndim, 7); a += 1) {
    if (view.getInt16(40 + 2 * a, le) > 1) throw new Error('the label file has more than 3 dimensions');
  }
  const datatype = view.getInt16(70, le);
  const type = TYPES[datatype];
  if (!type) throw new Error(`the label file's voxel type ${datatype} is not one a label has`);
  const spacingMm = [1, 2, 3].map((a) => Math.abs(view.getFloat32(76 + 4 * a, le)));
  const offset = Math.max(DATA_OFFSET, Math.round(view.getFloat32(108, le)));
  const count = dims[0] * dims[1] * dims[2];
  if (offset + count * type.bytes > bytes.length) throw new Error('the label file is shorter than its header says');
  let slope = view.getFloat32(112, le);
  const inter = view.getFloat32(116, le);
  if (!slope || !Number.isFinite(slope)) slope = 1;
  const values = new Uint8Array(count);
  for (let n = 0; n < count; n += 1) {
    const v = Math.round(type.read(view, offset + n * type.bytes, le) * slope + (Number.isFinite(inter) ? inter : 0));
    values[n] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  return { dims, spacingMm, affine: affineOf(view, le, spacingMm), values };
}

function affineOf(view, le, spacingMm) {
  const sformCode = view.getInt16(254, le);
  if (sformCode > 0) {
    return [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => view.getFloat32(280 + 16 * r + 4 * c, le)))
      .concat([[0, 0, 0, 1]]);
  }
  const qformCode = view.getInt16(252, le);
  if (qformCode > 0) {
    const [b, c, d] = [0, 1, 2].map((k) => view.getFloat32(256 + 4 * k, le));
    const a = Math.sqrt(Math.max(0, 1 - b * b - c * c - d * d));
    const qfac = view.getFloat32(76, le) < 0 ? -1 : 1;
    const R = [
      [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
      [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
      [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    const s = [spacingMm[0], spacingMm[1], spacingMm[2] * qfac];
    const offset = [0, 1, 2].map((k) => view.getFloat32(268 + 4 * k, le));
    return [0, 1, 2].map((r) => [R[r][0] * s[0], R[r][1] * s[1], R[r][2] * s[2], offset[r]]).concat([[0, 0, 0, 1]]);
  }
  return [[spacingMm[0], 0, 0, 0], [0, spacingMm[1], 0, 0], [0, 0, spacingMm[2], 0], [0, 0, 0, 1]];
}

// A gzipped NIfTI-1 file of uint8 ``values`` (i fastest) on the grid {dims, spacingMm, affine}.
// The affine goes into both sform and qform's place as the sform (code 1, scanner), which is what
// the server reads to check that the label lies on the image's grid.
export async function writeLabel(grid, values) {
  const [nx, ny, nz] = grid.dims;
  if (values.length !== nx * ny * nz) throw new Error('the label does not fill the image grid');
  const buffer = new ArrayBuffer(DATA_OFFSET + values.length);
  const view = new DataView(buffer);
  view.setInt32(0, HEADER_BYTES, true);
  [3, nx, ny, nz, 1, 1, 1, 1].forEach((d, a) => view.setInt16(40 + 2 * a, d, true));
  view.setInt16(70, 2, true); // uint8
  view.setInt16(72, 8, true);
  [1, ...grid.spacingMm, 1, 1, 1, 1].forEach((s, a) => view.setFloat32(76 + 4 * a, s, true));
  view.setFloat32(108, DATA_OFFSET, true);
  view.setFloat32(112, 1, true);
  view.setUint8(123, 2 + 8); // mm and seconds
  view.setInt16(254, 1, true); // sform_code: scanner
  for (let r = 0; r < 3; r += 1) {
    for (let c = 0; c < 4; c += 1) view.setFloat32(280 + 16 * r + 4 * c, grid.affine[r][c], true);
  }
  new Uint8Array(buffer, 344, 4).set([0x6e, 0x2b, 0x31, 0]); // "n+1\0"
  new Uint8Array(buffer, DATA_OFFSET).set(values);
  return gzip(new Uint8Array(buffer));
}
