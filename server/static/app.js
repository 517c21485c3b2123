// The demo page: send an image (chosen, dropped, pasted or a sample scene) to POST /segment with the chosen
// model, draw the label map, its legend and the request's timings. No dependencies and no build step. The label PNG (palette mode, pixel value = class id) is decoded here,
// so the class under the pointer and the legend come from the exact ids the API returned.
"use strict";

const $ = (id) => document.getElementById(id);

const SAMPLES = "/static/samples/"; // held-out scenes and their index.json (python -m training.samples)

const state = {
  model: null, // GET /v1/model answer for the chosen model
  infos: new Map(), // "name@version" -> GET /v1/model answer, for the legend of each result
  file: null, // the image being shown
  seq: 0, // guards against an older request finishing after a newer one
  result: null, // {width, height, labels: Uint8Array, palette: [[r,g,b]…], png: Blob, model, version, info}
  image: null, // ImageBitmap of the input, or null when the browser cannot decode it
  json: null, // Blob of the JSON answer, fetched when first downloaded
};

// ---------- API ----------

async function errorMessage(response) {
  let detail = "";
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    else if (body.detail !== undefined) detail = JSON.stringify(body.detail);
  } catch (_) {
    // not JSON: fall back to the status line
  }
  return `${detail || response.statusText || "Request failed"} (HTTP ${response.status})`;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

/** A query string naming a model (and version); empty when none is named (the server's default). */
function modelQuery(model, version, sep = "?") {
  if (!model) return "";
  return `${sep}model=${encodeURIComponent(model)}${version ? `&version=${encodeURIComponent(version)}` : ""}`;
}

async function getJson(url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (response.status === 401 || response.status === 403) $("auth").open = true;
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

async function segment(file, format, model, version) {
  const form = new FormData();
  form.append("image", file, file.name || "image");
  const url = `/segment?format=${format}${modelQuery(model, version, "&")}`;
  const response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

function chosenModel() {
  return $("model-select").value || null;
}

function modelTitle(m) {
  const title = `${m.model} v${m.version}`;
  return m.name && m.name !== m.model ? `${title} (${m.name})` : title;
}

/** GET /v1/model for one model version, fetched once. */
async function modelInfo(model, version) {
  const key = `${model}@${version}`;
  if (!state.infos.has(key)) state.infos.set(key, await getJson(`/v1/model${modelQuery(model, version)}`));
  return state.infos.get(key);
}

/** The served models into the selector (shown only when there is a choice), keeping the current choice. */
function showModels(list) {
  const select = $("model-select");
  const keep = select.value;
  select.replaceChildren();
  for (const m of list.models) {
    const option = document.createElement("option");
    option.value = m.model;
    option.textContent = modelTitle(m);
    select.append(option);
  }
  const names = list.models.map((m) => m.model);
  select.value = names.includes(keep) ? keep : list.default;
  $("model-choice").hidden = list.models.length < 2;
}

async function loadModel() {
  state.model = null;
  try {
    const m = await getJson(`/v1/model${modelQuery(chosenModel())}`);
    state.infos.set(`${m.model}@${m.version}`, m);
    state.model = m;
    const parts = [modelTitle(m), m.backend && `${m.backend}${m.provider ? ` (${m.provider})` : ""}`, m.precision];
    $("model").textContent = `Model: ${parts.filter(Boolean).join(" · ")}`;
  } catch (err) {
    $("model").textContent = `Model information unavailable: ${err.message}`;
  }
}

async function loadModels() {
  try {
    showModels(await getJson("/v1/models"));
  } catch (err) {
    $("model").textContent = `Model information unavailable: ${err.message}`;
    return;
  }
  await loadModel();
}

function className(id) {
  const info = state.result.info || state.model;
  const entry = ((info && info.classes) || []).find((c) => c.id === id);
  return entry ? entry.name : `class ${id}`;
}

// ---------- palette PNG decoding ----------

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

async function inflate(chunks) {
  const stream = new Blob(chunks).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Decode a non-interlaced palette PNG into its pixel indices and its palette. */
async function decodeLabelPng(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || signature.some((v, i) => bytes[i] !== v)) throw new Error("The label map is not a PNG");
  let header = null;
  const palette = [];
  const data = [];
  for (let pos = 8; pos + 8 <= bytes.length; ) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const body = bytes.subarray(pos + 8, pos + 8 + length);
    if (type === "IHDR") {
      header = { width: view.getUint32(pos + 8), height: view.getUint32(pos + 12), depth: body[8], colorType: body[9], interlace: body[12] };
    } else if (type === "PLTE") {
      for (let i = 0; i + 2 < body.length; i += 3) palette.push([body[i], body[i + 1], body[i + 2]]);
    } else if (type === "IDAT") {
      data.push(body);
    } else if (type === "IEND") {
      break;
    }
    pos += 12 + length;
  }
  if (!header || header.colorType !== 3 || header.interlace !== 0) {
    throw new Error("The label map is not a non-interlaced palette PNG");
  }
  const { width, height, depth } = header;
  const stride = Math.ceil((width * depth) / 8);
  const raw = await inflate(data);
  if (raw.length < (stride + 1) * height) throw new Error("The label PNG is truncated");
  const rows = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = y * (stride + 1) + 1;
    const cur = y * stride;
    const prev = cur - stride;
    for (let x = 0; x < stride; x++) {
      const a = x > 0 ? rows[cur + x - 1] : 0;
      const b = y > 0 ? rows[prev + x] : 0;
      const c = x > 0 && y > 0 ? rows[prev + x - 1] : 0;
      let v = raw[src + x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) v += paeth(a, b, c);
      rows[cur + x] = v & 255;
    }
  }
  let labels = rows;
  if (depth !== 8) {
    labels = new Uint8Array(width * height);
    const mask = (1 << depth) - 1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const bit = x * depth;
        labels[y * width + x] = (rows[y * stride + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
      }
    }
  }
  return { width, height, labels, palette };
}

