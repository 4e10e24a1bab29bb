// The try-it page: pick an image, upscale it through POST /v1/upscale, compare it with the browser's resize.
// Plain JS, no build step. The API key is kept in sessionStorage only (this tab, until it is closed).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "upscaler.apiKey";
const BEFORE_CANVAS_MAX_PIXELS = 64e6; // past this the "before" view is the original scaled by CSS, not a canvas

const el = {
  form: $("form"), file: $("file"), drop: $("drop"), dropText: $("drop-text"),
  model: $("model"), scale: $("scale"), format: $("format"), quality: $("quality"), qualityLabel: $("quality-label"),
  width: $("width"), height: $("height"), fit: $("fit"), fitLabel: $("fit-label"),
  key: $("api-key"), button: $("upscale"), modelInfo: $("model-info"), provider: $("provider"),
  status: $("status"), error: $("error"),
  panel: $("result-panel"), summary: $("summary"), zoom: $("zoom"), download: $("download"),
  viewport: $("viewport"), stage: $("stage"), before: $("before"), beforeImg: $("before-img"),
  beforeMethod: $("before-method"), result: $("result"), divider: $("divider"), split: $("split"), timing: $("timing"),
};

const state = { file: null, models: null, busy: false, urls: [], out: null };

// ---- API key ---------------------------------------------------------------------------------------------

el.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
el.key.addEventListener("change", () => {
  const key = el.key.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
});

function authHeaders() {
  const key = el.key.value.trim();
  return key ? { "X-API-Key": key } : {};
}

// ---- models and scales -----------------------------------------------------------------------------------

const FALLBACK_MODELS = {
  default_model: "auto",
  clean_model: "fast",
  provider: null,
  models: [2, 3, 4].map((s) => ({ variant: "fast", scale: s })),
};

async function loadModels() {
  let data = FALLBACK_MODELS;
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() });
    if (res.ok) {
      data = await res.json();
      if (state.models === FALLBACK_MODELS || el.status.dataset.kind === "models") showStatus("");
    } else {
      const info = await errorInfo(res);
      showStatus(res.status === 401
        ? "This service needs an API key: enter it above to list its models and to upscale."
        : `Could not list the models (${info.message}); offering the defaults.`, "models");
    }
  } catch {
    showStatus("Could not reach the service to list its models; offering the defaults.", "models");
  }
  state.models = data;
  el.provider.textContent = data.provider ? `Execution provider: ${data.provider}.` : "";
  const previous = el.model.value || data.default_model;
  const variants = ["auto", ...new Set(data.models.map((m) => m.variant))];
  el.model.replaceChildren(...variants.map((v) => new Option(v === data.default_model ? `${v} (default)` : v, v)));
  el.model.value = variants.includes(previous) ? previous : data.default_model;
  fillScales();
}

function fillScales() {
  const previous = Number(el.scale.value) || 2;
  const name = el.model.value === "auto" ? state.models.clean_model : el.model.value;
  const served = state.models.models.filter((m) => m.variant === name);
  const scales = served.map((m) => m.scale).sort((a, b) => a - b);
  // Between the models' scales, the next larger model runs and its result is resampled (x1.5 runs x2).
  const all = [...new Set([1.5, ...scales.slice(0, -1).map((s) => s + 0.5), ...scales])].sort((a, b) => a - b);
  el.scale.replaceChildren(...all.map((s) => new Option(`×${s}`, String(s))));
  el.scale.value = String(all.includes(previous) ? previous : scales.includes(2) ? 2 : scales[0]);
  describeModel();
}

function sizeAsked() {
  // Width or height given: the scale follows from them; both: the fit says how the picture meets them.
  const sized = Boolean(el.width.value || el.height.value);
  el.scale.disabled = sized;
  el.fitLabel.hidden = !(el.width.value && el.height.value);
}
for (const input of [el.width, el.height]) input.addEventListener("input", sizeAsked);

function describeModel() {
  if (el.model.value === "auto") {
    const scale = Math.ceil(Number(el.scale.value));
    const bands = [];
    for (const [field, codec] of [["jpeg_quality", "JPEG"], ["webp_quality", "WebP"]]) {
      for (const m of state.models.models.filter((m) => m.scale === scale && m[field])) {
        bands.push(`${m.variant} for ${codec} quality ${m[field][0]}–${m[field][1]}`);
      }
    }
    el.modelInfo.textContent = `auto: the model made for your file — ${bands.concat(
      `${state.models.clean_model} for everything else`).join(", ")}.`;
    return;
  }
  const scale = Math.ceil(Number(el.scale.value));
  const m = state.models.models.find((x) => x.variant === el.model.value && x.scale === scale);
  if (!m || m.parameters == null) { el.modelInfo.textContent = ""; return; }
  const parts = [`${m.variant} ×${m.scale}: ${m.parameters.toLocaleString()} parameters`];
  if (m.macs_per_input_pixel) parts.push(`${m.macs_per_input_pixel.toLocaleString()} multiply-adds per input pixel`);
  if (m.set5) parts.push(`Set5 PSNR ${m.set5.psnr.toFixed(2)} dB (bicubic ${m.set5.bicubic_psnr.toFixed(2)} dB)`);
  else parts.push("no Set5 score in its model card");
  if (m.precision) parts.push(m.precision);
  el.modelInfo.textContent = parts.join(" · ");
}

