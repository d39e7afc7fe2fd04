// The web page: load a model directory's manifest.json and portable.onnx, then rank the candidate items of
// the picked shopper with onnxruntime-web, live. Serve the repository root as static files
// (python -m http.server -b 127.0.0.1 8000) and open /examples/web/; ?model=URL picks another model directory.
//
// The table carries what it shows for machines too: #ranking's data-request holds the shopper's fields,
// each row's data-item / data-cate / data-price / data-score / data-oov its candidate and score
// (data-score is the float32 exactly, in its shortest form), so a test can rescore the same rows.

import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { float32Repr, portableSpec, scoreRows, sha256Hex } from "../node/din_portable.mjs";

const MODEL = new URLSearchParams(location.search).get("model") ?? "../../models/demo/";
const DEFAULT_CATEGORIES = 3;
// A plain static server sends no cross-origin isolation headers, so WebAssembly threads are unavailable.
ort.env.wasm.numThreads = 1;

const $ = (id) => document.getElementById(id);
const state = { spec: null, session: null, shop: null, allCategories: [], shopper: null, history: null,
  categories: new Set(), ticket: 0 };

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function chip(text, category, extra = "") {
  const el = document.createElement("span");
  el.className = `chip ${extra}`;
  el.style.setProperty("--h", hue(category));
  el.textContent = text;
  return el;
}

function hue(category) {
  const n = Number(String(category).replace(/\D/g, "")) || 0;
  return String((n * 137) % 360);
}

async function fetchOk(url, kind) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return kind === "json" ? res.json() : res.arrayBuffer();
}

async function load() {
  const base = new URL(MODEL, location.href);
  const manifest = await fetchOk(new URL("manifest.json", base), "json");
  const spec = portableSpec(manifest);
  const bytes = await fetchOk(new URL(spec.file, base), "bytes");
  const digest = await sha256Hex(bytes);
  if (digest !== spec.sha256) throw new Error(`${spec.file}: SHA-256 ${digest} differs from the manifest's ${spec.sha256}`);
  const t0 = performance.now();
  state.session = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"] });
  const created = performance.now() - t0;
  state.spec = spec;
  state.shop = await fetchOk("shop.json", "json");
  const auc = manifest.metrics?.test?.auc;
  status(`${base.pathname}${spec.file}: ${(bytes.byteLength / 1024).toFixed(0)} KB, SHA-256 checked, session in `
    + `${created.toFixed(0)} ms; onnxruntime-web ${ort.env.versions?.web ?? ""} (WebAssembly)`
    + (auc ? `; test AUC ${auc.toFixed(4)}` : ""));

  const select = $("shopper");
  state.shop.shoppers.forEach((s, i) => select.add(new Option(s.name, String(i))));
  select.addEventListener("change", () => pickShopper(Number(select.value)));
  $("reset").addEventListener("click", () => pickShopper(Number(select.value)));
  state.allCategories = [...new Set(state.shop.catalog.map((c) => c.cate_id))]
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  for (const c of state.allCategories) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "chip";
    b.style.setProperty("--h", hue(c));
    b.textContent = c;
    b.dataset.category = c;
    b.addEventListener("click", () => {
      state.categories.has(c) ? state.categories.delete(c) : state.categories.add(c);
      rank();
    });
    $("categories").append(b);
  }
  await pickShopper(0);
}

/** The shopper's most clicked categories (ties: the most recent first), else the first few of the catalogue. */
function defaultCategories(history) {
  const count = new Map();
  history.hist_cate_id.forEach((c, i) => count.set(c, { n: (count.get(c)?.n ?? 0) + 1, last: i }));
  const ranked = [...count].sort((a, b) => b[1].n - a[1].n || b[1].last - a[1].last).map(([c]) => c);
  return new Set((ranked.length ? ranked : state.allCategories).slice(0, DEFAULT_CATEGORIES));
}

async function pickShopper(i) {
  state.shopper = state.shop.shoppers[i];
  state.history = { hist_item_id: [...state.shopper.hist_item_id], hist_cate_id: [...state.shopper.hist_cate_id] };
  state.categories = defaultCategories(state.history);
  await rank();
}

function renderHistory(unseen) {
  const { hist_item_id: items, hist_cate_id: cates } = state.history;
  const maxLen = state.spec.maxLen;
  const dropped = Math.max(0, items.length - maxLen);
  $("profile").textContent = `gender ${state.shopper.gender}, age ${state.shopper.age}`;
  $("history-note").textContent = items.length
    ? `(${items.length} clicks, oldest first${dropped ? `; the model reads the last ${maxLen}` : ""}${unseen ? `; ${unseen} unseen` : ""})`
    : "(none yet: a new visitor)";
  const box = $("history");
  box.replaceChildren(...items.map((item, k) => chip(`${item} ${cates[k]}`, cates[k], k < dropped ? "dropped" : "")));
}

async function rank() {
  for (const b of $("categories").children) b.setAttribute("aria-pressed", String(state.categories.has(b.dataset.category)));
  const user = { gender: state.shopper.gender, age: state.shopper.age, ...state.history };
  const candidates = state.shop.catalog.filter((c) => c.new || state.categories.has(c.cate_id));
  const rows = candidates.map((c) => ({ ...user, item_id: c.item_id, cate_id: c.cate_id, price: c.price }));
  const t0 = performance.now();
  const ticket = ++state.ticket;
  const { prob, oov } = await scoreRows(state.session, state.spec, rows, ort.Tensor);
  const ms = performance.now() - t0;
  if (ticket !== state.ticket) return; // a later change is being ranked: show that one only
  const order = candidates.map((_, k) => k).sort((a, b) => prob[b] - prob[a] || a - b);
  // Every row shares the history, so the fewest unseen ids of any row is the history's share (exact when
  // one candidate's item and category are known, as in any ranking this page shows).
  const historyUnseen = Math.min(...Array.from(oov, Number));

  const table = $("ranking");
  table.dataset.request = JSON.stringify(user);
  table.tBodies[0].replaceChildren(...order.map((k, r) => {
    const c = candidates[k];
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, { item: c.item_id, cate: c.cate_id, price: String(c.price), score: float32Repr(prob[k]),
      oov: String(oov[k]) });
    const cells = [String(r + 1), c.item_id, c.cate_id, c.price.toFixed(2), "", String(oov[k])];
    cells.forEach((text, j) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (j === 3 || j === 5) td.className = "num";
      tr.append(td);
    });
    if (c.new) tr.cells[1].append(Object.assign(document.createElement("span"), { className: "tag", textContent: "new" }));
    tr.cells[2].replaceChildren(chip(c.cate_id, c.cate_id));
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${Math.round(prob[k] * 80)}px`;
    tr.cells[4].append(bar, prob[k].toFixed(4));
    tr.addEventListener("click", () => {
      state.history.hist_item_id.push(c.item_id);
      state.history.hist_cate_id.push(c.cate_id);
      rank();
    });
    return tr;
  }));
  renderHistory(Number.isFinite(historyUnseen) ? historyUnseen : 0);
  $("ranking-note").textContent = `${rows.length} candidates (the chosen categories and the new arrivals) scored in `
    + `${ms.toFixed(1)} ms in one batch; click a category to add or remove it.`;
  table.dataset.generation = String(Number(table.dataset.generation) + 1);
}

load().catch((e) => {
  console.error(e);
  status(`Failed: ${e.message}`, true);
  document.body.dataset.error = e.message;
});
