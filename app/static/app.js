// The page of qdmn-app: one session per tab; every change is made by the server (app/server.py),
// the page draws what it answers.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  sid: null, info: null, video: null, frame: 0, object: 1, extra: [], given: [], done: new Set(),
  objects: [], running: false, ws: null, view: 0,
};
window.qdmn = S; // for tests and the curious

const frameImg = new Image();
const maskImg = new Image();
const waiting = []; // callers of show() waiting for the frame on screen
const base = document.createElement("canvas"); // the frame with its mask, under any preview

function say(text, error = false) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

async function api(method, path, body, raw = false) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    if (raw) { opts.body = body; } else {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
  }
  let res;
  try { res = await fetch(path, opts); } catch (e) { throw new Error(`the server cannot be reached (${e.message})`); }
  const data = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

const sessionPath = (rest) => `/api/s/${S.sid}/${rest}`;

function setBusy(state) { document.body.dataset.state = state; }

// ------------------------------------------------------------------ state and drawing
function applyState(st) {
  const fresh = st.video && (!S.video || st.video.id !== S.video.id);
  S.video = st.video;
  if (!st.video) return;
  // the masks changed (an edit, a run, another video): an earlier export no longer matches
  $("download").hidden = true;
  $("overlay-video").hidden = true;
  S.given = st.given;
  S.done = new Set(st.done);
  S.objects = st.objects;
  if (fresh) {
    S.frame = 0;
    S.extra = [];
    $("canvas").width = base.width = st.video.width;
    $("canvas").height = base.height = st.video.height;
    $("timeline").max = st.video.frames - 1;
    $("editor").hidden = false;
  }
  drawObjects();
  drawStrip();
  show(S.frame);
}

function allObjects() {
  return [...new Set([...S.objects, ...S.extra, S.object])].sort((a, b) => a - b);
}