el.model.addEventListener("change", fillScales);
el.scale.addEventListener("change", describeModel);
el.format.addEventListener("change", () => {
  el.qualityLabel.hidden = !["jpeg", "webp", "avif"].includes(el.format.value);
});

// ---- picking a file --------------------------------------------------------------------------------------

function pick(file) {
  if (!file) return;
  state.file = file;
  el.dropText.replaceChildren(
    Object.assign(document.createElement("strong"), { textContent: file.name }),
    ` — ${formatBytes(file.size)}. Choose another or drop one here.`,
  );
  el.button.disabled = state.busy;
  showError("");
}

el.file.addEventListener("change", () => pick(el.file.files[0]));
for (const type of ["dragenter", "dragover"]) {
  el.drop.addEventListener(type, (e) => { e.preventDefault(); el.drop.classList.add("over"); });
}
el.drop.addEventListener("dragleave", () => el.drop.classList.remove("over"));
el.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  el.drop.classList.remove("over");
  pick(e.dataTransfer.files[0]);
});

// ---- upscaling -------------------------------------------------------------------------------------------

el.form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!state.file || state.busy) return;
  const file = state.file;
  const params = new URLSearchParams({ model: el.model.value });
  if (el.width.value || el.height.value) {
    if (el.width.value) params.set("width", el.width.value);
    if (el.height.value) params.set("height", el.height.value);
    if (el.width.value && el.height.value) params.set("fit", el.fit.value);
  } else {
    params.set("scale", el.scale.value);
  }
  const cover = params.get("fit") === "cover";
  if (el.format.value) params.set("format", el.format.value);
  if (!el.qualityLabel.hidden && el.quality.value) params.set("quality", el.quality.value);
  const body = new FormData();
  body.append("image", file, file.name);

  setBusy(true);
  showError("");
  const started = performance.now();
  const elapsed = () => ((performance.now() - started) / 1000).toFixed(1);
  const ticker = setInterval(() => showStatus(`Upscaling… ${elapsed()} s`), 100);
  try {
    const original = decodeOriginal(file); // in parallel with the request
    let res;
    try {
      res = await fetch(`/v1/upscale?${params}`, { method: "POST", body, headers: authHeaders() });
    } catch {
      throw new Error("Could not reach the service. Is it running?");
    }
    if (!res.ok) throw new Error((await errorInfo(res)).text);
    const blob = await res.blob();
    const roundTrip = performance.now() - started;
    await show(file, blob, res.headers, await original, roundTrip, cover);
    showStatus("");
  } catch (err) {
    showStatus("");
    showError(err.message);
  } finally {
    clearInterval(ticker);
    setBusy(false);
  }
});

async function decodeOriginal(file) {
  try {
    return await createImageBitmap(file); // applies EXIF orientation, as the service does
  } catch {
    return null; // a format the browser cannot show (TIFF, ...) or not an image at all
  }
}

async function show(file, blob, headers, original, roundTrip, cover) {
  for (const url of state.urls) URL.revokeObjectURL(url);
  const resultUrl = URL.createObjectURL(blob);
  state.urls = [resultUrl];
  el.result.src = resultUrl;
  await el.result.decode();
  const w = el.result.naturalWidth, h = el.result.naturalHeight;
  state.out = { w, h };

  // "Before": the original resized to the output size by the browser.
  el.before.hidden = el.beforeImg.hidden = true;
  if (original && w * h <= BEFORE_CANVAS_MAX_PIXELS) {
    el.before.width = w;
    el.before.height = h;
    const ctx = el.before.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.clearRect(0, 0, w, h);
    const [sx, sy, sw, sh] = cover ? centreCrop(original.width, original.height, w / h) : [0, 0, original.width, original.height];
    ctx.drawImage(original, sx, sy, sw, sh, 0, 0, w, h);
    el.before.hidden = false;
    el.beforeMethod.innerHTML = 'canvas, <code>imageSmoothingQuality = "high"</code>, bicubic-like';
  } else if (original) {
    const url = URL.createObjectURL(file);
    state.urls.push(url);
    el.beforeImg.src = url;
    el.beforeImg.hidden = false;
    el.beforeMethod.textContent = "scaled by CSS: the output is too large for a canvas";
  } else {
    el.beforeMethod.textContent = "not shown: this browser cannot display the input's format";
  }

  const inSize = original ? `${original.width}×${original.height}` : "input";
  const type = (blob.type || "").replace("image/", "").toUpperCase();
  const ran = headers.get("X-Model") || `${el.model.value}_x${el.scale.value}`; // the model that ran, as the service says
  const why = headers.get("X-Model-Reason");
  el.summary.textContent = `${file.name}: ${inSize} → ${w}×${h} (model ${ran}${why ? `; ${why}` : ""}), `
    + `${type} ${formatBytes(blob.size)}`;
  el.download.href = resultUrl;
  el.download.download = filenameFrom(headers.get("Content-Disposition")) || `upscaled.${type.toLowerCase()}`;
  el.timing.replaceChildren(...timingItems(headers.get("Server-Timing"), roundTrip));
  el.panel.hidden = false;
  layout();
  setSplit(50);
}

