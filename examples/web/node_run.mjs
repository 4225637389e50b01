#!/usr/bin/env node
// Run a graph written by `onnxsal compile` in onnxruntime-node, on a fixed input, and write every
// output as JSON: the same graph the page runs, without a browser and without Python.
//
//   node node_run.mjs MODEL.onnx [INPUT.json] [--out OUT.json]
//
// INPUT.json holds the feeds as {name: {dims, type, data}} (type float32 unless "int64"); the
// default is assets/digit.json, the MNIST digit make_assets.py writes. The outputs go to OUT.json
// in the same form, or to stdout; a one-line summary goes to stderr.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import ort from "onnxruntime-node";

import { argmax, feedsFromJson, modelInfo, outputsToJson, pickOutputs } from "./saliency.js";

const HERE = dirname(fileURLToPath(import.meta.url));

function usage(message) {
  console.error(`${message}\nusage: node node_run.mjs MODEL.onnx [INPUT.json] [--out OUT.json]`);
  process.exit(2);
}

const args = process.argv.slice(2);
let out = null;
const outAt = args.indexOf("--out");
if (outAt >= 0) {
  out = args[outAt + 1] ?? usage("--out needs a file name");
  args.splice(outAt, 2);
}
if (args.length < 1 || args.length > 2 || args.some((a) => a.startsWith("-"))) usage("expected a model and an optional input");
const [modelPath, inputPath = join(HERE, "assets", "digit.json")] = args;

const bytes = readFileSync(modelPath);
const info = modelInfo(bytes);
const session = await ort.InferenceSession.create(bytes, { executionProviders: ["cpu"], intraOpNumThreads: 1 });
const feeds = {};
for (const [name, [type, data, dims]] of Object.entries(feedsFromJson(JSON.parse(readFileSync(inputPath, "utf8"))))) {
  feeds[name] = new ort.Tensor(type, data, dims);
}
const t0 = performance.now();
const results = await session.run(feeds);
const ms = performance.now() - t0;

const outputs = outputsToJson(results);
const inputRank = Object.values(feeds)[0].dims.length;
const { scores, attribution } = pickOutputs(session.outputNames, (n) => results[n].dims, inputRank);
const predicted = scores === null ? "-" : argmax(results[scores].data);
console.error(`${modelPath}: IR ${info.irVersion}, opset ${info.opset}; outputs ${session.outputNames.join(", ")}`
  + ` (attribution ${attribution}); predicted class ${predicted}; ${ms.toFixed(1)} ms in onnxruntime-node`);
const text = JSON.stringify(outputs);
if (out === null) process.stdout.write(text + "\n");
else writeFileSync(out, text);
