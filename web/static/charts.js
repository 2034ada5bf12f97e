// Hand-drawn canvas 2D charts: the live loss curve and mIoU before/after bars.
// Each chart draws at its on-screen size (times the pixel ratio), so its text stays 12 px on a
// phone as on a desktop, and draws again when its box changes width.

const AXIS = "#8b949e";
const GRID = "#30363d";
const TEXT = "#c9d1d9";
const ASPECT = 180 / 420; // height over width
const MIN_HEIGHT = 150;

const lastDraw = new WeakMap(); // canvas -> () => void, redrawn on resize
const resizes = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const canvas = entry.target;
    const redraw = lastDraw.get(canvas);
    if (redraw && Math.abs(canvas.clientWidth - (canvas.dataset.cssWidth || 0)) > 1) redraw();
  }
});

function prepare(canvas, redraw) {
  if (!lastDraw.has(canvas)) resizes.observe(canvas);
  lastDraw.set(canvas, redraw);
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(160, Math.round(canvas.clientWidth || canvas.width));
  const H = Math.max(MIN_HEIGHT, Math.round(W * ASPECT));
  canvas.dataset.cssWidth = String(canvas.clientWidth || W);
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = TEXT;
  return { ctx, W, H };
}

function message(ctx, W, H, text) {
  ctx.fillStyle = AXIS;
  ctx.textAlign = "center";
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillText(text, W / 2, H / 2);
  ctx.font = "12px system-ui, sans-serif";
}

/** Loss per iteration as a polyline with a y axis from 0 to the largest loss seen. */
export function drawLossChart(canvas, losses, iterations = 0) {
  const { ctx, W, H } = prepare(canvas, () => drawLossChart(canvas, losses, iterations));
  if (!losses.length) {
    message(ctx, W, H, "no fine-tuning yet");
    return;
  }
  const pad = { left: 40, right: 10, top: 10, bottom: 22 };
  const w = W - pad.left - pad.right;
  const h = H - pad.top - pad.bottom;
  const finite = losses.filter((v) => Number.isFinite(v));
  const ymax = Math.max(1e-6, ...finite) * 1.05;
  const n = Math.max(iterations, losses.length, 2);
  ctx.strokeStyle = GRID;
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const y = pad.top + h - (h * k) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, y);
    ctx.lineTo(pad.left + w, y);
    ctx.stroke();
    ctx.fillStyle = AXIS;
    ctx.fillText(((ymax * k) / 4).toFixed(2), pad.left - 4, y + 4);
  }
  ctx.textAlign = "center";
  ctx.fillText("iteration", pad.left + w / 2, H - 4);
  ctx.textAlign = "left";
  ctx.fillText(String(n), pad.left + w - 16, H - 4);
  ctx.strokeStyle = "#58a6ff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  losses.forEach((loss, i) => {
    if (!Number.isFinite(loss)) return;
    const x = pad.left + (w * i) / (n - 1);
    const y = pad.top + h - (h * loss) / ymax;
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.lineWidth = 1;
  const last = losses[losses.length - 1];
  ctx.fillStyle = TEXT;
  ctx.textAlign = "right";
  ctx.fillText(`loss ${Number(last).toFixed(3)}`, pad.left + w, pad.top + 10);
}

/** Groups of {label, before, after} (fractions 0..1) as paired bars with percent labels. */
export function drawMiouBars(canvas, groups) {
  const { ctx, W, H } = prepare(canvas, () => drawMiouBars(canvas, groups));
  if (!groups.length) {
    message(ctx, W, H, "mIoU appears after a fine-tune");
    return;
  }
  const pad = { left: 34, right: 10, top: 18, bottom: 34 };
  const w = W - pad.left - pad.right;
  const h = H - pad.top - pad.bottom;
  ctx.strokeStyle = GRID;
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const y = pad.top + h - (h * k) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.left, y);
    ctx.lineTo(pad.left + w, y);
    ctx.stroke();
    ctx.fillStyle = AXIS;
    ctx.fillText(`${k * 25}%`, pad.left - 4, y + 4);
  }
  const slot = w / groups.length;
  const bar = Math.min(36, slot / 3);
  groups.forEach((g, i) => {
    const x0 = pad.left + slot * i + slot / 2 - bar;
    [["before", g.before, "#8b949e"], ["after", g.after, "#3fb950"]].forEach(([, v, colour], k) => {
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const bh = h * Math.max(0, Math.min(1, v));
      ctx.fillStyle = colour;
      ctx.fillRect(x0 + k * bar, pad.top + h - bh, bar - 2, bh);
      ctx.fillStyle = TEXT;
      ctx.textAlign = "center";
      ctx.fillText(`${(v * 100).toFixed(1)}`, x0 + k * bar + bar / 2 - 1, pad.top + h - bh - 3);
    });
    ctx.fillStyle = TEXT;
    ctx.textAlign = "center";
    // two lines ("held-out" / "regions") so neighbouring labels never run together
    const words = String(g.label).split(" ");
    const lines = words.length > 1 ? [words[0], words.slice(1).join(" ")] : words;
    lines.forEach((line, k) => {
      ctx.fillText(line, pad.left + slot * i + slot / 2, H - 20 + k * 13, slot - 4);
    });
  });
  ctx.textAlign = "left";
  ctx.fillStyle = "#8b949e";
  ctx.fillRect(pad.left + 4, 3, 10, 8);
  ctx.fillStyle = TEXT;
  ctx.fillText("before", pad.left + 18, 11);
  ctx.fillStyle = "#3fb950";
  ctx.fillRect(pad.left + 64, 3, 10, 8);
  ctx.fillStyle = TEXT;
  ctx.fillText("after", pad.left + 78, 11);
}