function colour(id) {
  const c = S.info.palette[id];
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawObjects() {
  const box = $("objects");
  box.textContent = "";
  for (const id of allObjects()) {
    const b = document.createElement("button");
    b.textContent = id;
    b.dataset.object = id;
    b.style.background = colour(id);
    if (id === S.object) b.className = "selected";
    b.onclick = () => { S.object = id; drawObjects(); };
    box.appendChild(b);
  }
}

function drawStrip() {
  const c = $("strip");
  const g = c.getContext("2d");
  const n = S.video.frames;
  g.clearRect(0, 0, c.width, c.height);
  const w = c.width / n;
  g.fillStyle = "#7a9";
  for (const i of S.done) g.fillRect(i * w, 4, Math.max(w, 1), 6);
  g.fillStyle = "#000";
  for (const i of S.given) g.fillRect(i * w, 0, Math.max(w, 2), 10);
  g.fillStyle = "#d33";
  g.fillRect(S.frame * w, 0, Math.max(w, 2), 3);
}

// Load the frame and its mask, then draw; a newer request wins over an older one.
function show(i) {
  S.frame = i;
  $("timeline").value = i;
  $("frame-label").textContent = `frame ${i} / ${S.video.frames - 1}${S.given.includes(i) ? " (marked)" : ""}`;
  const view = ++S.view;
  const stamp = Date.now();
  let left = 2;
  const loaded = () => { if (--left === 0 && view === S.view) compose(); };
  frameImg.onload = maskImg.onload = loaded;
  frameImg.onerror = maskImg.onerror = () => {
    if (view === S.view) { say(`frame ${i} could not be loaded`, true); settle(); }
  };
  frameImg.src = sessionPath(`frame/${i}.jpg?v=${S.video.id}`);  // a new video, new URLs
  maskImg.src = sessionPath(`mask/${i}.png?t=${stamp}`);
  drawStrip();
  return new Promise((resolve) => waiting.push(resolve));
}

function settle() { while (waiting.length) waiting.shift()(); }

function compose() {
  const g = base.getContext("2d");
  g.globalAlpha = 1;
  g.drawImage(frameImg, 0, 0, base.width, base.height);
  g.globalAlpha = 0.55;
  g.drawImage(maskImg, 0, 0, base.width, base.height);
  g.globalAlpha = 1;
  redraw();
  document.body.dataset.frame = S.frame;
  settle();
}

function redraw(preview) {
  const g = $("canvas").getContext("2d");
  g.drawImage(base, 0, 0);
  if (preview) preview(g);
}

// ------------------------------------------------------------------ opening a video
async function upload(file) {
  const limit = S.info.max_upload_mb;
  if (file.size > limit * 1024 * 1024) {
    say(`${file.name} is larger than this server's upload limit of ${limit} MB (qdmn-app --max-upload-mb)`, true);
    return;
  }
  say(`uploading and decoding ${file.name}…`);
  setBusy("opening");
  try {
    const st = await api("PUT", sessionPath(`upload?name=${encodeURIComponent(file.name)}`), file, true);
    applyState(st);
    sayOpened(file.name, st.notes);
  } catch (e) { say(e.message, true); }
  setBusy("idle");
}

// what the page says of a video just opened, and of a file that decoded short of its length
function sayOpened(name, notes) {
  const v = S.video;
  say(`${name}: ${v.frames} frames, ${v.width}x${v.height}. ` +
      (notes.length ? `${notes.join(". ")}.` : "Draw a box around an object."));
}

async function openPath(path) {
  say(`opening ${path}…`);
  setBusy("opening");
  try {
    const st = await api("POST", sessionPath("open"), { path });
    applyState(st);
    $("browser").hidden = true;
    sayOpened(S.video.name, st.notes);
  } catch (e) { say(e.message, true); }
  setBusy("idle");
}

async function browse(path) {
  try {
    const data = await api("GET", `/api/browse?path=${encodeURIComponent(path)}`);
    $("browser").hidden = false;
    $("browse-where").textContent = `root/${path}`;
    const list = $("browse-list");
    list.textContent = "";
    const join = (name) => (path ? `${path}/${name}` : name);
    const item = (text, onclick) => {
      const li = document.createElement("li");
      li.textContent = text;
      li.onclick = onclick;
      list.appendChild(li);
    };
    if (path) item("⬑ ..", () => browse(path.split("/").slice(0, -1).join("/")));
    for (const e of data.entries) {
      if (e.kind === "file") item(`▶ ${e.name}`, () => openPath(join(e.name)));
      else if (e.kind === "frames") item(`▣ ${e.name}/ (frames: open)`, () => openPath(join(e.name)));
      else item(`▸ ${e.name}/`, () => browse(join(e.name)));
    }
  } catch (e) { say(e.message, true); }
}

// ------------------------------------------------------------------ marking
function imagePoint(ev) {
  const c = $("canvas");
  const r = c.getBoundingClientRect();
  return [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height];
}

const tool = () => document.querySelector("input[name=tool]:checked").value;
const radius = () => Number($("radius").value) * Math.max(1, $("canvas").width / 854);
let drag = null;

function pointerDown(ev) {
  if (!S.video || S.running) return;
  $("canvas").setPointerCapture(ev.pointerId);
  drag = { tool: tool(), points: [imagePoint(ev)] };
  preview();
}

function pointerMove(ev) {
  if (!drag) return;
  const p = imagePoint(ev);
  if (drag.tool === "box") drag.points[1] = p; else drag.points.push(p);
  preview();
}

function preview() {
  const [a, b] = [drag.points[0], drag.points[drag.points.length - 1]];
  redraw((g) => {
    g.strokeStyle = drag.tool === "eraser" ? "#fff" : colour(S.object);
    g.fillStyle = g.strokeStyle;
    if (drag.tool === "box") {
      g.lineWidth = Math.max(2, base.width / 400);
      g.setLineDash([8, 6]);
      g.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
      g.setLineDash([]);
    } else {
      g.globalAlpha = 0.6;
      g.lineWidth = 2 * radius();
      g.lineCap = g.lineJoin = "round";
      g.beginPath();
      g.moveTo(a[0], a[1]);
      for (const p of drag.points) g.lineTo(p[0], p[1]);
      g.stroke();
      g.globalAlpha = 1;
    }
  });
}

async function pointerUp(ev) {
  if (!drag) return;
  const d = drag;
  drag = null;
  pointerMove(ev);
  const frame = S.frame;
  try {
    let st;
    if (d.tool === "box") {
      if (d.points.length < 2) { redraw(); return; }
      const [a, b] = d.points;
      say("GrabCut is cutting the object out of the box…");
      st = await api("POST", sessionPath("box"), { frame, object: S.object, box: [a[0], a[1], b[0], b[1]] });
    } else {
      st = await api("POST", sessionPath("stroke"), {
        frame, object: S.object, points: d.points, radius: radius(), erase: d.tool === "eraser",
      });
    }
    applyState(st);
    say(`frame ${frame} marked. ` + (st.notes.length ? st.notes.join(". ") : "Propagate, or mark more."));
  } catch (e) { say(e.message, true); redraw(); }
}

async function maskFile(file) {
  try {
    const st = await api("PUT", sessionPath(`mask/${S.frame}?name=${encodeURIComponent(file.name)}`), file, true);
    applyState(st);
    say(`frame ${S.frame}: mask ${file.name} loaded` + (st.notes.length ? `. ${st.notes.join(". ")}` : ""));
  } catch (e) { say(e.message, true); }
}

function addObject() {
  const all = allObjects();
  if (all.length >= S.info.max_objects) {
    say(`these graphs take at most ${S.info.max_objects} objects (export with --max-objects N for more)`, true);
    return;
  }
  const id = Math.max(0, ...all) + 1;
  S.extra.push(id);
  S.object = id;
  drawObjects();
}

// ------------------------------------------------------------------ propagation
function propagate() {
  if (S.running) return;
  const start = S.frame;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}${sessionPath("propagate")}`);
  S.ws = ws;
  setRunning(true);
  $("progress").value = 0;
  $("fps").textContent = "";
  say(`propagating from frame ${start}…`);
  let showing = false;
  let ended = false;
  ws.onopen = () => ws.send(JSON.stringify({ start }));
  ws.onmessage = async (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "frame") {
      $("progress").max = m.total;
      $("progress").value = m.done;
      $("fps").textContent = m.fps ? `${m.fps.toFixed(1)} FPS (model), ${m.wall_fps.toFixed(1)} end to end` : "";
      S.done.add(m.index);
      if (!showing) { // show the newest frame each time the last one is drawn
        showing = true;
        await show(m.index);
        showing = false;
      }
    } else if (m.type === "done") {
      ended = true;
      say(`${m.cancelled ? "cancelled after" : "propagated"} ${m.frames} frames from frame ${m.start}` +
          (m.fps ? ` at ${m.fps.toFixed(1)} FPS (model)` : "") + ". Scrub, correct a frame and propagate again from it, or export.");
      finish("done");
    } else if (m.type === "error") {
      ended = true;
      say(m.message, true);
      finish("idle");
    }
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    if (!ended) say("the connection to the server was lost", true);
    finish("idle");
  };
}

async function finish(state) {
  const ws = S.ws;
  S.ws = null;
  if (ws) ws.close();
  setRunning(false);
  try { applyState(await api("GET", sessionPath("state"))); } catch (e) { say(e.message, true); }
  setBusy(state);
}

function setRunning(on) {
  S.running = on;
  $("propagate").disabled = on;
  $("export").disabled = on;
  $("cancel").disabled = !on;
  if (on) setBusy("running");
}

function cancel() {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify({ cancel: true }));
}

async function exportZip() {
  say("exporting the masks, run.json and the overlay video…");
  setBusy("exporting");
  try {
    const r = await api("POST", sessionPath("export"));
    const a = $("download");
    a.href = r.url;
    a.download = r.name;
    a.textContent = `download ${r.name}`;
    a.hidden = false;
    const v = $("overlay-video");
    v.src = r.video;
    v.hidden = false;
    say(`exported: ${r.name}`);
    setBusy("exported");
  } catch (e) { say(e.message, true); setBusy("idle"); }
}

// ------------------------------------------------------------------ wiring
async function startSession() {
  try {
    S.info = await api("POST", "/api/sessions");
    S.sid = S.info.id;
    $("model").textContent = `model ${S.info.model}, ${S.info.backend}, up to ${S.info.max_objects} objects`;
    drawObjects();
    setBusy("idle");
    say("Open a video to start.");
  } catch (e) { say(e.message, true); }
}

window.addEventListener("pagehide", () => { if (S.sid) navigator.sendBeacon(sessionPath("close")); });
// the server forgets a session no page has asked about for a while (app/sessions.py)
setInterval(() => { if (S.sid) fetch(sessionPath("alive")).catch(() => {}); }, 60_000);
$("upload").onchange = (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); ev.target.value = ""; };
$("open-path").onclick = () => openPath($("path").value.trim());
$("path").onkeydown = (ev) => { if (ev.key === "Enter") openPath($("path").value.trim()); };
$("browse").onclick = () => browse("");
$("mask-file").onchange = (ev) => { if (ev.target.files[0]) maskFile(ev.target.files[0]); ev.target.value = ""; };
$("add-object").onclick = addObject;
$("timeline").oninput = (ev) => show(Number(ev.target.value));
$("prev").onclick = () => { if (S.frame > 0) show(S.frame - 1); };
$("next").onclick = () => { if (S.frame < S.video.frames - 1) show(S.frame + 1); };
$("propagate").onclick = propagate;
$("cancel").onclick = cancel;
$("export").onclick = exportZip;
$("canvas").addEventListener("pointerdown", pointerDown);
$("canvas").addEventListener("pointermove", pointerMove);
$("canvas").addEventListener("pointerup", pointerUp);
document.addEventListener("keydown", (ev) => {
  if (!S.video || ev.target.tagName === "INPUT") return; // a slider steps by itself
  if (ev.key === "ArrowLeft" && S.frame > 0) show(S.frame - 1);
  if (ev.key === "ArrowRight" && S.frame < S.video.frames - 1) show(S.frame + 1);
  if (ev.key === "Home") show(0);
  if (ev.key === "End") show(S.video.frames - 1);
});
startSession();
