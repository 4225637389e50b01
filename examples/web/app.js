// The page: load a graph written by `onnxsal compile` and an image, run the graph with
// onnxruntime-web (WebAssembly backend), and draw the attribution over the image.
//
// For tests and scripts it exposes `window.onnxsal`:
//   explain({model, image, preset, target, alpha}) -> the result below, and draws it
//   runFeeds(model, feedsJson)                      -> outputs as {name: {dims, type, data}}
//   last                                            -> the latest explain() result
// and sets <body data-status="loading|ready|running|done|error">.

import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import {
  argmax, attributionMap, feedsFromJson, jet, layoutOf, modelInfo, outputsToJson, pickOutputs,
  pixelsToTensor, presetFromMetadata,
} from "./saliency.js";

// The .wasm files sit beside the module in node_modules (no bundler, no CDN: works offline).
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// One thread: a plain static server sends no COOP/COEP headers, so SharedArrayBuffer (and with it
// the threaded build) is unavailable anyway; saying so skips onnxruntime's probing and warning.
ort.env.wasm.numThreads = 1;

const $ = (id) => document.getElementById(id);
const sessions = new Map(); // model source -> {session, info}

function setStatus(status, text) {
  document.body.dataset.status = status;
  $("status").textContent = text;
}

async function bytesOf(source) {
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  const res = await fetch(source);
  if (!res.ok) throw new Error(`${source}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/** The session of a compiled graph (a URL or a File), created once, with what its file says. */
async function sessionOf(source) {
  const key = source instanceof Blob ? source : String(source);
  if (!sessions.has(key)) {
    const bytes = await bytesOf(source);
    const info = modelInfo(bytes);
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    sessions.set(key, { session, info });
  }
  return sessions.get(key);
}

async function imageOf(source) {
  const img = new Image();
  img.src = source instanceof Blob ? URL.createObjectURL(source) : source;
  await img.decode();
  return img;
}

/** Run a graph on given feeds ({name: {dims, type, data}}); the outputs as plain JSON. */
export async function runFeeds(model, feedsJson) {
  const { session } = await sessionOf(model);
  const feeds = {};
  for (const [name, [type, data, dims]] of Object.entries(feedsFromJson(feedsJson))) {
    feeds[name] = new ort.Tensor(type, data, dims);
  }
  return outputsToJson(await session.run(feeds));
}

/**
 * Explain one image: resize it to the graph's input size, preprocess it as the model's metadata
 * says (or as `preset` says), run the graph, draw image, map and overlay. Returns the input tensor,
 * every output, the predicted class and the [0, 1] map, so a test can check the numbers.
 */
export async function explain({ model, image, preset = "auto", target = null, alpha = 0.5 }) {
  setStatus("running", "running…");
  try {
    const { session, info } = await sessionOf(model);
    const img = await imageOf(image);
    const meta = session.inputMetadata.find((m) => m.name === session.inputNames[0]);
    const shape = meta.shape.map((d) => (typeof d === "number" ? d : -1));
    if (shape.length !== 4) throw new Error(`input ${meta.name} has rank ${shape.length}; an image input has 4`);
    const layout = layoutOf(shape, info.metadata);
    const [c, h, w] = layout === "NCHW" ? [shape[1], shape[2], shape[3]] : [shape[3], shape[1], shape[2]];
    const height = h > 0 ? h : img.naturalHeight;
    const width = w > 0 ? w : img.naturalWidth;
    const channels = c > 0 ? c : 3;
    const usedPreset = preset === "auto" ? presetFromMetadata(info.metadata) : preset;

    // The image at the model's size, as pixels (the browser resamples; a file already at that
    // size is read unchanged).
    const small = document.createElement("canvas");
    small.width = width;
    small.height = height;
    const sctx = small.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(img, 0, 0, width, height);
    const rgba = sctx.getImageData(0, 0, width, height).data;
    const input = pixelsToTensor(rgba, width, height, channels, layout, usedPreset);
    const dims = layout === "NCHW" ? [1, channels, height, width] : [1, height, width, channels];

    const feeds = { [meta.name]: new ort.Tensor("float32", input, dims) };
    for (const name of session.inputNames.slice(1)) {
      if (target === null || target === "") {
        throw new Error(`this graph takes a '${name}' input: give a target class, or compile with --target argmax`);
      }
      feeds[name] = new ort.Tensor("int64", BigInt64Array.from([BigInt(target)]), [1]);
    }
    const t0 = performance.now();
    const results = await session.run(feeds);
    const ms = performance.now() - t0;

    const { scores, attribution } = pickOutputs(session.outputNames, (n) => results[n].dims, dims.length);
    if (attribution === null) throw new Error("no output has the input's rank: is this a compiled onnxsal graph?");
    const attr = results[attribution];
    const heat = attributionMap(attr.data, attr.dims, layout);
    const predicted = scores === null ? null : argmax(results[scores].data);
    const classes = info.metadata.classes ? info.metadata.classes.split(",") : null;
    const label = predicted === null ? "" : classes?.[predicted] ?? `class ${predicted}`;

    draw(img, heat, alpha);
    const result = {
      ort: ort.env.versions?.web ?? null, irVersion: info.irVersion, opset: info.opset, metadata: info.metadata,
      layout, preset: usedPreset, inputName: meta.name, input: { dims, type: "float32", data: Array.from(input) },
      outputs: outputsToJson(results), scoresName: scores, attributionName: attribution,
      predicted, label, map: { width: heat.width, height: heat.height, data: Array.from(heat.map) }, ms,
    };
    window.onnxsal.last = result;
    const score = predicted === null ? "" : ` (${scores} ${results[scores].data[predicted].toPrecision(3)})`;
    $("summary").textContent = `${label ? `predicted ${label}${score} · ` : ""}attribution: ${attribution}`
      + ` · ${ms.toFixed(1)} ms · IR ${info.irVersion}, opset ${info.opset} · preprocessing ${usedPreset}`;
    setStatus("done", "done");
    return result;
  } catch (err) {
    setStatus("error", `error: ${err.message ?? err}`);
    throw err;
  }
}

/** Three panels, 320 pixels wide at the model input's aspect ratio: the image, the map in jet, and the overlay
 * (1 - alpha) * image + alpha * jet(map), as onnxsal's `visualize.overlay` blends them. */
function draw(img, heat, alpha) {
  const width = 320;
  const height = Math.round((width * heat.height) / heat.width); // the model's aspect ratio
  for (const id of ["image", "map", "overlay"]) Object.assign($(id), { width, height });
  const smooth = img.naturalWidth >= 64; // a 28 x 28 digit looks better as sharp squares
  const base = document.createElement("canvas");
  Object.assign(base, { width, height });
  const bctx = base.getContext("2d", { willReadFrequently: true });
  bctx.imageSmoothingEnabled = smooth;
  bctx.drawImage(img, 0, 0, width, height);
  const photo = bctx.getImageData(0, 0, width, height);

  // the map, coloured at its own size, then scaled up (smoothly for photos)
  const hm = document.createElement("canvas");
  hm.width = heat.width;
  hm.height = heat.height;
  const hctx = hm.getContext("2d");
  const coloured = hctx.createImageData(heat.width, heat.height);
  heat.map.forEach((t, i) => {
    coloured.data.set([...jet(t), 255], 4 * i);
  });
  hctx.putImageData(coloured, 0, 0);
  const mapCtx = $("map").getContext("2d", { willReadFrequently: true });
  mapCtx.imageSmoothingEnabled = smooth;
  mapCtx.drawImage(hm, 0, 0, width, height);
  const colour = mapCtx.getImageData(0, 0, width, height);

  $("image").getContext("2d").putImageData(photo, 0, 0);
  const blend = new ImageData(width, height);
  for (let i = 0; i < blend.data.length; i += 4) {
    for (let k = 0; k < 3; k++) blend.data[i + k] = (1 - alpha) * photo.data[i + k] + alpha * colour.data[i + k];
    blend.data[i + 3] = 255;
  }
  $("overlay").getContext("2d").putImageData(blend, 0, 0);
}

function fromForm() {
  const model = $("model-file").files[0] ?? $("model-url").value;
  const image = $("image-file").files[0] ?? $("image-url").value;
  if (!model || !image) {
    setStatus("ready", "choose a compiled graph (.onnx) and an image");
    return;
  }
  explain({
    model, image, preset: $("preset").value, target: $("target").value || null, alpha: Number($("alpha").value),
  }).catch((err) => console.error(err));
}

window.onnxsal = { explain, runFeeds, last: null, ort };

// ?model=URL&image=URL[&preset=unit&target=3&alpha=0.5] fills the form and runs at once.
const params = new URLSearchParams(location.search);
for (const key of ["model", "image"]) if (params.has(key)) $(`${key}-url`).value = params.get(key);
for (const key of ["preset", "target", "alpha"]) if (params.has(key)) $(key).value = params.get(key);
$("run").addEventListener("click", fromForm);
setStatus("ready", `onnxruntime-web ${ort.env.versions?.web ?? ""} ready`);
if (params.has("model") && params.has("image")) fromForm();
