// Scribble-and-fill: seeded region growing (a watershed on colour distance).
// Every unlabelled pixel takes the class of the seed it reaches by the path whose largest
// colour step is smallest (minimax path), computed with a priority queue (binary heap).
// A pixel that already has a label (a prefill, earlier strokes) changes only where a seed
// reaches it by steps all below an edge threshold: the fill stops at the image's edges and
// keeps the rest of the labels, so one scribble corrects one area instead of the whole crop.

/** A binary min-heap of (priority, index) pairs in growable typed arrays. */
export class MinHeap {
  constructor(capacity = 1024) {
    this.keys = new Float32Array(capacity);
    this.vals = new Int32Array(capacity);
    this.size = 0;
  }

  push(key, val) {
    if (this.size === this.keys.length) {
      const keys = new Float32Array(this.keys.length * 2);
      const vals = new Int32Array(this.vals.length * 2);
      keys.set(this.keys);
      vals.set(this.vals);
      this.keys = keys;
      this.vals = vals;
    }
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.keys[parent] <= key) break;
      this.keys[i] = this.keys[parent];
      this.vals[i] = this.vals[parent];
      i = parent;
    }
    this.keys[i] = key;
    this.vals[i] = val;
  }

  /** Remove the smallest; returns its value, its key in this.lastKey. */
  pop() {
    const top = this.vals[0];
    this.lastKey = this.keys[0];
    const key = this.keys[--this.size];
    const val = this.vals[this.size];
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= this.size) break;
      if (child + 1 < this.size && this.keys[child + 1] < this.keys[child]) child += 1;
      if (this.keys[child] >= key) break;
      this.keys[i] = this.keys[child];
      this.vals[i] = this.vals[child];
      i = child;
    }
    this.keys[i] = key;
    this.vals[i] = val;
    return top;
  }
}

/** Share of neighbour steps below which a step is texture, above which it is an edge. */
export const EDGE_QUANTILE = 0.95; // 0.9 leaks less but stalls in texture (see docs/annotation.md)

/**
 * The colour step (Euclidean RGB) at the given quantile of all 4-neighbour steps of the image:
 * the threshold above which growFill treats a step as an edge.
 */
export function edgeThreshold(rgba, width, height, quantile = EDGE_QUANTILE) {
  const hist = new Uint32Array(443); // sqrt(3) * 255 < 442
  let total = 0;
  const add = (p, q) => {
    const dr = rgba[p] - rgba[q];
    const dg = rgba[p + 1] - rgba[q + 1];
    const db = rgba[p + 2] - rgba[q + 2];
    hist[Math.min(442, Math.round(Math.sqrt(dr * dr + dg * dg + db * db)))] += 1;
    total += 1;
  };
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      if (x + 1 < width) add(i, i + 4);
      if (y + 1 < height) add(i, i + width * 4);
    }
  }
  let seen = 0;
  for (let v = 0; v < hist.length; v++) {
    seen += hist[v];
    if (seen >= quantile * total) return Math.max(1, v);
  }
  return 442;
}

/**
 * Grow labels from seeds over an RGBA image.
 * @param {Uint8ClampedArray} rgba  image pixels (width*height*4)
 * @param {Uint8Array} seeds  class id per pixel, 255 where the user did not scribble
 * @param {Uint8Array|null} labels  the current labels (255 = none); labelled pixels change only
 *   where a seed reaches them by colour steps all below `edge`
 * @param {number} edge  the edge threshold (see edgeThreshold)
 * @returns {Uint8Array} the class of every pixel a seed took (255 elsewhere, and if no seeds)
 */
export function growRegions(rgba, width, height, seeds, labels = null, edge = Infinity) {
  const n = width * height;
  const out = new Uint8Array(n).fill(255);
  const cost = new Float32Array(n).fill(Infinity);
  if (labels) {
    // a labelled pixel holds its class against any seed path with a step of `edge` or more
    for (let i = 0; i < n; i++) if (labels[i] !== 255) cost[i] = edge;
  }
  const done = new Uint8Array(n);
  const heap = new MinHeap(Math.max(1024, n >> 2));
  for (let i = 0; i < n; i++) {
    if (seeds[i] !== 255) {
      out[i] = seeds[i];
      cost[i] = 0;
      heap.push(0, i);
    }
  }
  const step = (a, b) => {
    const p = a * 4;
    const q = b * 4;
    const dr = rgba[p] - rgba[q];
    const dg = rgba[p + 1] - rgba[q + 1];
    const db = rgba[p + 2] - rgba[q + 2];
    return Math.sqrt(dr * dr + dg * dg + db * db);
  };
  const visit = (i, j, c) => {
    if (done[j]) return;
    const nc = Math.max(c, step(i, j));
    if (nc < cost[j]) {
      cost[j] = nc;
      out[j] = out[i];
      heap.push(nc, j);
    }
  };
  while (heap.size > 0) {
    const i = heap.pop();
    const c = heap.lastKey;
    if (done[i] || c > cost[i]) continue;
    done[i] = 1;
    const x = i % width;
    if (x > 0) visit(i, i - 1, c);
    if (x < width - 1) visit(i, i + 1, c);
    if (i >= width) visit(i, i - width, c);
    if (i < n - width) visit(i, i + width, c);
  }
  return out;
}
