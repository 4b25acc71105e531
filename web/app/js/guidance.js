// Guided editing as the page does it: the clicks and box of one segment's edit, the request
// for POST /infer/<interactive model>, and the rule that an answer lands only where it was asked.
//
// The current label map goes with the edit's first request as the prior (label_kind "prior"),
// so a click corrects what is on screen instead of starting the object again, and the server
// answers the changed region only. Later requests of the edit say continue_edit instead: the
// segment on screen is then the edit's last answer, which the server remembers (a 512x512x300
// CT's prior costs seconds to write and read on every click). Any other change to the label
// starts a new edit; the server answering 409 (it forgot the edit) sends the prior again.

export class GuidedEdit {
  constructor(imageId, segmentName, method = null) {
    this.imageId = imageId;
    this.segmentName = segmentName;
    this.method = method; // null: the server's default
    this.foreground = [];
    this.background = [];
    this.box = null; // [[i0, j0, k0], [i1, j1, k1]], inclusive
    this.requestSerial = 0;
    this.interactions = 0;
    this.id = `e${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
    this.serverHasIt = false; // the server holds this edit's last answer: no prior needed
  }

  get empty() {
    return !this.foreground.length && !this.background.length && !this.box;
  }

  addClick(voxel, isForeground) {
    const point = voxel.map((v) => Math.round(v));
    (isForeground ? this.foreground : this.background).push(point);
    this.interactions += 1;
  }

  // Two opposite corners, in any order, as drawn; a box on one slice is flat along one axis and
  // the server gives it depth.
  setBox(cornerA, cornerB) {
    const a = cornerA.map((v) => Math.round(v));
    const b = cornerB.map((v) => Math.round(v));
    this.box = [a.map((v, n) => Math.min(v, b[n])), a.map((v, n) => Math.max(v, b[n]))];
    this.interactions += 1;
  }

  params() {
    const out = {
      label: this.segmentName,
      foreground: this.foreground,
      background: this.background,
      changed_region_only: true,
      edit_id: this.id,
    };
    if (this.serverHasIt) out.continue_edit = true;
    else out.label_kind = 'prior';
    if (this.box) out.box = this.box;
    if (this.method) out.method = this.method;
    return out;
  }

  // A snapshot of the request about to be sent; ``isCurrent`` says whether its answer may still
  // be shown (no later request of this edit, and the same image and segment).
  snapshot() {
    this.requestSerial += 1;
    const params = JSON.parse(JSON.stringify(this.params()));
    return { serial: this.requestSerial, imageId: this.imageId, segmentName: this.segmentName, params,
      needsPrior: !params.continue_edit };
  }

  // The server answered (it now holds the edit's last answer), or forgot the edit (409).
  answered() {
    this.serverHasIt = true;
  }

  forgotten() {
    this.serverHasIt = false;
  }

  isCurrent(snapshot, imageId, segmentName) {
    return snapshot.serial === this.requestSerial && snapshot.imageId === imageId
      && snapshot.segmentName === segmentName && imageId === this.imageId && segmentName === this.segmentName;
  }
}
