// LiveAct studio: upload or record, start a job, play its live fragmented mp4 through Media Source
// Extensions, show progress. No libraries; everything talks to the API documented in the README.
"use strict";
const $ = (id) => document.getElementById(id);
const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
const stats = (window.liveactStats = { firstFrameMs: null, frames: [], startedAt: null, jobId: null });
let current = null; // { id, live, sockets: [], mic: {ctx, stream} }

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

let defaultsShown = false;

async function refreshHealth() {
  try {
    const h = await (await fetch("/api/health")).json();
    if (!defaultsShown) {
      // The server's defaults are the model's own (25 fps for Nano, 24 for the official folders).
      defaultsShown = true;
      $("fps").value = h.fps;
      $("fps-out").textContent = h.fps;
      $("size").placeholder = `W*H (${h.size})`;
    }
    $("health").textContent = `model ${h.model} · ${h.busy ? "busy" : "idle"}${h.queued ? ` · ${h.queued} queued` : ""}`;
  } catch (e) {
    $("health").textContent = "server unreachable";
  }
}

// ---------------------------------------------------------------- form
function addEdit(first = 0, last = 1, text = "") {
  const row = document.createElement("div");
  row.className = "edit";
  row.innerHTML = '<input type="number" min="0" class="first"><input type="number" min="0" class="last">' +
    '<input type="text" class="text" placeholder="e.g. The person smiles."><button type="button">×</button>';
  row.querySelector(".first").value = first;
  row.querySelector(".last").value = last;
  row.querySelector(".text").value = text;
  row.querySelector("button").onclick = () => row.remove();
  $("edits").appendChild(row);
}

function edits() {
  return [...document.querySelectorAll("#edits .edit")]
    .map((r) => [Number(r.querySelector(".first").value), Number(r.querySelector(".last").value),
      r.querySelector(".text").value.trim()])
    .filter((e) => e[2]);
}

const mode = () => document.querySelector('input[name="mode"]:checked').value;

$("add-edit").onclick = () => {
  const rows = edits();
  const from = rows.length ? rows[rows.length - 1][1] + 1 : 0;
  addEdit(from, from + 2);
};
$("fps").oninput = () => ($("fps-out").textContent = $("fps").value);
$("image").onchange = () => {
  const f = $("image").files[0];
  $("image-preview").hidden = !f;
  if (f) $("image-preview").src = URL.createObjectURL(f);
};
$("audio").onchange = () => {
  const f = $("audio").files[0];
  $("audio-preview").hidden = !f;
  if (f) $("audio-preview").src = URL.createObjectURL(f);
};
document.querySelectorAll('input[name="mode"]').forEach((r) =>
  (r.onchange = () => ($("upload-audio").hidden = mode() !== "upload")));

