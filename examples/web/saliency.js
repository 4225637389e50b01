// The parts of the example that know nothing of the browser or of Node: what a compiled onnxsal
// graph says about itself, how pixels become the model's input, how an attribution becomes a
// picture. Imported by app.js (the page) and node_run.mjs (onnxruntime-node), so both read a graph
// the same way. Mirrors onnxsal's Python conventions (onnxsal/images.py, onnxsal/visualize.py).

const TEXT = new TextDecoder();

/** Read a protobuf varint at `pos`; returns [value, nextPos]. Numbers, not BigInt: the fields read
 * here (IR version, opset version, lengths) are far below 2^53. */
function varint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    const b = bytes[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
}

/** Walk the fields of one protobuf message: yields [fieldNumber, wireType, value], where value is
 * a number (varint) or a Uint8Array view (length-delimited); fixed-width fields are skipped. */
function* fields(bytes, start = 0, end = bytes.length) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = varint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      let v;
      [v, pos] = varint(bytes, pos);
      yield [field, wire, v];
    } else if (wire === 2) {
      let len;
      [len, pos] = varint(bytes, pos);
      yield [field, wire, bytes.subarray(pos, pos + len)];
      pos += len;
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else {
      throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
    }
  }
}

/**
 * What a compiled graph says about itself, read from the ModelProto's top-level fields without
 * parsing the graph: IR version (field 1), default-domain opset (field 8) and the metadata that
 * onnxsal and its converters record (field 14: layout, preprocessing, class names). onnxruntime's
 * JavaScript API exposes none of these, and the page needs them to prepare the image the way the
 * model expects.
 */
export function modelInfo(bytes) {
  const info = { irVersion: 0, opset: 0, metadata: {} };
  for (const [field, wire, value] of fields(bytes)) {
    if (field === 1 && wire === 0) info.irVersion = value;
    else if (field === 8 && wire === 2) {
      let domain = "";
      let version = 0;
      for (const [f, w, v] of fields(value)) {
        if (f === 1 && w === 2) domain = TEXT.decode(v);
        if (f === 2 && w === 0) version = v;
      }
      if (domain === "" || domain === "ai.onnx") info.opset = version;
    } else if (field === 14 && wire === 2) {
      let key = "";
      let val = "";
      for (const [f, w, v] of fields(value)) {
        if (f === 1 && w === 2) key = TEXT.decode(v);
        if (f === 2 && w === 2) val = TEXT.decode(v);
      }
      info.metadata[key] = val;
    }
  }
  return info;
}

export const PRESETS = ["unit", "imagenet", "keras", "caffe", "raw"];
const IMAGENET_MEAN = [0.485, 0.456, 0.406];
const IMAGENET_STD = [0.229, 0.224, 0.225];
const CAFFE_MEAN_BGR = [103.939, 116.779, 123.68];

/** The preprocessing a model recorded ('onnxsal.preprocess'), else [0, 1]: onnxsal's
 * `images.preset_from_metadata`. */
export function presetFromMetadata(metadata) {
  const preset = metadata["onnxsal.preprocess"] || metadata.preprocess;
  if (PRESETS.includes(preset)) return preset;
  const range = (metadata.input_range || "").replace(/ /g, "");
  return range === "-1..1" || range === "[-1,1]" ? "keras" : "unit";
}

/** Which axis holds the channels of an image input of dims [N, ?, ?, ?]: the model's 'layout'
 * metadata when it has one, else NCHW when axis 1 has 1 or 3 entries and axis 3 does not. */
export function layoutOf(dims, metadata = {}) {
  if (metadata.layout === "NCHW" || metadata.layout === "NHWC") return metadata.layout;
  const c1 = dims[1] === 1 || dims[1] === 3;
  const c3 = dims[3] === 1 || dims[3] === 3;
  return c1 && !c3 ? "NCHW" : "NHWC";
}

