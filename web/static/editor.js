// Annotation editor: a queue of the server's regions (hardest first) and a label canvas with
// brush, eraser (ignore 255), polygon fill, scribble-and-fill, prefill, undo/redo and zoom.
// The label array being drawn is kept in localStorage until saved, so a reload loses nothing.
// Save posts an 8-bit grey PNG (R = G = B = class id); the web server turns it into mode L.

import { bitmapLabels } from "./envelope.js";
import { CLASS_NAMES, IGNORE, SHORTCUT_CLASSES, colorize, cssColor } from "./palette.js";
import { edgeThreshold, growRegions } from "./regiongrow.js";

const DRAFT_PREFIX = "ars-draft-";
const MAX_UNDO = 50;
const ZOOMS = [1, 2, 3, 4, 6, 8];

const $ = (id) => document.getElementById(id);

async function fetchBitmap(url) {
  const res = await fetch(url, { credentials: "same-origin" });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${await res.text()}`);
  const blob = await res.blob();
  return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

export class Editor {
  /** @param {{request: (req: string, args: object) => Promise<object>, log: (level: string, msg: string) => void}} deps */
  constructor(deps) {
    this.request = deps.request;
    this.log = deps.log;
    this.root = $("editor");
    this.canvas = $("editor-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.regions = [];
    this.done = new Set();
    this.skipped = new Set();
    this.current = null; // {region_id, width, height, ...}
    this.isOpen = false;
    this.robotId = null;
    this.tool = "brush";
    this.cls = 0;
    this.size = 8;
    this.zoom = 2;
    this.labelAlpha = 0.55;
    this.polygon = [];
    this.undoStack = [];
    this.redoStack = [];
    this.dirty = false;
    this.drawing = false;
    this.last = null;
    this.bind();
  }

  // --- open / close / queue --------------------------------------------------------------
  async open(robotId) {
    this.robotId = robotId;
    if (!this.isOpen) {
      this.isOpen = true;
      this.root.hidden = false;
    }
    await this.refresh();
  }

  close() {
    this.saveDraft();
    this.isOpen = false;
    this.root.hidden = true;
    this.polygon = [];
    this.current = null; // the next session starts at its hardest open region
  }

  async refresh() {
    // No robot_id: the server answers with the open session's regions (its robot, hardest first).
    const reply = await this.request("list_regions", {});
    if (!reply.ok) {
      this.status(`cannot list regions: ${reply.error}`, true);
      return;
    }
    const regions = (reply.data.regions || []).slice();
    regions.sort((a, b) => b.score - a.score);
    this.regions = regions;
    for (const r of regions) {
      if (r.annotated) this.done.add(r.region_id);
      if (r.skipped) this.skipped.add(r.region_id);
    }
    this.renderQueue();
    if (!this.current && regions.length) {
      const first = regions.findIndex((r) => !this.done.has(r.region_id));
      await this.load(first >= 0 ? first : 0);
    } else if (!regions.length) {
      this.status("no regions yet: press Transfer Data first");
    }
  }

  renderQueue() {
    const list = $("region-queue");
    list.replaceChildren();
    this.regions.forEach((r, i) => {
      const li = document.createElement("li");
      li.dataset.regionId = r.region_id;
      li.dataset.testid = "region-item";
      li.className = [
        this.done.has(r.region_id) ? "done" : "",
        this.skipped.has(r.region_id) ? "skipped" : "",
        this.current && this.current.region_id === r.region_id ? "current" : "",
      ].join(" ").trim();
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = r.region_id;
      img.src = `/api/regions/${encodeURIComponent(r.region_id)}/crop.png`;
      const meta = document.createElement("span");
      const mark = this.done.has(r.region_id) ? "✓" : this.skipped.has(r.region_id) ? "–" : "";
      meta.textContent = `${i + 1}. score ${Number(r.score).toFixed(3)} ${mark}`;
      li.append(img, meta);
      li.addEventListener("click", () => this.load(i));
      list.append(li);
    });
    const n = this.regions.length;
    const k = this.regions.filter((r) => this.done.has(r.region_id)).length;
    $("editor-progress").textContent = `${k} of ${n} done`;
  }

  async load(index) {
    if (index < 0 || index >= this.regions.length) return;
    this.saveDraft();
    const summary = this.regions[index];
    const id = summary.region_id;
    this.status(`loading ${id}…`);
    try {
      const reply = await this.request("get_region", { region_id: id });
      if (!reply.ok) throw new Error(reply.error || "get_region failed");
      const info = reply.data;
      const crop = await fetchBitmap(info.crop_url);
      const pred = bitmapLabels(await fetchBitmap(info.pred_url));
      const w = crop.width;
      const h = crop.height;
      const off = new OffscreenCanvas(w, h);
      const octx = off.getContext("2d", { willReadFrequently: true });
      octx.drawImage(crop, 0, 0);
      this.pixels = octx.getImageData(0, 0, w, h).data;
      this.crop = crop;
      this.pred = pred.width === w && pred.height === h ? pred.labels : new Uint8Array(w * h).fill(IGNORE);
      let labels = new Uint8Array(w * h).fill(IGNORE);
      if (info.annotation_url) {
        const saved = bitmapLabels(await fetchBitmap(info.annotation_url));
        if (saved.width === w && saved.height === h) labels = saved.labels;
      }
      const draft = this.readDraft(id, w, h);
      this.current = { ...summary, width: w, height: h, index };
      this.labels = draft || labels;
      this.seeds = new Uint8Array(w * h).fill(IGNORE);
      this.edge = null; // computed from this crop on its first Fill
      this.undoStack = [];
      this.redoStack = [];
      this.polygon = [];
      this.dirty = Boolean(draft);
      this.labelLayer = new OffscreenCanvas(w, h);
      this.seedLayer = new OffscreenCanvas(w, h);
      this.resize();
      this.renderQueue();
      this.status(`${id}: ${w}×${h}${draft ? " (unsaved draft restored)" : ""}`);
    } catch (err) {
      this.status(`cannot load ${id}: ${err.message}`, true);
    }
  }

  // --- drawing ---------------------------------------------------------------------------
  resize() {
    if (!this.current) return;
    this.canvas.width = this.current.width * this.zoom;
    this.canvas.height = this.current.height * this.zoom;
    $("zoom-value").textContent = `${this.zoom}×`;
    this.render();
  }

  render() {
    if (!this.current) return;
    const { width: w, height: h } = this.current;
    const ctx = this.ctx;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.crop, 0, 0, w * this.zoom, h * this.zoom);
    this.labelLayer.getContext("2d").putImageData(colorize(this.labels, w, h), 0, 0);
    ctx.globalAlpha = this.labelAlpha;
    ctx.drawImage(this.labelLayer, 0, 0, w * this.zoom, h * this.zoom);
    ctx.globalAlpha = 1;
    this.seedLayer.getContext("2d").putImageData(colorize(this.seeds, w, h), 0, 0);
    ctx.drawImage(this.seedLayer, 0, 0, w * this.zoom, h * this.zoom);
    if (this.polygon.length) {
      ctx.strokeStyle = "#fff";
      ctx.fillStyle = cssColor(this.cls);
      ctx.beginPath();
      this.polygon.forEach(([x, y], i) => {
        const px = (x + 0.5) * this.zoom;
        const py = (y + 0.5) * this.zoom;
        if (i === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
      ctx.stroke();
      for (const [x, y] of this.polygon) {
        ctx.fillRect((x + 0.5) * this.zoom - 2, (y + 0.5) * this.zoom - 2, 4, 4);
      }
    }
  }

  pixelAt(event) {
    const rect = this.canvas.getBoundingClientRect();
    const sx = this.canvas.width / rect.width;
    const sy = this.canvas.height / rect.height;
    const x = Math.floor(((event.clientX - rect.left) * sx) / this.zoom);
    const y = Math.floor(((event.clientY - rect.top) * sy) / this.zoom);
    return [x, y];
  }

  paintDisc(cx, cy, target, value) {
    const { width: w, height: h } = this.current;
    const r = Math.max(0.5, this.size / 2);
    const r2 = r * r;
    const x0 = Math.max(0, Math.floor(cx - r));
    const x1 = Math.min(w - 1, Math.ceil(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r));
    const y1 = Math.min(h - 1, Math.ceil(cy + r));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const dx = x - cx;
        const dy = y - cy;
        if (dx * dx + dy * dy <= r2) target[y * w + x] = value;
      }
    }
  }

  paintLine(a, b) {
    const target = this.tool === "scribble" ? this.seeds : this.labels;
    const value = this.tool === "eraser" ? IGNORE : this.cls;
    const dist = Math.hypot(b[0] - a[0], b[1] - a[1]);
    const steps = Math.max(1, Math.ceil(dist / Math.max(1, this.size / 3)));
    for (let s = 0; s <= steps; s++) {
      const t = s / steps;
      this.paintDisc(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, target, value);
    }
  }

  fillPolygon(points) {
    const { width: w, height: h } = this.current;
    const off = new OffscreenCanvas(w, h);
    const octx = off.getContext("2d", { willReadFrequently: true });
    octx.fillStyle = "#fff";
    octx.strokeStyle = "#fff";
    octx.beginPath();
    points.forEach(([x, y], i) => (i === 0 ? octx.moveTo(x + 0.5, y + 0.5) : octx.lineTo(x + 0.5, y + 0.5)));
    octx.closePath();
    octx.fill();
    octx.stroke();
    const alpha = octx.getImageData(0, 0, w, h).data;
    this.pushUndo();
    for (let i = 0; i < w * h; i++) if (alpha[i * 4 + 3] >= 128) this.labels[i] = this.cls;
    this.changed();
  }

  closePolygon() {
    if (this.polygon.length >= 3) this.fillPolygon(this.polygon);
    this.polygon = [];
    this.render();
  }

  fill() {
    if (!this.current) return;
    if (!this.seeds.some((v) => v !== IGNORE)) {
      this.status("scribble strokes of at least one class first, then Fill", true);
      return;
    }
    const t0 = performance.now();
    const { width: w, height: h } = this.current;
    this.edge ??= edgeThreshold(this.pixels, w, h);
    // "stop at edges" off: the scribbles relabel the whole crop (the editor's first Fill)
    const local = $("fill-edges").checked;
    const grown = local
      ? growRegions(this.pixels, w, h, this.seeds, this.labels, this.edge)
      : growRegions(this.pixels, w, h, this.seeds);
    this.pushUndo();
    for (let i = 0; i < grown.length; i++) if (grown[i] !== IGNORE) this.labels[i] = grown[i];
    this.changed();
    this.status(`filled from scribbles in ${(performance.now() - t0).toFixed(0)} ms`);
  }

  prefill() {
    if (!this.current) return;
    this.pushUndo();
    this.labels.set(this.pred);
    this.changed();
  }

  // --- history and drafts ----------------------------------------------------------------
  snapshot() {
    return { labels: this.labels.slice(), seeds: this.seeds.slice() };
  }

  pushUndo() {
    this.undoStack.push(this.snapshot());
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(this.snapshot());
    ({ labels: this.labels, seeds: this.seeds } = this.undoStack.pop());
    this.changed();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(this.snapshot());
    ({ labels: this.labels, seeds: this.seeds } = this.redoStack.pop());
    this.changed();
  }

  changed() {
    this.dirty = true;
    this.render();
    this.saveDraft();
  }

  saveDraft() {
    if (!this.current || !this.dirty) return;
    const { region_id: id, width, height } = this.current;
    try {
      localStorage.setItem(
        DRAFT_PREFIX + id,
        JSON.stringify({ width, height, labels: toBase64(this.labels), ts: Date.now() }),
      );
    } catch (err) {
      this.status(`draft not kept: ${err.message}`, true);
    }
  }

  readDraft(id, width, height) {
    try {
      const raw = localStorage.getItem(DRAFT_PREFIX + id);
      if (!raw) return null;
      const draft = JSON.parse(raw);
      if (draft.width !== width || draft.height !== height) return null;
      const labels = fromBase64(draft.labels);
      return labels.length === width * height ? labels : null;
    } catch {
      return null;
    }
  }

  // --- save / next / skip ----------------------------------------------------------------
  async encodeMask() {
    const { width: w, height: h } = this.current;
    const image = new ImageData(w, h);
    const d = image.data;
    for (let i = 0, j = 0; i < this.labels.length; i++, j += 4) {
      d[j] = d[j + 1] = d[j + 2] = this.labels[i];
      d[j + 3] = 255;
    }
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").putImageData(image, 0, 0);
    return new Promise((resolve, reject) =>
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("PNG encoding failed"))), "image/png"),
    );
  }

  async save() {
    if (!this.current) return;
    const id = this.current.region_id;
    this.status(`saving ${id}…`);
    try {
      const body = await this.encodeMask();
      const res = await fetch(`/api/regions/${encodeURIComponent(id)}/annotation`, {
        method: "POST",
        body,
        headers: { "Content-Type": "image/png" },
        credentials: "same-origin",
      });
      const answer = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
      if (!answer.ok) throw new Error(answer.error || `HTTP ${res.status}`);
      localStorage.removeItem(DRAFT_PREFIX + id);
      this.dirty = false;
      this.done.add(id);
      this.skipped.delete(id);
      this.status(`saved ${id}`);
      this.log("info", `annotation saved: ${id}`);
      this.renderQueue();
      await this.next();
    } catch (err) {
      this.status(`save failed: ${err.message}`, true);
      this.log("error", `annotation of ${id} not saved: ${err.message}`);
    }
  }

  async next() {
    if (!this.regions.length) return;
    const start = this.current ? this.current.index : -1;
    const n = this.regions.length;
    for (let k = 1; k <= n; k++) {
      const i = (start + k) % n;
      const id = this.regions[i].region_id;
      if (!this.done.has(id) && !this.skipped.has(id)) {
        await this.load(i);
        return;
      }
    }
    this.status("every region is done or skipped");
  }

  async skip() {
    if (!this.current) return;
    const id = this.current.region_id;
    try {
      const res = await fetch(`/api/regions/${encodeURIComponent(id)}/skip`, {
        method: "POST",
        credentials: "same-origin",
      });
      const answer = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
      if (!answer.ok) throw new Error(answer.error || `HTTP ${res.status}`);
    } catch (err) {
      this.status(`skip not recorded: ${err.message}`, true);
      return;
    }
    localStorage.removeItem(DRAFT_PREFIX + id);
    this.dirty = false;
    this.skipped.add(id);
    this.done.delete(id);
    this.renderQueue();
    await this.next();
  }

  // --- UI wiring -------------------------------------------------------------------------
  status(text, isError = false) {
    const el = $("editor-status");
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  setClass(cls) {
    this.cls = cls;
    for (const b of $("editor-palette").querySelectorAll("button")) {
      b.classList.toggle("active", Number(b.dataset.class) === cls);
    }
    if (this.tool === "eraser") this.setTool("brush");
  }

  setTool(tool) {
    if (this.tool === "polygon" && tool !== "polygon") this.polygon = [];
    this.tool = tool;
    for (const b of document.querySelectorAll("#editor-toolbar .tool")) {
      b.classList.toggle("active", b.dataset.tool === tool);
    }
    this.render();
  }

  /** One button per class; built (again) when the hello brings the class list. */
  buildPalette() {
    const box = $("editor-palette");
    box.replaceChildren();
    CLASS_NAMES.forEach((name, cls) => {
      const b = document.createElement("button");
      b.dataset.class = String(cls);
      b.id = `class-${cls}`;
      const key = SHORTCUT_CLASSES.indexOf(cls);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = cssColor(cls);
      b.append(swatch, document.createTextNode(key >= 0 ? `${(key + 1) % 10} ${name}` : name));
      b.title = key >= 0 ? `${name} (key ${(key + 1) % 10})` : name;
      b.addEventListener("click", () => this.setClass(cls));
      box.append(b);
    });
    for (const b of box.querySelectorAll("button")) b.classList.toggle("active", Number(b.dataset.class) === this.cls);
  }

  bind() {
    for (const b of document.querySelectorAll("#editor-toolbar .tool")) {
      b.addEventListener("click", () => this.setTool(b.dataset.tool));
    }
    $("btn-fill").addEventListener("click", () => this.fill());
    $("btn-prefill").addEventListener("click", () => this.prefill());
    $("btn-undo").addEventListener("click", () => this.undo());
    $("btn-redo").addEventListener("click", () => this.redo());
    $("btn-save").addEventListener("click", () => this.save());
    $("btn-next").addEventListener("click", () => this.next());
    $("btn-skip").addEventListener("click", () => this.skip());
    $("zoom-in").addEventListener("click", () => this.zoomBy(1));
    $("zoom-out").addEventListener("click", () => this.zoomBy(-1));
    const size = $("brush-size");
    size.addEventListener("input", () => {
      this.size = Number(size.value);
      $("brush-size-value").textContent = size.value;
    });
    const opacity = $("label-opacity");
    opacity.addEventListener("input", () => {
      this.labelAlpha = Number(opacity.value) / 100;
      this.render();
    });

    this.canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    this.canvas.addEventListener("pointerup", () => this.pointerUp());
    this.canvas.addEventListener("pointerleave", () => this.pointerUp());
    this.canvas.addEventListener("dblclick", () => this.tool === "polygon" && this.closePolygon());
    document.addEventListener("keydown", (e) => this.key(e));
  }

  zoomBy(step) {
    const i = Math.max(0, Math.min(ZOOMS.length - 1, ZOOMS.indexOf(this.zoom) + step));
    this.zoom = ZOOMS[i];
    this.resize();
  }

  pointerDown(e) {
    if (!this.current || e.button !== 0) return;
    const p = this.pixelAt(e);
    if (this.tool === "polygon") {
      const first = this.polygon[0];
      if (first && this.polygon.length >= 3 && Math.hypot(first[0] - p[0], first[1] - p[1]) * this.zoom < 8) {
        this.closePolygon();
      } else {
        this.polygon.push(p);
        this.render();
      }
      return;
    }
    this.canvas.setPointerCapture(e.pointerId);
    this.pushUndo();
    this.drawing = true;
    this.last = p;
    this.paintLine(p, p);
    this.render();
  }

  pointerMove(e) {
    if (!this.drawing) return;
    const p = this.pixelAt(e);
    this.paintLine(this.last, p);
    this.last = p;
    this.render();
  }

  pointerUp() {
    if (!this.drawing) return;
    this.drawing = false;
    this.changed();
  }

  key(e) {
    if (!this.isOpen || !this.current) return;
    const tag = e.target && e.target.tagName;
    // sliders and checkboxes keep the shortcuts; only text entry swallows them
    const textInput = tag === "INPUT" && !["range", "checkbox", "button"].includes(e.target.type);
    if (textInput || tag === "SELECT" || tag === "TEXTAREA") return;
    const k = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && k === "z") {
      e.preventDefault();
      if (e.shiftKey) this.redo();
      else this.undo();
      return;
    }
    if ((e.ctrlKey || e.metaKey) && k === "y") {
      e.preventDefault();
      this.redo();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[0-9]$/.test(e.key)) {
      const idx = e.key === "0" ? 9 : Number(e.key) - 1;
      this.setClass(SHORTCUT_CLASSES[idx]);
    } else if (k === "b") this.setTool("brush");
    else if (k === "e") this.setTool("eraser");
    else if (k === "p") this.setTool("polygon");
    else if (k === "s") this.setTool("scribble");
    else if (k === "f") this.fill();
    else if (k === "+" || k === "=") this.zoomBy(1);
    else if (k === "-") this.zoomBy(-1);
    else if (k === "enter" && this.tool === "polygon") this.closePolygon();
    else if (k === "escape") {
      this.polygon = [];
      this.render();
    } else return;
    e.preventDefault();
  }
}
