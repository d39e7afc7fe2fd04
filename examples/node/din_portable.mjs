// Raw request rows -> the input tensors of a din-toolkit model's portable.onnx, read from manifest.json alone.
//
// Plain ECMAScript, no Node.js or browser API: score.mjs (onnxruntime-node) and the web page
// (onnxruntime-web) share this file, and pass in their onnxruntime's Tensor class.
//
// The row rules are din_runtime's (docs/runtime.md "How rows are encoded"), so a file scores and fails
// here as it does in din-score: every field the model reads is required; ids are strings or integers
// (an integral float counts as that integer); histories are arrays, oldest first, one length per row,
// and only their most recent max_len items are checked, since the graph never reads the older ones;
// dense values are numbers finite in float32. The id lookup, the OOV rule and the truncation to the
// last max_len items happen inside the graph (docs/embed.md).
// One difference, forced by JavaScript: JSON.parse reads every number as a double, so an integer beyond
// 2**53 cannot be read exactly. Such an id is refused (send it as a string) instead of being silently changed.

const CANONICAL_INT = /^(0|-?[1-9][0-9]*)$/;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** A request row the model cannot read: `row` is its index in the batch, `field` the request field. */
export class RowError extends Error {
  constructor(row, field, reason) {
    super(`row ${row}${field ? `, field '${field}'` : ""}: ${reason}`);
    this.name = "RowError";
    this.row = row;
    this.field = field;
    this.reason = reason;
  }
}

/** A manifest.json without a usable "portable" entry. */
export class ManifestError extends Error {
  constructor(message) {
    super(message);
    this.name = "ManifestError";
  }
}

/**
 * What scoring needs from manifest.json: the portable graph's file, sha256, inputs by kind and the outputs.
 * Inputs keep the manifest's order, which is also the order in which a row's fields are checked.
 */
export function portableSpec(manifest) {
  const p = manifest?.portable;
  if (p === null || typeof p !== "object" || Array.isArray(p)) {
    throw new ManifestError('manifest.json has no "portable" entry: export the model with a din-toolkit that '
      + "writes portable.onnx (din-export export)");
  }
  const maxLen = manifest.schema?.max_len;
  if (!Number.isInteger(maxLen) || maxLen < 1) throw new ManifestError("manifest.json: schema.max_len is not a positive integer");
  if (typeof p.file !== "string" || !/^[^/\\]+$/.test(p.file) || p.file === "..") {
    throw new ManifestError(`manifest.json: portable.file must be a file name inside the model directory, got ${JSON.stringify(p.file)}`);
  }
  if (typeof p.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(p.sha256)) throw new ManifestError("manifest.json: portable.sha256 is not a SHA-256 hex digest");
  if (!Array.isArray(p.inputs) || !Array.isArray(p.outputs)) throw new ManifestError("manifest.json: portable.inputs / portable.outputs must be lists");
  const spec = { file: p.file, sha256: p.sha256, maxLen, ids: [], histories: [], dense: [], histLen: null, order: [],
    outputs: p.outputs.map((o) => o.name) };
  for (const input of p.inputs) {
    const { name, dtype, dims } = input;
    const field = input.field ?? name;
    const rank = Array.isArray(dims) ? dims.length : -1;
    if (name === "hist_len" && dtype === "int64" && rank === 1) {
      spec.histLen = name;
      continue;
    }
    let kind;
    if ((dtype === "string" || dtype === "int64") && (rank === 1 || rank === 2)) {
      kind = rank === 1 ? "ids" : "histories";
    } else if (dtype === "float32" && rank === 1) {
      kind = "dense";
    } else {
      throw new ManifestError(`manifest.json: portable input ${JSON.stringify(name)} has dtype ${JSON.stringify(dtype)} `
        + `and dims ${JSON.stringify(dims)}, which this reader does not know`);
    }
    const entry = { name, field, dtype, kind };
    if (dtype === "int64") entry.sentinel = sentinelOf(input, p, name);
    spec[kind].push(entry);
    spec.order.push(entry);
  }
  if (!spec.histLen && spec.histories.length) throw new ManifestError("manifest.json: portable.inputs has histories but no hist_len");
  for (const out of ["prob", "oov"]) {
    if (!spec.outputs.includes(out)) throw new ManifestError(`manifest.json: portable.outputs lacks ${JSON.stringify(out)}`);
  }
  return spec;
}

