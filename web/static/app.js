// ARS FineTune web UI (plain ES modules, no build step).
//
// Stable element ids for tests (Playwright):
//   status bar:  #robot-select, #status-conn (connected|reconnecting|connecting), #status-online
//                (online|offline), #status-server, #status-model (active model version),
//                #status-fps, #status-candidates, #status-bytes
//   buttons:     #btn-start_segmentation, #btn-stop_segmentation, #btn-transfer_data,
//                #btn-start_annotation, #btn-stop_annotation, #btn-start_finetune,
//                #btn-transfer_model, #btn-cancel_finetune, #btn-rollback; each button's answer
//                in #answer-<cmd> (sent / accepted / done / failed / rejected: message)
//   live view:   #view-frame, #view-mask (canvases), #overlay-opacity (range 0..100), #legend,
//                #view-info (frame id, inference ms)
//   fine-tune:   #ft-progress (text in #ft-progress-text, e.g. "42% · ETA 12 s"),
//                #ft-progress-bar, #loss-chart, #miou-chart, #model-history (tbody)
//   event log:   #event-log (children .log-line[data-level]), #log-level, #log-clear
//   editor:      #editor (hidden unless an annotation session is open), #region-queue
//                (li[data-region-id]), #editor-progress ("k of n done"), #editor-status,
//                #editor-canvas, #editor-palette (button#class-<trainId>), #tool-brush,
//                #tool-eraser, #tool-polygon, #tool-scribble, #btn-fill, #brush-size,
//                #btn-prefill, #btn-undo, #btn-redo, #zoom-in, #zoom-out, #btn-save, #btn-next,
//                #btn-skip
//   body[data-ws="open"|"closed"] tells whether the WebSocket is up.
//
// WebSocket (/ws): the server sends JSON {type: hello|robot_state|robot_event|server_state|
// server_event|model_status|finetune_history|reply|error|pong} and binary preview envelopes; the page sends
// {type: "command", id, robot_id, cmd, args}, {type: "request", id, req, args} and
// {type: "select", robot_id} (only that robot's previews).

import { drawLossChart, drawMiouBars } from "./charts.js";
import { Editor } from "./editor.js";
import { bitmapLabels, decodeImage, parseEnvelope } from "./envelope.js";
import { CLASS_NAMES, colorize, cssColor, setClasses } from "./palette.js";

const $ = (id) => document.getElementById(id);
const LEVELS = { debug: 0, info: 1, warning: 2, error: 3 };
const MAX_LOG_LINES = 500;
// The commands this page may send arrive in the hello (web/ws.py ALLOWED_COMMANDS); each has a
// button[data-cmd], which stays disabled unless the hello names it.
let commandButtons = [];

const state = {
  robots: new Map(), // rid -> RobotState
  server: null, // ServerState
  selected: localStorage.getItem("ars-robot") || "",
  connected: false,
  commands: new Map(), // command id -> cmd name (to show answers on the right button)
  losses: [],
  jobId: null,
  lastMetrics: null,
  lastPreview: null,
};

// --- WebSocket with reconnect ---------------------------------------------------------------
class Link {
  constructor(onMessage, onBinary, onStatus) {
    this.onMessage = onMessage;
    this.onBinary = onBinary;
    this.onStatus = onStatus;
    this.pending = new Map();
    this.seq = 0;
    this.delay = 500;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.delay = 500;
      this.onStatus("connected");
      if (state.selected) this.post({ type: "select", robot_id: state.selected });
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        this.onBinary(ev.data);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if ((msg.type === "reply" || msg.type === "error") && msg.id && this.pending.has(msg.id)) {
        const resolve = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        resolve(msg.type === "error" ? { ok: false, error: msg.error, data: {} } : msg);
      }
      this.onMessage(msg);
    };
    ws.onclose = () => {
      for (const resolve of this.pending.values()) resolve({ ok: false, error: "connection lost", data: {} });
      this.pending.clear();
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, 10000);
      this.onStatus("reconnecting", wait);
      setTimeout(() => this.connect(), wait);
    };
  }

  send(msg) {
    const id = `m${++this.seq}`;
    const promise = new Promise((resolve) => this.pending.set(id, resolve));
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this.pending.delete(id);
      return Promise.resolve({ ok: false, error: "not connected", data: {} });
    }
    this.ws.send(JSON.stringify({ ...msg, id }));
    return promise;
  }

  /** Fire and forget (no reply expected). */
  post(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  request(req, args = {}) {
    return this.send({ type: "request", req, args });
  }
}

