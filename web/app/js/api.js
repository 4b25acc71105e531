// The MedSeg REST API as the page uses it: MONAI Label's routes plus MedSeg's own, one
// function per call. No DOM here, so node's test runner exercises it against a real server.
//
// Errors: every refusal becomes an ApiError carrying the server's own words (FastAPI's
// {"detail": ...}), so the page shows what the server said rather than a blank view.

export class ApiError extends Error {
  constructor(status, detail, action) {
    super(`${action}: ${detail} (HTTP ${status})`);
    this.status = status;
    this.detail = detail;
    this.action = action;
  }
}

export function detailOf(status, bodyText) {
  try {
    const body = JSON.parse(bodyText);
    const detail = body && body.detail;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) {
      // FastAPI's 422: [{loc: [...], msg: "..."}]
      return detail.map((d) => `${(d.loc || []).slice(1).join('.') || 'request'}: ${d.msg}`).join('; ');
    }
    if (detail !== undefined) return JSON.stringify(detail);
  } catch (_) {
    // not JSON: fall through to the text itself
  }
  const text = (bodyText || '').trim();
  return text ? text.slice(0, 300) : `no detail (HTTP ${status})`;
}

export class MedSegApi {
  // baseUrl: the server root ('' in the page: the server that served it)
  constructor(baseUrl = '', fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.fetch = fetchImpl;
    this.token = null;
    this.onUnauthorized = null; // called on a 401, so the page can show its login form
  }

  url(path, query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== undefined && v !== null) params.set(k, String(v));
    }
    const qs = params.toString();
    return `${this.baseUrl}${path}${qs ? `?${qs}` : ''}`;
  }

  async request(method, path, { query, json, form, action, expect = 'json' } = {}) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form; // FormData: the browser sets the multipart boundary
    }
    let response;
    try {
      response = await this.fetch(this.url(path, query), { method, headers, body });
    } catch (e) {
      throw new ApiError(0, `the server did not answer (${e.message})`, action || `${method} ${path}`);
    }
    if (!response.ok) {
      const detail = detailOf(response.status, await response.text());
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(detail);
      throw new ApiError(response.status, detail, action || `${method} ${path}`);
    }
    if (expect === 'response') return response;
    if (expect === 'bytes') return new Uint8Array(await response.arrayBuffer());
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  // ---------------------------------------------------------------- auth
  async authEnabled() {
    try {
      const answer = await this.request('GET', '/auth/', { action: 'ask whether this server needs a login' });
      return Boolean(answer && answer.enabled);
    } catch (e) {
      if (e.status === 404) return false; // a server without MONAI Label's auth routes
      throw e;
    }
  }

  async login(username, password) {
    const form = new FormData();
    form.set('username', username);
    form.set('password', password);
    const answer = await this.request('POST', '/auth/token', { form, action: 'log in' });
    if (!answer || !answer.access_token) throw new ApiError(401, 'the server gave no token', 'log in');
    this.token = answer.access_token;
    return answer;
  }

  // ---------------------------------------------------------------- info and images
  info() {
    return this.request('GET', '/info/', { action: 'read the server\'s models and strategies' });
  }

  datastore() {
    return this.request('GET', '/datastore/', { query: { output: 'all' }, action: 'list the images' });
  }

  async nextImage(strategy) {
    const answer = await this.request('POST', `/activelearning/${encodeURIComponent(strategy)}`,
      { json: { client_id: 'medseg-viewer' }, action: `ask strategy '${strategy}' for the next image` });
    return answer && answer.id ? answer.id : null;
  }

  // The image file as stored, and its name (the suffix tells the viewer which reader to use).
  async imageFile(imageId) {
    const response = await this.request('GET', '/datastore/image', {
      query: { image: imageId }, expect: 'response', action: `load image '${imageId}'`,
    });
    const name = fileNameOf(response.headers.get('content-disposition')) || `${imageId}.nii.gz`;
    return { bytes: new Uint8Array(await response.arrayBuffer()), name };
  }

  labelBytes(imageId, tag = 'final') {
    return this.request('GET', '/datastore/label', {
      query: { label: imageId, tag }, expect: 'bytes', action: `load the ${tag} label of '${imageId}'`,
    });
  }

  labelVersions(imageId) {
    return this.request('GET', `/medseg/labels/${encodeURIComponent(imageId)}/versions`,
      { action: `list the label versions of '${imageId}'` });
  }

  labelVersionBytes(imageId, version) {
    return this.request('GET', `/medseg/labels/${encodeURIComponent(imageId)}/versions/${Number(version)}`,
      { expect: 'bytes', action: `load label version ${version} of '${imageId}'` });
  }

  restoreLabelVersion(imageId, version) {
    return this.request('POST', `/medseg/labels/${encodeURIComponent(imageId)}/versions/${Number(version)}/restore`,
      { action: `restore label version ${version} of '${imageId}'` });
  }

  // ---------------------------------------------------------------- segmentation
  // POST /infer/<model>?image=<id>&output=all: MONAI Label's multipart answer, the label file and
  // its params (region_vox of a changed-region answer, label_names, latencies), which the
  // browser's own form-data parser reads.
  async infer(model, imageId, params = {}, labelFile = null) {
    const form = new FormData();
    form.set('params', JSON.stringify(params));
    if (labelFile) form.set('label', new Blob([labelFile], { type: 'application/gzip' }), 'prior.nii.gz');
    const response = await this.request('POST', `/infer/${encodeURIComponent(model)}`, {
      query: { image: imageId, output: 'all' }, form, expect: 'response',
      action: `segment '${imageId}' with '${model}'`,
    });
    return parseInferAnswer(await response.formData());
  }

  submitLabel(imageId, niftiBytes, labelInfo, effort) {
    const form = new FormData();
    const params = { label_info: labelInfo, client_id: 'medseg-viewer' };
    if (effort) params.effort = effort;
    form.set('params', JSON.stringify(params));
    form.set('label', new Blob([niftiBytes], { type: 'application/gzip' }), `${imageId}.nii.gz`);
    return this.request('PUT', '/datastore/label', {
      query: { image: imageId, tag: 'final' }, form, action: `submit the label of '${imageId}'`,
    });
  }

  // ---------------------------------------------------------------- training
  trainStatus() {
    return this.request('GET', '/train/', { query: { check_if_running: false }, action: 'read the training status' });
  }

  trainStart(model, options = {}) {
    return this.request('POST', `/train/${encodeURIComponent(model)}`, { json: options, action: `train '${model}'` });
  }

  trainStop() {
    return this.request('DELETE', '/train/', { action: 'stop training' });
  }
}

// {params, bytes, fileName} of MONAI Label's multipart infer answer (bytes null: a model that
// answered no file).
export async function parseInferAnswer(formData) {
  let params = {};
  let bytes = null;
  let fileName = null;
  for (const [name, value] of formData.entries()) {
    if (typeof value === 'string') {
      if (name === 'params') params = JSON.parse(value);
    } else {
      bytes = new Uint8Array(await value.arrayBuffer());
      fileName = value.name || name;
    }
  }
  return { params, bytes, fileName };
}

// The file name of a Content-Disposition header (RFC 6266: filename*=UTF-8'' first).
export function fileNameOf(header) {
  if (!header) return null;
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1].trim());
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(header);
  return plain ? plain[1].trim() : null;
}