// ---------- drawing ----------

function colorOf(id) {
  return state.result.palette[id] || [0, 0, 0];
}

function drawLabels() {
  const { width, height, labels } = state.result;
  const canvas = $("labels");
  canvas.width = width;
  canvas.height = height;
  const pixels = new ImageData(width, height);
  for (let i = 0; i < labels.length; i++) {
    const [r, g, b] = colorOf(labels[i]);
    pixels.data[4 * i] = r;
    pixels.data[4 * i + 1] = g;
    pixels.data[4 * i + 2] = b;
    pixels.data[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
}

function drawOverlay() {
  const { width, height } = state.result;
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  if (state.image) ctx.drawImage(state.image, 0, 0, width, height);
  else ctx.clearRect(0, 0, width, height);
  ctx.globalAlpha = Number($("opacity").value) / 100;
  ctx.drawImage($("labels"), 0, 0);
  ctx.globalAlpha = 1;
}

function drawLegend() {
  const { labels } = state.result;
  const histogram = new Uint32Array(256);
  for (let i = 0; i < labels.length; i++) histogram[labels[i]]++;
  const present = [...histogram.keys()].filter((id) => histogram[id] > 0);
  const legend = $("legend");
  legend.replaceChildren();
  for (const [id, count] of present.map((id) => [id, histogram[id]]).sort((p, q) => q[1] - p[1])) {
    const item = document.createElement("li");
    item.dataset.classId = String(id);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colorOf(id).join(",")})`;
    swatch.setAttribute("aria-hidden", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = className(id);
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${((100 * count) / labels.length).toFixed(1)}%`;
    share.title = `${count.toLocaleString()} pixels`;
    item.append(swatch, name, share);
    legend.append(item);
  }
}

function drawTimings(response, roundTripMs) {
  const { width, height } = state.result;
  const rows = [
    ["Model", response.headers.get("X-Model")],
    ["Version", response.headers.get("X-Model-Version")],
    ["Batch size", response.headers.get("X-Batch-Size")],
    ["Queue", response.headers.get("X-Queue-Ms") && `${response.headers.get("X-Queue-Ms")} ms`],
    ["Inference", response.headers.get("X-Inference-Ms") && `${response.headers.get("X-Inference-Ms")} ms`],
    ["Round trip", `${roundTripMs.toFixed(0)} ms`],
    ["Image", `${width} × ${height}`],
    ["Request ID", response.headers.get("X-Request-ID")],
  ];
  const list = $("timings");
  list.replaceChildren();
  for (const [term, value] of rows) {
    if (!value) continue;
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}

function showHover(event) {
  if (!state.result) return;
  const { width, height, labels } = state.result;
  const rect = event.currentTarget.getBoundingClientRect();
  const x = Math.min(width - 1, Math.max(0, Math.floor(((event.clientX - rect.left) * width) / rect.width)));
  const y = Math.min(height - 1, Math.max(0, Math.floor(((event.clientY - rect.top) * height) / rect.height)));
  $("hover").textContent = `(${x}, ${y}): ${className(labels[y * width + x])}`;
}

// ---------- flow ----------

function setBusy(message) {
  document.body.dataset.state = "busy";
  $("status").textContent = message;
  $("error").hidden = true;
}

function showError(message) {
  document.body.dataset.state = "error";
  $("status").textContent = "";
  $("error").textContent = message;
  $("error").hidden = false;
}

async function decodeInput(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    return null; // e.g. TIFF: the server reads it, this browser does not; the label map is still shown
  }
}

