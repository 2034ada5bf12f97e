// Scribble-and-fill: seeded region growing (a watershed on colour distance).
// Every unlabelled pixel takes the class of the seed it reaches by the path whose largest
// colour step is smallest (minimax path), computed with a priority queue (binary heap).

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

/**
 * Grow labels from seeds over an RGBA image.
 * @param {Uint8ClampedArray} rgba  image pixels (width*height*4)
 * @param {Uint8Array} seeds  class id per pixel, 255 where the user did not scribble
 * @returns {Uint8Array} a class id for every pixel reachable from a seed (255 if no seeds)
 */
export function growRegions(rgba, width, height, seeds) {
  const n = width * height;
  const out = new Uint8Array(n).fill(255);
  const cost = new Float32Array(n).fill(Infinity);
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