function centreCrop(width, height, aspect) {
  // The middle of the picture with the result's aspect ratio: what fit=cover keeps.
  return width / height > aspect
    ? [(width - height * aspect) / 2, 0, height * aspect, height]
    : [0, (height - width / aspect) / 2, width, width / aspect];
}

function filenameFrom(disposition) {
  const m = /filename="([^"]+)"/.exec(disposition || "");
  return m ? m[1] : null;
}

function timingItems(header, roundTrip) {
  const items = [];
  let total = 0;
  for (const part of (header || "").split(",")) {
    const m = /^\s*([\w-]+)\s*;\s*dur=([\d.]+)/.exec(part);
    if (!m) continue;
    total += Number(m[2]);
    items.push(chip(m[1], Number(m[2])));
  }
  if (items.length) items.push(chip("server total", total, "total"));
  items.push(chip("round trip", roundTrip, "total"));
  return items;
}

function chip(name, ms, cls = "") {
  const span = document.createElement("span");
  span.className = `chip ${cls}`;
  span.dataset.stage = name;
  span.textContent = `${name} ${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  return span;
}

// ---- errors ----------------------------------------------------------------------------------------------

async function errorInfo(res) {
  let code = "", message = "";
  try {
    const body = await res.json();
    code = body?.error?.code || "";
    message = body?.error?.message || "";
  } catch { /* not our JSON: a proxy's page, say */ }
  message ||= `HTTP ${res.status} ${res.statusText}`.trim();
  const retry = res.headers.get("Retry-After");
  const later = retry ? ` Try again in ${retry} s.` : " Try again shortly.";
  const byCode = {
    too_large: `Too large: ${message}.`,
    unsupported_image: `Not an image the service can read: ${message}.`,
    unauthorized: "The service needs a valid API key: enter it in the “API key” field above.",
    overloaded: `The service is busy right now.${later}`,
    not_ready: `The service is starting or shutting down.${later}`,
    deadline_exceeded: "The service took too long on this image. Try a smaller image or scale.",
    bad_parameter: `The service refused these settings: ${message}.`,
    validation_error: `The service refused these settings: ${message}.`,
  };
  const byStatus = { 401: byCode.unauthorized, 413: byCode.too_large, 415: byCode.unsupported_image,
    503: byCode.overloaded, 504: byCode.deadline_exceeded };
  const text = byCode[code] || byStatus[res.status] || `The service answered ${res.status}: ${message}.`;
  return { code, message, text: text.replace(/\.\.$/, ".") };
}

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = !text;
}

function showStatus(text, kind = "") {
  el.status.textContent = text;
  el.status.dataset.kind = text ? kind : "";
}

function setBusy(busy) {
  state.busy = busy;
  el.button.disabled = busy || !state.file;
  el.button.textContent = busy ? "Upscaling…" : "Upscale";
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 ** 2).toFixed(1)} MB`;
}

// ---- zoom and the before/after divider -------------------------------------------------------------------

function layout() {
  if (!state.out) return;
  const { w, h } = state.out;
  const zoom = el.zoom.value === "fit" ? Math.min(1, (el.viewport.clientWidth - 2) / w) : Number(el.zoom.value);
  el.stage.style.width = `${Math.round(w * zoom)}px`;
  el.stage.style.height = `${Math.round(h * zoom)}px`;
  el.stage.classList.toggle("pixelated", zoom > 1);
}

function setSplit(percent) {
  const p = Math.min(100, Math.max(0, percent));
  el.result.style.clipPath = `inset(0 0 0 ${p}%)`;
  el.divider.style.left = `${p}%`;
  el.split.value = String(p);
}

function splitAt(clientX) {
  const rect = el.stage.getBoundingClientRect();
  setSplit(((clientX - rect.left) / rect.width) * 100);
}

el.zoom.addEventListener("change", layout);
window.addEventListener("resize", () => { if (el.zoom.value === "fit") layout(); });
el.split.addEventListener("input", () => setSplit(Number(el.split.value)));
el.stage.addEventListener("pointerdown", (e) => {
  el.stage.setPointerCapture(e.pointerId);
  splitAt(e.clientX);
});
el.stage.addEventListener("pointermove", (e) => {
  if (el.stage.hasPointerCapture(e.pointerId)) splitAt(e.clientX);
});
el.stage.addEventListener("keydown", (e) => {
  const step = { ArrowLeft: -2, ArrowRight: 2 }[e.key];
  if (step) { e.preventDefault(); setSplit(Number(el.split.value) + step); }
});

loadModels();