async function submit(file) {
  if (!file) return;
  const seq = ++state.seq;
  state.file = file;
  state.json = null;
  setBusy(`Segmenting ${file.name || "pasted image"}…`);
  try {
    const started = performance.now();
    const [response, image] = await Promise.all([segment(file, "png", chosenModel()), decodeInput(file)]);
    const png = await response.blob();
    const roundTrip = performance.now() - started;
    const decoded = await decodeLabelPng(await png.arrayBuffer());
    // The class names of the model version that answered (the choice may have changed meanwhile).
    const model = response.headers.get("X-Model");
    const version = response.headers.get("X-Model-Version");
    const info = await modelInfo(model, version).catch(() => null);
    if (seq !== state.seq) return;
    state.result = { ...decoded, png, model, version, info };
    state.image = image;
    drawLabels();
    drawOverlay();
    drawLegend();
    drawTimings(response, roundTrip);
    $("result").hidden = false;
    $("status").textContent = `Segmented ${file.name || "pasted image"}.`;
    document.body.dataset.state = "done";
  } catch (err) {
    if (seq !== state.seq) return;
    state.result = null;
    $("result").hidden = true;
    showError(err.message);
  }
}

function baseName() {
  const name = (state.file && state.file.name) || "image";
  return name.replace(/\.[^.]*$/, "") || "image";
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function downloadJson() {
  try {
    const { model, version } = state.result; // the same model version as the label map shown
    if (!state.json) state.json = await (await segment(state.file, "json", model, version)).blob();
    download(state.json, `${baseName()}-labels.json`);
  } catch (err) {
    showError(err.message);
  }
}

async function submitSample(entry) {
  try {
    const response = await fetch(SAMPLES + entry.file);
    if (!response.ok) throw new Error(`${entry.file}: ${response.statusText} (HTTP ${response.status})`);
    submit(new File([await response.blob()], entry.file, { type: response.headers.get("Content-Type") || "" }));
  } catch (err) {
    showError(err.message);
  }
}

/** One button per shipped sample scene (the section stays hidden when the server has none). */
async function loadSamples() {
  let entries;
  try {
    const response = await fetch(`${SAMPLES}index.json`);
    if (!response.ok) return;
    entries = (await response.json()).samples || [];
  } catch (_) {
    return;
  }
  const list = $("sample-list");
  list.replaceChildren();
  for (const entry of entries) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.file = entry.file;
    button.setAttribute("aria-label", `Sample scene ${entry.index}: ${entry.classes.join(", ")}`);
    const thumb = document.createElement("img");
    thumb.src = SAMPLES + entry.file;
    thumb.alt = "";
    thumb.width = entry.width;
    thumb.height = entry.height;
    const caption = document.createElement("span");
    caption.textContent = entry.classes.join(", ");
    button.append(thumb, caption);
    button.addEventListener("click", () => submitSample(entry));
    list.append(button);
  }
  $("samples").hidden = entries.length === 0;
}

function pastedImage(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null; // pasted text is not for us
}

function init() {
  document.body.dataset.state = "idle";
  $("api-key").value = sessionStorage.getItem("fcn-api-key") || "";
  $("auth-form").addEventListener("submit", (e) => e.preventDefault());
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("fcn-api-key", $("api-key").value.trim());
    loadModels();
  });
  loadModels();
  loadSamples();
  $("model-select").addEventListener("change", async () => {
    await loadModel();
    if (state.file) submit(state.file); // the image on screen, segmented by the newly chosen model
  });
  $("file").addEventListener("change", (e) => {
    submit(e.target.files[0]);
    e.target.value = ""; // choosing the same file again still fires "change"
  });
  // The whole page takes drops (a file dropped elsewhere would otherwise replace the page).
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("active");
    });
  }
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) zone.classList.remove("active");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("active");
    // Any file goes to the API, which says what it accepts when it refuses one.
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) submit(file);
  });
  document.addEventListener("paste", (e) => {
    const file = pastedImage(e.clipboardData && e.clipboardData.items);
    if (file) submit(file);
  });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    if (state.result) drawOverlay();
  });
  for (const id of ["overlay", "labels"]) {
    $(id).addEventListener("pointermove", showHover);
    $(id).addEventListener("pointerdown", showHover);
  }
  $("download-png").addEventListener("click", () => download(state.result.png, `${baseName()}-labels.png`));
  $("download-json").addEventListener("click", downloadJson);
}

init();