function sentinelOf(input, portable, name) {
  const raw = input.oov_int64_sentinel ?? portable.oov_int64_sentinel;
  // JSON.parse cannot carry an int64 exactly as a number; a string or a safe integer is read exactly.
  if (typeof raw === "string" && CANONICAL_INT.test(raw)) return BigInt(raw);
  if (Number.isSafeInteger(raw)) return BigInt(raw);
  throw new ManifestError(`manifest.json: portable input ${JSON.stringify(name)} is int64 but the manifest gives no `
    + "usable oov_int64_sentinel (an integer that is no vocabulary key)");
}

/** The vocabulary key of one raw id (what din_runtime looks up), or throws the reason as a string. */
export function idKey(value) {
  if (typeof value === "string") return value;
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw `${value} is not an integral number, so not an id`;
    if (!Number.isSafeInteger(value)) {
      throw `${value} is an integer beyond 2**53, which JavaScript's JSON cannot read exactly; send this id as a string`;
    }
    return String(value === 0 ? 0 : value); // -0 is the id 0, as in Python's str(int(-0.0))
  }
  if (typeof value === "boolean") throw `${value} is a boolean, not an id`;
  if (value === null) throw "is null";
  throw `expected a string or integer id, got ${Array.isArray(value) ? "an array" : typeof value}`;
}

/** A key as an int64 input value: a key that is not a canonical decimal int64 is no key of that vocabulary. */
function int64Of(key, sentinel) {
  if (!CANONICAL_INT.test(key)) return sentinel;
  const v = BigInt(key);
  return v < INT64_MIN || v > INT64_MAX ? sentinel : v;
}

function typeName(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `${typeof value} ${JSON.stringify(value).slice(0, 40)}`;
}

/** The checks of one row; throws RowError at the first problem, in the order din_runtime checks fields. */
function checkRow(spec, row, i) {
  for (const f of spec.ids) {
    if (!(f.field in row)) throw new RowError(i, f.field, "missing");
    try {
      idKey(row[f.field]);
    } catch (reason) {
      throw new RowError(i, f.field, reason);
    }
  }
  let first = null;
  for (const f of spec.histories) {
    if (!(f.field in row)) throw new RowError(i, f.field, "missing");
    const h = row[f.field];
    if (!Array.isArray(h)) throw new RowError(i, f.field, `expected a list of ids (oldest first), got ${typeName(h)}`);
    if (first === null) {
      first = f;
    } else if (h.length !== row[first.field].length) {
      throw new RowError(i, f.field, `has ${h.length} items but '${first.field}' has ${row[first.field].length}; `
        + "histories of a row must have one length");
    }
  }
  for (const f of spec.histories) {
    const h = row[f.field];
    const start = Math.max(0, h.length - spec.maxLen);
    for (let k = start; k < h.length; k++) {
      try {
        idKey(h[k]);
      } catch (reason) {
        throw new RowError(i, f.field, `item ${k - start}: ${reason}`);
      }
    }
  }
  for (const f of spec.dense) {
    if (!(f.field in row)) throw new RowError(i, f.field, "missing");
    const v = row[f.field];
    if (typeof v !== "number") throw new RowError(i, f.field, `expected a number, got ${typeName(v)}`);
    if (!Number.isFinite(Math.fround(v))) throw new RowError(i, f.field, `${v} overflows float32`);
  }
}

/** Throws RowError for the first row of `rows` the model cannot read (the row index is the batch's). */
export function checkRows(spec, rows) {
  rows.forEach((row, i) => {
    if (row === null || typeof row !== "object" || Array.isArray(row)) {
      throw new RowError(i, null, `expected an object of field -> value, got ${typeName(row)}`);
    }
    checkRow(spec, row, i);
  });
}

/** The longest history in `rows` (the width of their history tensors); 1 for none, since a dimension of 0 is refused by some runtimes. */
export function historyWidth(spec, rows) {
  if (!spec.histories.length) return 0;
  const field = spec.histories[0].field;
  return rows.reduce((w, row) => Math.max(w, row[field].length), 1);
}

/**
 * The feeds of portable.onnx for `rows` (checked first: RowError on the first bad row), built with
 * onnxruntime's `Tensor` class. Histories go in whole, right-padded; the graph keeps their last max_len items.
 */