// --- event log --------------------------------------------------------------------------
function logLine(level, source, text, ts = Date.now() / 1000) {
  const box = $("event-log");
  const line = document.createElement("div");
  line.className = `log-line level-${level}`;
  line.dataset.level = level;
  const time = new Date(ts * 1000).toLocaleTimeString();
  line.textContent = `${time} ${source.padEnd(14)} ${level.padEnd(7)} ${text}`;
  line.hidden = LEVELS[level] < LEVELS[$("log-level").value];
  const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.append(line);
  while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
  if (stick) box.scrollTop = box.scrollHeight;
}

function logEvent(ev) {
  if (ev.kind === "progress") return;
  let data = "";
  if (ev.kind === "done" && ev.data && Object.keys(ev.data).length) {
    const { losses, ...rest } = ev.data;
    data = ` ${JSON.stringify(rest)}`.slice(0, 240);
  }
  const cmd = ev.cmd ? `[${ev.cmd}] ` : "";
  const kind = ev.kind === "info" ? "" : `${ev.kind} `;
  logLine(ev.level, ev.source, `${kind}${cmd}${ev.msg}${data}`, ev.ts);
}

function applyLogFilter() {
  const min = LEVELS[$("log-level").value];
  for (const line of $("event-log").children) line.hidden = LEVELS[line.dataset.level] < min;
}