// ---------------------------------------------------------------- jobs
async function start() {
  const image = $("image").files[0];
  if (!image) return say("Choose a portrait image first.", true);
  const live = mode() === "mic";
  const form = new FormData();
  form.append("image", image);
  if (live) {
    form.append("live", "1");
    form.append("sample_rate", "16000");
  } else {
    const audio = $("audio").files[0];
    if (!audio) return say("Choose an audio file (or use the microphone).", true);
    form.append("audio", audio);
  }
  form.append("prompt", $("prompt").value);
  form.append("edits", JSON.stringify(edits()));
  form.append("fps", $("fps").value);
  if ($("size").value.trim()) form.append("size", $("size").value.trim());
  form.append("seed", $("seed").value || "42");
  form.append("stop_when_unwatched", "1");
  $("start").disabled = true;
  $("download").hidden = true;
  say("Uploading…");
  let mic = null;
  try {
    if (live) mic = await openMic(); // ask for the microphone before the job starts its clock
    stats.startedAt = performance.now();
    stats.firstFrameMs = null;
    stats.frames = [];
    const res = await fetch("/api/jobs", { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    stats.jobId = body.id;
    current = { id: body.id, live, sockets: [], mic };
    $("stop").disabled = false;
    say(body.status === "queued" && body.queue_position ? `Queued (position ${body.queue_position})…` : "Generating…");
    play(body.id, live);
    if (live) sendMic(body.id, mic);
    poll(body.id);
  } catch (e) {
    if (mic) closeMic(mic);
    say(String(e.message || e), true);
    $("start").disabled = false;
  }
}

async function stop() {
  if (!current) return;
  await fetch(`/api/jobs/${current.id}`, { method: "DELETE" });
  if (current.mic) closeMic(current.mic);
  say("Stopping…");
}

async function poll(id) {
  while (current && current.id === id) {
    let job;
    try {
      job = await (await fetch(`/api/jobs/${id}`)).json();
    } catch (e) {
      say("Lost the server.", true);
      break;
    }
    $("st-status").textContent = job.status + (job.queue_position ? ` (#${job.queue_position})` : "");
    if (job.status === "running" && $("message").textContent.startsWith("Queued")) say("Generating…");
    $("st-blocks").textContent = job.blocks_total ? `${job.blocks_done} / ${job.blocks_total}` : `${job.blocks_done}`;
    $("st-fps").textContent = job.generation_fps ?? "–";
    $("st-rtf").textContent = job.real_time_factor ?? "–";
    if (job.timeline) showSpeechLatency(job.timeline);
    if (["finished", "failed", "cancelled"].includes(job.status)) {
      if (job.status === "finished") {
        $("download").href = job.video_url;
        $("download").hidden = false;
        say("Finished.");
      } else if (job.status === "failed") {
        say(`Generation failed: ${job.error}`, true);
      } else {
        say("Cancelled.");
      }
      if (current.mic) closeMic(current.mic);
      $("start").disabled = false;
      $("stop").disabled = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  refreshHealth();
}

// Speech-to-screen latency of live jobs: when a block's first frame was on screen minus when the
// audio sample of that frame reached the server (same clock when browser and server share a machine;
// across machines it also holds the clock offset).
function showSpeechLatency(timeline) {
  const shown = new Map(stats.frames);
  const latencies = [];
  for (const [frame, arrival] of timeline) {
    if (arrival != null && shown.has(frame)) latencies.push(shown.get(frame) / 1000 - arrival);
  }
  stats.speechToScreen = latencies;
  if (latencies.length) {
    const sorted = [...latencies].sort((a, b) => a - b);
    $("st-latency").textContent = `${sorted[Math.floor(sorted.length / 2)].toFixed(2)} s`;
  }
}

// ---------------------------------------------------------------- player (MSE over WebSocket)
function play(id, live) {
  const video = $("player");
  const ws = new WebSocket(wsUrl(`/api/jobs/${id}/stream`));
  ws.binaryType = "arraybuffer";
  current.sockets.push(ws);
  const pending = [];
  let source = null, buffer = null, ended = false, fps = 24;

  const pump = () => {
    if (!buffer || buffer.updating) return;
    if (pending.length) {
      const total = pending.reduce((n, c) => n + c.byteLength, 0);
      const joined = new Uint8Array(total);
      let at = 0;
      for (const c of pending.splice(0)) { joined.set(c, at); at += c.byteLength; }
      try { buffer.appendBuffer(joined); } catch (e) { say(`Player error: ${e.message}`, true); }
      return;
    }
    if (ended && source.readyState === "open") source.endOfStream();
  };
  const onFrame = (now, meta) => {
    if (stats.firstFrameMs === null) {
      stats.firstFrameMs = performance.now() - stats.startedAt;
      $("st-first").textContent = `${(stats.firstFrameMs / 1000).toFixed(2)} s`;
    }
    stats.frames.push([Math.round(meta.mediaTime * fps), performance.timeOrigin + meta.expectedDisplayTime]);
    if (stats.frames.length > 2000) stats.frames.splice(0, 1000);
    video.requestVideoFrameCallback(onFrame);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") {
      pending.push(new Uint8Array(ev.data));
      return pump();
    }
    const msg = JSON.parse(ev.data);
    if (msg.type === "init") {
      fps = msg.fps;
      if (!window.MediaSource || !MediaSource.isTypeSupported(msg.mime)) {
        return say(`This browser cannot play ${msg.mime}`, true);
      }
      source = new MediaSource();
      video.src = URL.createObjectURL(source);
      source.addEventListener("sourceopen", () => {
        buffer = source.addSourceBuffer(msg.mime);
        buffer.addEventListener("updateend", () => {
          if (video.paused && buffer.buffered.length && !video.ended) {
            video.play().catch(() => { video.muted = true; video.play().catch(() => {}); });
          }
          if (live && buffer.buffered.length) {
            // Live: stay near the newest frame (latency over completeness).
            const edge = buffer.buffered.end(buffer.buffered.length - 1);
            if (edge - video.currentTime > 1.5) video.currentTime = edge - 0.1;
          }
          pump();
        });
        pump();
      }, { once: true });
      video.muted = live; // live: the speaker hears themselves otherwise (and the mic would echo)
      video.requestVideoFrameCallback(onFrame);
    } else if (msg.type === "end") {
      ended = true;
      if (msg.error) say(`Generation failed: ${msg.error}`, true);
      pump();
    }
  };
}

// ---------------------------------------------------------------- microphone (live jobs)
async function openMic() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const ctx = new AudioContext({ sampleRate: 16000 });
  await ctx.audioWorklet.addModule("/static/mic-worklet.js");
  return { stream, ctx };
}

function sendMic(id, mic) {
  const ws = new WebSocket(wsUrl(`/api/jobs/${id}/audio?format=f32le`));
  ws.binaryType = "arraybuffer";
  current.sockets.push(ws);
  const node = new AudioWorkletNode(mic.ctx, "pcm-tap");
  node.port.onmessage = (e) => { if (ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  const silent = mic.ctx.createGain();
  silent.gain.value = 0;
  mic.ctx.createMediaStreamSource(mic.stream).connect(node).connect(silent).connect(mic.ctx.destination);
  mic.ws = ws;
  stats.micChunks = 0;
  node.port.addEventListener("message", () => stats.micChunks++);
}

function closeMic(mic) {
  if (mic.ws && mic.ws.readyState === WebSocket.OPEN) mic.ws.send("end");
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.ctx.close();
}

$("start").onclick = start;
$("stop").onclick = stop;
window.addEventListener("pagehide", () => {
  if (current) fetch(`/api/jobs/${current.id}`, { method: "DELETE", keepalive: true });
});
refreshHealth();