export function encodeRows(spec, rows, Tensor) {
  checkRows(spec, rows);
  const n = rows.length;
  const feeds = {};
  for (const f of spec.ids) {
    const keys = rows.map((row) => idKey(row[f.field]));
    feeds[f.name] = f.dtype === "string"
      ? new Tensor("string", keys, [n])
      : new Tensor("int64", BigInt64Array.from(keys, (k) => int64Of(k, f.sentinel)), [n]);
  }
  const width = historyWidth(spec, rows);
  for (const f of spec.histories) {
    const data = f.dtype === "string" ? new Array(n * width).fill("") : new BigInt64Array(n * width);
    rows.forEach((row, i) => {
      const h = row[f.field];
      for (let k = 0; k < h.length; k++) {
        let key;
        try {
          key = idKey(h[k]);
        } catch {
          // Older than the last max_len items (the kept ones were checked): never read by the graph.
          continue;
        }
        data[i * width + k] = f.dtype === "string" ? key : int64Of(key, f.sentinel);
      }
    });
    feeds[f.name] = new Tensor(f.dtype, data, [n, width]);
  }
  if (spec.histLen) {
    const field = spec.histories[0].field;
    feeds[spec.histLen] = new Tensor("int64", BigInt64Array.from(rows, (row) => BigInt(row[field].length)), [n]);
  }
  for (const f of spec.dense) {
    feeds[f.name] = new Tensor("float32", Float32Array.from(rows, (row) => row[f.field]), [n]);
  }
  return feeds;
}

/** Scores `rows` with an onnxruntime InferenceSession of portable.onnx: {prob: Float32Array, oov: BigInt64Array}. */
export async function scoreRows(session, spec, rows, Tensor) {
  const feeds = encodeRows(spec, rows, Tensor);
  const out = await session.run(feeds);
  return { prob: out.prob.data, oov: out.oov.data };
}

/** SHA-256 of `bytes` as lower-case hex, with the Web Crypto API (browsers, Node.js 18+). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A float32 value as numpy's str() prints it (as din-score does): the shortest digits that read back as the
 * same float32 (of equally short ones the nearest, ties to an even digit), positional for 1e-4 <= |x| < 1e6
 * (numpy's range for float32), else scientific with an exponent of at least two digits.
 */
export function float32Repr(x) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const abs = Math.abs(x);
  const [digits, exp] = shortestDigits(abs);
  if (abs >= 1e-4 && abs < 1e6) {
    if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
    const whole = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
    return `${sign}${whole}.${digits.slice(exp + 1) || "0"}`;
  }
  const mantissa = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${mantissa}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
}

const pow = (base, n) => base ** BigInt(Math.max(n, 0));

/**
 * [digits, exponent] of the shortest decimal d.ddd x 10^exponent inside the rounding interval of the float32
 * `x` (> 0), found with exact integer arithmetic; of equally short ones the nearest to x, ties to even.
 */
function shortestDigits(x) {
  const bits = new Uint32Array(Float32Array.of(x).buffer)[0];
  const biased = (bits >>> 23) & 0xff;
  const fraction = bits & 0x7fffff;
  const m = BigInt(biased ? fraction + 0x800000 : fraction);
  const e = (biased ? biased : 1) - 152; // x = 4m * 2^e: the midpoints to its neighbours are integers too
  const twoE = 2n ** BigInt(Math.max(-e, 0));
  // At a power of two the float below is half as far away as the one above.
  const below = biased > 1 && fraction === 0 ? 1n : 2n;
  const inclusive = m % 2n === 0n; // round half to even: an even mantissa owns its interval's ends
  for (let p = 1; p <= 9; p++) {
    const [mant, ex] = x.toExponential(p - 1).split("e");
    const nearest = BigInt(mant.replace(".", ""));
    const k = Number(ex) - p + 1; // the candidate's value is c * 10^k
    // Both sides scaled to integers by 10^max(-k, 0) * 2^max(-e, 0).
    const scale = (t) => t * pow(2n, e) * pow(10n, -k);
    const [lo, mid, hi] = [scale(4n * m - below), scale(4n * m), scale(4n * m + 2n)];
    let best = null;
    for (const c of [nearest - 1n, nearest, nearest + 1n]) {
      const v = c * pow(10n, k) * twoE;
      const inside = inclusive ? lo <= v && v <= hi : lo < v && v < hi;
      if (c <= 0n || !inside) continue;
      const dist = v > mid ? v - mid : mid - v;
      if (best === null || dist < best.dist || (dist === best.dist && c % 2n === 0n)) best = { c, dist };
    }
    if (best !== null) {
      const text = best.c.toString();
      // A carry (9.99 + 1 ulp = 10.00) or a borrow (1.00 - 1 ulp = 0.999) changes the number of digits.
      return [text.replace(/0+$/, "") || "0", k + text.length - 1];
    }
  }
  throw new Error(`${x} is not a float32`);
}