/**
 * RGBA pixels (a canvas ImageData's bytes, width x height) to the model's float32 input
 * [1, C, H, W] or [1, H, W, C] with a named preset, as onnxsal's `images.preprocess` does. One
 * channel is PIL's "L" conversion (ITU-R 601 luma, PIL's integer rounding), so a grey PNG gives the
 * same numbers as in Python.
 */
export function pixelsToTensor(rgba, width, height, channels, layout, preset) {
  const f = Math.fround;
  const n = width * height;
  const out = new Float32Array(n * channels);
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i];
    const g = rgba[4 * i + 1];
    const b = rgba[4 * i + 2];
    const px = channels === 1 ? [(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16] : [r, g, b];
    for (let c = 0; c < channels; c++) {
      let v;
      // float32 at every step (f), as numpy does it on float32 arrays: the same numbers as Python
      if (preset === "unit") v = f(px[c] / 255);
      else if (preset === "raw") v = px[c];
      else if (preset === "keras") v = f(f(px[c] / 127.5) - 1);
      else if (preset === "imagenet") v = f(f(f(px[c] / 255) - f(IMAGENET_MEAN[c])) / f(IMAGENET_STD[c]));
      else if (preset === "caffe") v = f(px[2 - c] - f(CAFFE_MEAN_BGR[c]));
      else throw new Error(`unknown preprocessing ${preset}`);
      out[layout === "NCHW" ? c * n + i : i * channels + c] = v;
    }
  }
  return out;
}

/** One sample's attribution [C,H,W] / [H,W,C] to a [H,W] map: max of |a| over the channels (the
 * display default of onnxsal and of Simonyan et al.), then min-max to [0, 1]; a constant map
 * becomes zeros. */
export function attributionMap(data, dims, layout) {
  const [h, w, c] = layout === "NCHW" ? [dims[2], dims[3], dims[1]] : [dims[1], dims[2], dims[3]];
  const n = h * w;
  const map = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let m = 0;
    for (let k = 0; k < c; k++) m = Math.max(m, Math.abs(data[layout === "NCHW" ? k * n + i : i * c + k]));
    map[i] = m;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of map) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const span = hi - lo;
  for (let i = 0; i < n; i++) map[i] = span > 0 ? (map[i] - lo) / span : 0;
  return { map, width: w, height: h };
}

/** MATLAB's jet at t in [0, 1] as [r, g, b] bytes (onnxsal's `visualize._jet`). */
export function jet(t) {
  return [3, 2, 1].map((c) => Math.round(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - c))) * 255));
}

/** The outputs of a compiled graph, told apart: the class scores (the first output of rank 2) and
 * the attribution (the last output with the input's rank: onnxsal appends it after the model's
 * own outputs). */
export function pickOutputs(outputNames, dimsOf, inputRank) {
  const scores = outputNames.find((n) => dimsOf(n).length === 2) ?? null;
  const attribution = [...outputNames].reverse().find((n) => dimsOf(n).length === inputRank) ?? null;
  return { scores, attribution };
}

/** Index of the largest entry. */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Feeds from the JSON form {name: {dims, type, data}} (type float32 unless int64), as a map of
 * [type, TypedArray, dims] that either runtime's Tensor constructor takes. */
export function feedsFromJson(json) {
  const feeds = {};
  for (const [name, t] of Object.entries(json)) {
    const type = t.type ?? "float32";
    const data = type === "int64" ? BigInt64Array.from(t.data.map(BigInt)) : Float32Array.from(t.data);
    feeds[name] = [type, data, t.dims];
  }
  return feeds;
}

/** onnxruntime outputs to plain JSON: {name: {dims, type, data}} (int64 as numbers). */
export function outputsToJson(results) {
  const out = {};
  for (const [name, t] of Object.entries(results)) {
    const data = t.type === "int64" ? Array.from(t.data, Number) : Array.from(t.data);
    out[name] = { dims: Array.from(t.dims), type: t.type, data };
  }
  return out;
}
