// The views: NiiVue showing one image in three orthogonal slices and a 3D rendering, with the
// page's label map as NiiVue's drawing layer. The page never lets NiiVue draw or load files by
// itself; it asks here for what the user pointed at, in the image's own voxels.

import { Niivue, NVImage, SLICE_TYPE, DRAG_MODE, SHOW_RENDER, MULTIPLANAR_TYPE } from '../vendor/niivue/index.js';
import { GridMapping, FIXED_RAS_AXIS } from './grid_mapping.js';
import { drawColormap } from './segments.js';

// Window presets in Hounsfield units (centre, width), the usual reading-room ones.
export const CT_PRESETS = { 'soft tissue': [40, 400], lung: [-600, 1500], bone: [400, 1800] };

export function windowOf(centre, width) {
  return [centre - width / 2, centre + width / 2];
}

export class ImageView {
  constructor(canvas) {
    this.canvas = canvas;
    this.nv = new Niivue({
      dragAndDropEnabled: false, // images come from the server only
      isOrientCube: true,
      multiplanarShowRender: SHOW_RENDER.ALWAYS,
      show3Dcrosshair: true,
      backColor: [0.05, 0.05, 0.08, 1],
      crosshairColor: [0.2, 0.8, 1, 0.8],
      crosshairWidth: 1,
      isResizeCanvas: true,
    });
    this.mapping = null;
    this.volume = null;
    this.pointerDown = false;
    this.stroke = null; // brush points while the button is held: [{voxel, plane}]
    this.mode = 'navigate';
    this.onPoint = null; // (nativeVoxel, planeAxis) for a click in a slice
    this.onStroke = null; // ([nativeVoxel, ...], planeAxis) when a brush stroke ends
    this.onBox = null; // (cornerA, cornerB) native voxels, when a box drag ends
    this.lastLocation = null;
  }

  async attach() {
    await this.nv.attachToCanvas(this.canvas);
    this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
    this.nv.setMultiplanarLayout(MULTIPLANAR_TYPE.GRID);
    this.nv.onLocationChange = (location) => this.located(location);
    this.nv.onDragRelease = (drag) => this.dragged(drag);
    this.canvas.addEventListener('pointerdown', (e) => this.pressed(e));
    this.canvas.addEventListener('pointerup', () => this.released());
    this.canvas.addEventListener('pointerleave', () => { if (this.pointerDown) this.released(); });
  }

  // Show an image (file bytes as the server sent them; the name's suffix picks the reader).
  async show(bytes, name) {
    this.nv.closeDrawing();
    for (const v of this.nv.volumes.slice()) this.nv.removeVolume(v);
    const volume = await NVImage.loadFromUrl({ url: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
      name });
    // The first window is set before the volume goes to the GPU: changing it afterwards uploads
    // and renders the volume again (seconds for a 512x512x300 CT with software WebGL).
    [volume.cal_min, volume.cal_max] = volume.global_min < -500 ? windowOf(...CT_PRESETS['soft tissue'])
      : [volume.robust_min, volume.robust_max];
    this.nv.addVolume(volume);
    this.volume = volume;
    const dims = [1, 2, 3].map((a) => volume.hdr.dims[a]);
    this.mapping = new GridMapping(volume, dims);
    this.nv.createEmptyDrawing();
    this.nv.setDrawingEnabled(false);
    return this.grid();
  }

  // The image's grid as the label files need it: dims, spacing and the voxel-to-RAS affine.
  grid() {
    const hdr = this.volume.hdr;
    return {
      dims: [1, 2, 3].map((a) => hdr.dims[a]),
      spacingMm: [1, 2, 3].map((a) => Math.abs(hdr.pixDims[a])),
      affine: hdr.affine.map((row) => row.slice()),
    };
  }

  isCT() {
    return this.volume && this.volume.global_min < -500;
  }

  setWindow(low, high) {
    this.volume.cal_min = low;
    this.volume.cal_max = high;
    this.nv.updateGLVolume();
  }

  autoWindow() {
    this.setWindow(this.volume.robust_min, this.volume.robust_max);
  }

  setSegments(segments) {
    this.nv.setDrawColormap(drawColormap(segments));
  }

  // Show the label map (native order) as the drawing.
  showLabel(nativeValues) {
    this.mapping.rasBitmapOf(nativeValues, this.nv.drawBitmap);
    this.nv.refreshDrawing(true);
  }

  setLabelStyle(opacity, outline, redraw = true) {
    this.nv.drawRimOpacity = outline ? 1.0 : -1;
    this.nv.drawOpacity = outline ? Math.min(opacity, 0.15) : opacity;
    if (redraw) this.nv.drawScene();
  }

  setMode(mode) {
    this.mode = mode;
    this.nv.opts.dragModePrimary = mode === 'box' ? DRAG_MODE.callbackOnly : DRAG_MODE.crosshair;
  }

  // NiiVue reports the crosshair in its RAS-ordered voxels; axCorSag says which slice tile.
  located(location) {
    if (!this.mapping || !location || !location.vox) return;
    this.lastLocation = { voxel: this.mapping.nativeOfRas(Array.from(location.vox)), plane: location.axCorSag };
    if (this.pointerDown && this.stroke && location.axCorSag in FIXED_RAS_AXIS) this.stroke.push(this.lastLocation);
  }

  pressed(event) {
    if (event.button !== 0 || event.ctrlKey) return;
    this.pointerDown = true;
    this.lastLocation = null;
    if (this.mode === 'brush' || this.mode === 'eraser') this.stroke = [];
  }

  released() {
    if (!this.pointerDown) return;
    this.pointerDown = false;
    const here = this.lastLocation;
    const inSlice = here && here.plane in FIXED_RAS_AXIS;
    if (this.stroke) {
      const points = this.stroke;
      this.stroke = null;
      if (points.length && this.onStroke) this.onStroke(points.map((p) => p.voxel), this.planeAxis(points[0].plane));
    } else if (inSlice && (this.mode === 'foreground' || this.mode === 'background') && this.onPoint) {
      this.onPoint(here.voxel, this.planeAxis(here.plane));
    }
  }

  dragged(drag) {
    if (this.mode !== 'box' || !this.onBox || !(drag.axCorSag in FIXED_RAS_AXIS)) return;
    const a = this.mapping.nativeOfRas(Array.from(drag.voxStart));
    const b = this.mapping.nativeOfRas(Array.from(drag.voxEnd));
    this.onBox(a, b, this.planeAxis(drag.axCorSag));
  }

  planeAxis(axCorSag) {
    return this.mapping.nativeAxisOfRas(FIXED_RAS_AXIS[axCorSag]);
  }

  // Where a native voxel is on the canvas, in CSS pixels from its top left, in the tile of
  // ``axCorSag`` (0 axial, 1 coronal, 2 sagittal): the browser tests click there like a user.
  canvasPointOf(nativeVoxel, axCorSag = 0) {
    const frac = this.nv.vox2frac(this.mapping.rasOfNative(nativeVoxel));
    const found = this.nv.frac2canvasPosWithTile(frac, axCorSag);
    if (!found) return null;
    const dpr = this.nv.uiData.dpr || 1;
    return { x: found.pos[0] / dpr, y: found.pos[1] / dpr };
  }

  // Move the crosshair (and the slices shown) to a native voxel.
  centreOn(nativeVoxel) {
    this.nv.scene.crosshairPos = this.nv.vox2frac(this.mapping.rasOfNative(nativeVoxel));
    this.nv.drawScene();
    this.nv.createOnLocationChange();
  }
}
