#!/usr/bin/env node
// Score a JSONL file of request rows with a din-toolkit model directory, from Node.js alone:
//
//   node examples/node/score.mjs MODEL_DIR requests.jsonl [--id-field request_id] [--batch-size 1024]
//
// Reads only MODEL_DIR/manifest.json and the portable.onnx it names (the vocabularies, the OOV rule and the
// history truncation are inside that graph), and prints one line per row as din-score does:
// {"request_id": "example-1", "score": 0.031885594}. A bad row stops the run with the file, line and field
// and exit status 1, before any score of its batch is printed.

import { readFile } from "node:fs/promises";
import { createReadStream } from "node:fs";
import path from "node:path";
import process from "node:process";
import ort from "onnxruntime-node";
import { RowError, encodeRows, float32Repr, portableSpec, sha256Hex } from "./din_portable.mjs";

const USAGE = "usage: node score.mjs MODEL_DIR INPUT.jsonl [--id-field FIELD] [--batch-size N] [--threads N]";
// Rows x history width per onnxruntime call: one very long history must not make the whole batch that wide.
const MAX_CELLS = 1 << 22;

class UsageError extends Error {}
/** A problem with the input file or one of its rows; the message gets the file's name, as din-score's does. */
class InputError extends Error {}

function parseArgs(argv) {
  const opts = { idField: null, batchSize: 1024, threads: 0, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "-h" || a === "--help") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (a === "--id-field") {
      opts.idField = value();
    } else if (a === "--batch-size" || a === "--threads") {
      const v = value();
      if (!/^[1-9][0-9]*$/.test(v)) throw new UsageError(`${a} needs a positive integer, got ${JSON.stringify(v)}`);
      opts[a === "--threads" ? "threads" : "batchSize"] = Number(v);
    } else if (a.startsWith("-") && a !== "-") {
      throw new UsageError(`unknown option ${a}`);
    } else {
      opts.positional.push(a);
    }
  }
  if (opts.positional.length !== 2) throw new UsageError("expected MODEL_DIR and INPUT");
  return opts;
}

/** Lines of a file or stdin ("-"), split on "\n" only, as din-score reads them: [lineNumber, text, endedByNewline]. */
async function* lines(input) {
  const stream = input === "-" ? process.stdin : createReadStream(input);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let pending = Buffer.alloc(0);
  let number = 0;
  const decode = (bytes) => {
    number += 1;
    if (bytes.includes(0)) throw new InputError(`line ${number} holds a NUL byte: this looks like a binary file, not text`);
    try {
      const text = decoder.decode(bytes);
      return number === 1 && text.startsWith("\ufeff") ? text.slice(1) : text;
    } catch {
      throw new InputError(`line ${number} is not UTF-8 text; re-encode it as UTF-8`);
    }
  };
  for await (const chunk of stream) {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let start = 0;
    let nl;
    while ((nl = pending.indexOf(10, start)) !== -1) {
      yield [number + 1, decode(pending.subarray(start, nl)), true];
      start = nl + 1;
    }
    pending = pending.subarray(start);
  }
  if (pending.length) yield [number + 1, decode(pending), false];
}

/** Request rows with their line numbers; a line that is not a JSON object stops the run. */
async function* records(input) {
  let rows = 0;
  for await (const [line, text, newline] of lines(input)) {
    if (!text.trim()) continue;
    rows += 1;
    if (rows === 1 && text.trimStart().startsWith("[")) {
      throw new InputError(`line ${line} starts with '[': this looks like a JSON array, but this reads JSON Lines `
        + "(one object per line); convert it with: jq -c '.[]' FILE > FILE.jsonl");
    }
    if (text.startsWith("\ufeff")) {
      throw new InputError(`line ${line}: starts with a UTF-8 byte order mark (BOM) inside the file: were files concatenated?`);
    }
    let row;
    try {
      row = JSON.parse(text);
    } catch (e) {
      const truncated = newline ? "" : "; it is the last line and has no newline: was the file truncated?";
      throw new InputError(`line ${line}: malformed JSON (${e.message})${truncated}`);
    }
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      throw new InputError(`line ${line}: expected a JSON object, got ${row === null ? "null" : Array.isArray(row) ? "an array" : `a ${typeof row}`}`);
    }
    yield { line, row };
  }
  if (rows === 0) throw new InputError("the input is empty: no rows to score");
}