// --- status bar and buttons -------------------------------------------------------------
function fmtBytes(n) {
  if (!Number.isFinite(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function setPill(el, on, text) {
  el.textContent = text;
  el.classList.toggle("on", on);
  el.classList.toggle("off", !on);
}

function newerModelExists(robot) {
  const models = (state.server && state.server.models) || [];
  const active = robot && robot.model ? robot.model.version : null;
  const mine = models.filter((m) => m.robot_id === robot.robot_id);
  if (!mine.length) return false;
  const current = mine.find((m) => m.version === active);
  return mine.some((m) => m.version !== active && (!current || m.created > current.created));
}

function renderStatus() {
  const rid = state.selected;
  const robot = state.robots.get(rid);
  const server = state.server;
  setPill($("status-online"), Boolean(robot && robot.online), robot && robot.online ? "online" : "offline");
  setPill($("status-server"), Boolean(server && server.online), server && server.online ? "online" : "offline");
  $("status-model").textContent = robot && robot.model ? robot.model.version : "-";
  $("status-fps").textContent = robot ? Number(robot.fps).toFixed(1) : "-";
  $("status-candidates").textContent = robot ? `${robot.candidates} (${robot.unsent_candidates} unsent)` : "-";
  $("status-bytes").textContent = robot ? fmtBytes(robot.bytes_sent) : "-";

  const online = Boolean(state.connected && robot && robot.online);
  const srv = Boolean(state.connected && server && server.online);
  const ft = server ? server.finetune : null;
  const running = Boolean(ft && ft.state === "running");
  const ann = server ? server.annotation : null;
  const enabled = {
    start_segmentation: online && !robot.segmenting,
    stop_segmentation: online && robot.segmenting,
    transfer_data: online && srv && robot.unsent_candidates > 0,
    start_annotation: srv && Boolean(rid) && !(ann && ann.open) && server.regions > 0,
    stop_annotation: srv && Boolean(ann && ann.open),
    start_finetune: srv && Boolean(rid) && server.annotated > 0 && !running,
    transfer_model: srv && online && newerModelExists(robot),
    cancel_finetune: srv && running,
    rollback: online && Boolean(robot.previous_model),
  };
  for (const cmd of commandButtons) $(`btn-${cmd}`).disabled = !enabled[cmd];
}

function renderRobotSelect() {
  const select = $("robot-select");
  const ids = new Set([...state.robots.keys(), ...((state.server && state.server.robots) || [])]);
  const wanted = [...ids].sort();
  const have = [...select.options].map((o) => o.value).filter(Boolean);
  if (wanted.join() !== have.join()) {
    select.replaceChildren(
      ...wanted.map((rid) => {
        const o = document.createElement("option");
        o.value = rid;
        return o;
      }),
    );
  }
  for (const o of select.options) {
    const r = state.robots.get(o.value);
    if (o.value) o.textContent = `${o.value}${r && r.online ? "" : " (offline)"}`;
  }
  if (!state.selected || !ids.has(state.selected)) {
    const online = wanted.find((rid) => state.robots.get(rid)?.online);
    const previous = state.selected;
    state.selected = online || wanted[0] || "";
    if (state.selected && state.selected !== previous) link.post({ type: "select", robot_id: state.selected });
  }
  select.value = state.selected;
}

function showAnswer(cmd, text, cls) {
  const el = $(`answer-${cmd}`);
  if (!el) return;
  el.textContent = text;
  el.className = `answer ${cls}`;
  el.title = text;
}

async function sendCommand(cmd) {
  const rid = state.selected;
  if (!rid) return;
  showAnswer(cmd, "sending…", "pending");
  const reply = await link.send({ type: "command", robot_id: rid, cmd, args: {} });
  if (!reply.ok) {
    showAnswer(cmd, `error: ${reply.error}`, "bad");
    logLine("error", "web", `${cmd}: ${reply.error}`);
    return;
  }
  state.commands.set(reply.data.command_id, cmd);
  showAnswer(cmd, "sent", "pending");
}

function answerFromEvent(ev) {
  const cmd = (ev.ref && state.commands.get(ev.ref)) || null;
  if (!cmd) return;
  const cls = { accepted: "pending", done: "good", failed: "bad", rejected: "bad" }[ev.kind];
  if (!cls) return;
  showAnswer(cmd, `${ev.kind}: ${ev.msg}`, cls);
}

// --- live view --------------------------------------------------------------------------
async function onPreview(buffer) {
  let env;
  try {
    env = parseEnvelope(buffer);
  } catch (err) {
    logLine("warning", "web", `bad preview: ${err.message}`);
    return;
  }
  const header = env.header;
  if (header.robot_id !== state.selected) return;
  if (state.decoding) {
    state.lastPreview = env; // latest wins while the previous frame decodes
    return;
  }
  state.decoding = true;
  try {
    let next = env;
    while (next) {
      state.lastPreview = null;
      await drawPreview(next);
      next = state.lastPreview;
    }
  } finally {
    state.decoding = false;
  }
}

async function drawPreview(env) {
  const [jpeg, png] = env.parts;
  const frame = await decodeImage(jpeg, "image/jpeg");
  const maskBitmap = await decodeImage(png, "image/png");
  const { labels, width, height } = bitmapLabels(maskBitmap);
  const fc = $("view-frame");
  if (fc.width !== frame.width || fc.height !== frame.height) {
    fc.width = frame.width;
    fc.height = frame.height;
  }
  fc.getContext("2d").drawImage(frame, 0, 0);
  const mc = $("view-mask");
  if (mc.width !== frame.width || mc.height !== frame.height) {
    mc.width = frame.width;
    mc.height = frame.height;
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d").putImageData(colorize(labels, width, height), 0, 0);
  const ctx = mc.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, mc.width, mc.height);
  ctx.drawImage(frame, 0, 0);
  ctx.globalAlpha = Number($("overlay-opacity").value) / 100;
  ctx.drawImage(layer, 0, 0, mc.width, mc.height);
  ctx.globalAlpha = 1;
  const present = new Set(labels);
  for (const li of $("legend").children) li.classList.toggle("present", present.has(Number(li.dataset.class)));
  const h = env.header;
  $("view-info").textContent = `${h.frame_id} · ${h.model_version} · ${Number(h.infer_ms).toFixed(0)} ms`;
  frame.close();
  maskBitmap.close();
}

function buildLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  CLASS_NAMES.forEach((name, cls) => {
    const li = document.createElement("li");
    li.dataset.class = String(cls);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = cssColor(cls);
    li.append(sw, document.createTextNode(`${cls} ${name}`));
    legend.append(li);
  });
}

// --- fine-tuning ------------------------------------------------------------------------
function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 90) return ` · ETA ${Math.round(s)} s`;
  return ` · ETA ${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function setProgress(percent, text) {
  const p = Math.max(0, Math.min(100, percent || 0));
  $("ft-progress-bar").style.width = `${p}%`;
  $("ft-progress-text").textContent = text;
  $("ft-progress").dataset.percent = p.toFixed(0);
}

function onProgress(d) {
  if (d.job_id !== state.jobId) {
    state.jobId = d.job_id;
    state.losses = [];
  }
  if (Number.isInteger(d.iteration) && Number.isFinite(d.loss)) state.losses[d.iteration - 1] = d.loss;
  const dense = state.losses.filter((v) => v !== undefined);
  drawLossChart($("loss-chart"), dense, d.iterations || 0);
  setProgress(d.percent, `${Number(d.percent).toFixed(0)}% · iteration ${d.iteration}/${d.iterations}${fmtEta(d.eta_s)}`);
}

function onFinetuneDone(d) {
  if (Array.isArray(d.losses)) {
    state.losses = d.losses;
    drawLossChart($("loss-chart"), d.losses, d.losses.length);
  }
  state.lastMetrics = figureGroups(d);
  showFigureSets(Array.isArray(d.figures) ? d.figures : []);
  drawMiouBars($("miou-chart"), state.lastMetrics);
  setProgress(100, `done: ${d.version || ""} in ${Number(d.seconds || 0).toFixed(0)} s`);
}

// The names the server gives each figure, for a done event from an older server.
const FIGURE_NAMES = [
  ["miou_heldout", "held-out regions"],
  ["miou_regions", "labelled regions"],
  ["miou_rural", "rural frames"],
  ["miou_urban", "urban frames"],
];

/** Bars for a done event: the server's figures (held-out regions first), else its metrics. */
function figureGroups(d) {
  if (Array.isArray(d.figures) && d.figures.length) {
    return d.figures.map((f) => ({ label: f.name, before: f.before, after: f.after }));
  }
  const before = d.metrics_before || {};
  const after = d.metrics_after || {};
  return FIGURE_NAMES.filter(([k]) => after[k] !== undefined).map(([k, label]) => ({
    label, before: before[k], after: after[k],
  }));
}

/** Under the chart: what each figure is measured on, so a falling bar is read correctly. */
function showFigureSets(figures) {
  const list = $("miou-sets");
  list.replaceChildren(
    ...figures.map((f) => {
      const li = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = f.name;
      li.append(name, document.createTextNode(`: ${f.evaluated_on}`));
      return li;
    }),
  );
}

function renderFinetune(server) {
  const ft = server.finetune;
  if (ft.state === "running") {
    setProgress(ft.percent, `${Number(ft.percent).toFixed(0)}% · iteration ${ft.iteration}/${ft.iterations}${fmtEta(ft.eta_s)}`);
  } else if (!state.lastMetrics) {
    const text = { idle: "idle", done: "done", failed: `failed: ${ft.error || ""}`, cancelled: "cancelled" }[ft.state];
    setProgress(ft.state === "done" ? 100 : 0, text || ft.state);
  }
  const body = $("model-history");
  const models = (server.models || []).slice().sort((a, b) => b.created - a.created);
  body.replaceChildren(
    ...models.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.version = m.version;
      const cells = [
        m.version,
        new Date(m.created * 1000).toLocaleString(),
        pct(m.metrics.miou_heldout),
        pct(m.metrics.miou_rural),
        pct(m.metrics.miou_urban),
        (m.active_on || []).join(", ") || "-",
      ];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      if ((m.active_on || []).includes(state.selected)) tr.classList.add("active");
      return tr;
    }),
  );
  if (!state.lastMetrics) {
    // Before any live job this session: show the newest model's metrics against its parent's.
    const newest = models.find((m) => m.robot_id === state.selected && m.parent);
    const parent = newest && models.find((m) => m.version === newest.parent);
    if (newest && parent) {
      const before = newest.metrics_before || parent.metrics;
      drawMiouBars($("miou-chart"), FIGURE_NAMES.filter(([k]) => newest.metrics[k] !== undefined).map(([k, label]) => ({
        label, before: before[k], after: newest.metrics[k],
      })));
    }
  }
}

function pct(v) {
  return Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : "-";
}

// --- messages ---------------------------------------------------------------------------
const editor = new Editor({
  request: (req, args) => link.request(req, args),
  log: (level, msg) => logLine(level, "web", msg),
});

function syncEditor() {
  const ann = state.server ? state.server.annotation : null;
  if (ann && ann.open) {
    const rid = ann.robot_id || state.selected;
    if (!editor.isOpen || editor.robotId !== rid) editor.open(rid);
  } else if (editor.isOpen) {
    editor.close();
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      commandButtons = msg.commands.filter((cmd) => $(`btn-${cmd}`) !== null);
      renderStatus();
      setClasses(msg.classes);
      buildLegend();
      editor.buildPalette();
      logLine("info", "web", `connected (${msg.mqtt_connected ? "broker up" : "broker not reached yet"})`);
      break;
    case "robot_state":
      state.robots.set(msg.robot_id, msg.state);
      renderRobotSelect();
      renderStatus();
      break;
    case "server_state":
      state.server = msg.state;
      renderRobotSelect();
      renderStatus();
      renderFinetune(msg.state);
      syncEditor();
      break;
    case "web_event":
      logEvent(msg.event);
      break;
    case "robot_event":
      logEvent(msg.event);
      answerFromEvent(msg.event);
      break;
    case "server_event": {
      const ev = msg.event;
      if (ev.kind === "progress") onProgress(ev.data);
      else logEvent(ev);
      if (ev.kind === "done" && ev.cmd === "start_finetune") onFinetuneDone(ev.data);
      if (ev.kind === "done" && ev.cmd === "start_annotation" && editor.isOpen) editor.refresh();
      answerFromEvent(ev);
      break;
    }
    case "model_status": {
      const s = msg.status;
      if (s.state !== "receiving" || s.missing.length) {
        const level = s.state === "rejected" || s.state === "failed" ? "error" : "info";
        logLine(level, `robot:${msg.robot_id}`, `model ${s.version} ${s.state}${s.error ? `: ${s.error}` : ""}`, s.ts);
      }
      if (s.state === "receiving" && s.chunks) showAnswer("transfer_model", `receiving ${s.received}/${s.chunks}`, "pending");
      break;
    }
    case "finetune_history":
      state.jobId = msg.job_id;
      state.losses = [];
      for (const [it, loss] of msg.losses) state.losses[it - 1] = loss;
      drawLossChart($("loss-chart"), state.losses.filter((v) => v !== undefined), msg.iterations || 0);
      break;
    case "error":
      logLine("error", "web", msg.error);
      break;
    default:
      break;
  }
}

function onLinkStatus(status, wait) {
  state.connected = status === "connected";
  document.body.dataset.ws = state.connected ? "open" : "closed";
  setPill($("status-conn"), state.connected, state.connected ? "connected" : `reconnecting (${Math.round(wait / 1000)} s)`);
  if (!state.connected) {
    // The snapshot after reconnect refills everything; mark robots unknown until then.
    state.robots.clear();
    state.server = null;
  }
  renderStatus();
}

const link = new Link(onMessage, onPreview, onLinkStatus);

// --- wiring -----------------------------------------------------------------------------
drawLossChart($("loss-chart"), []);
drawMiouBars($("miou-chart"), []);
for (const b of document.querySelectorAll("button[data-cmd]")) {
  b.addEventListener("click", () => sendCommand(b.dataset.cmd));
}
$("robot-select").addEventListener("change", (e) => {
  state.selected = e.target.value;
  localStorage.setItem("ars-robot", state.selected);
  link.post({ type: "select", robot_id: state.selected });
  renderStatus();
  if (state.server) renderFinetune(state.server);
});
$("log-level").addEventListener("change", applyLogFilter);
$("log-clear").addEventListener("click", () => $("event-log").replaceChildren());
renderStatus();