/** Batches of at most `size` records whose rows x history width stays under MAX_CELLS. */
async function* batches(recs, spec, size) {
  let batch = [];
  let width = 1;
  for await (const rec of recs) {
    const w = Array.isArray(rec.row[spec.histories[0]?.field]) ? rec.row[spec.histories[0].field].length : 0;
    if (batch.length && (batch.length >= size || (batch.length + 1) * Math.max(width, w) > MAX_CELLS)) {
      yield batch;
      batch = [];
      width = 1;
    }
    batch.push(rec);
    width = Math.max(width, w);
  }
  if (batch.length) yield batch;
}

/** An id-field value as Python's json.dumps writes it (din-score's output): ", " and ": " between items. */
function pyJson(value) {
  if (Array.isArray(value)) return `[${value.map(pyJson).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyJson(v)}`).join(", ")}}`;
  }
  if (typeof value === "number" && !Number.isInteger(value)) {
    // Python's float repr: the same shortest digits as JavaScript, scientific below 1e-4 and from 1e16.
    const [m, e] = value.toExponential().split("e");
    const exp = Number(e);
    if (exp < -4 || exp >= 16) return `${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return JSON.stringify(value);
}

function idProblem(value) {
  if (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)) {
    return "is an integer beyond 2**53, which JavaScript's JSON cannot carry exactly; send it as a string";
  }
  if (typeof value === "string" && !value.isWellFormed()) {
    return "holds a lone surrogate (e.g. \\ud800), which UTF-8 output cannot carry";
  }
  if (Array.isArray(value) || (value !== null && typeof value === "object")) {
    for (const v of Object.values(value)) {
      const p = idProblem(v);
      if (p) return p;
    }
  }
  return null;
}

let inputName = "";

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const [modelDir, input] = opts.positional;
  inputName = input === "-" ? "<stdin>" : input;
  const manifest = JSON.parse(await readFile(path.join(modelDir, "manifest.json"), "utf-8"));
  const spec = portableSpec(manifest);
  const bytes = await readFile(path.join(modelDir, spec.file));
  const digest = await sha256Hex(bytes);
  if (digest !== spec.sha256) {
    throw new Error(`${path.join(modelDir, spec.file)}: SHA-256 ${digest} differs from the manifest's ${spec.sha256}`);
  }
  const session = await ort.InferenceSession.create(bytes, opts.threads ? { intraOpNumThreads: opts.threads } : {});
  const expected = [...spec.order.map((f) => f.name), ...(spec.histLen ? [spec.histLen] : [])].sort();
  if (JSON.stringify([...session.inputNames].sort()) !== JSON.stringify(expected)) {
    throw new Error(`${spec.file}: inputs ${session.inputNames} differ from the manifest's ${expected}`);
  }

  const start = process.hrtime.bigint();
  let read = 0;
  let oovIds = 0;
  let oovRows = 0;
  const idKey = opts.idField === null ? "" : JSON.stringify(opts.idField);
  for await (const batch of batches(records(input), spec, opts.batchSize)) {
    const rows = batch.map((r) => r.row);
    let feeds;
    try {
      if (opts.idField !== null) {
        rows.forEach((row, i) => {
          if (!(opts.idField in row)) throw new RowError(i, opts.idField, "missing (named by --id-field)");
          const problem = idProblem(row[opts.idField]);
          if (problem) throw new RowError(i, opts.idField, problem);
        });
      }
      feeds = encodeRows(spec, rows, ort.Tensor);
    } catch (e) {
      if (!(e instanceof RowError)) throw e;
      throw new InputError(`line ${batch[e.row].line}${e.field ? `, field '${e.field}'` : ""}: ${e.reason}`);
    }
    const out = await session.run(feeds);
    const text = rows.map((row, i) => {
      const score = float32Repr(out.prob.data[i]);
      return opts.idField === null ? `{"score": ${score}}\n` : `{${idKey}: ${pyJson(row[opts.idField])}, "score": ${score}}\n`;
    }).join("");
    if (!process.stdout.write(text)) await new Promise((resolve) => process.stdout.once("drain", resolve));
    for (const n of out.oov.data) {
      oovIds += Number(n);
      oovRows += n > 0n ? 1 : 0;
    }
    read += rows.length;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const oov = oovIds ? `${oovIds} in ${oovRows} rows` : "none";
  process.stderr.write(`score.mjs: ${read} rows scored in ${seconds.toFixed(2)} s; OOV ids: ${oov}\n`);
}

main().catch((e) => {
  if (e instanceof UsageError) {
    process.stderr.write(`${USAGE}\nError: ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`Error: ${e instanceof InputError ? `${inputName}: ` : ""}${e.message}\n`);
  process.exit(1);
});
