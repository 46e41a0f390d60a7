// The demo page: pick an image, draw instances (boxes, masks, labels), show the caption and class
// scores, rank typed texts. Plain browser JavaScript, no build step. When a drawing is finished the body
// gets data-state="done" (and "error" on failure), which is what the browser test waits for.
"use strict";

const $ = (selector) => document.querySelector(selector);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
let currentFile = null;

function setStatus(text, isError = false) {
  $("#status").textContent = text;
  $("#status").className = isError ? "error" : "";
}

function authHeaders() {
  const token = $("#token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function post(path, fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) {
    form.append(key, typeof value === "string" || value instanceof Blob ? value : JSON.stringify(value));
  }
  const response = await fetch(path, { method: "POST", body: form, headers: authHeaders() });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${body.error ? body.error.message : ""}`);
  }
  return body;
}

// COCO compressed RLE ("counts" string) → run lengths (pycocotools' rleFrString).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// An RLE mask (column-major runs, starting with background) → a tinted canvas of the image's size.
function maskCanvas(rle, color) {
  const [height, width] = rle.size;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  let index = 0, inside = false;
  for (const run of rleCounts(rle.counts)) {
    if (inside) {
      for (let i = index; i < index + run; i += 1) {
        const offset = ((i % height) * width + Math.floor(i / height)) * 4;
        pixels.data.set([r, g, b, 110], offset);
      }
    }
    index += run;
    inside = !inside;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function draw(image, segmentation) {
  const canvas = $("#canvas");
  const scale = Math.min(640 / image.naturalWidth, 480 / image.naturalHeight);  // small images grow
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  segmentation.boxes.forEach((box, i) => {
    const color = COLORS[segmentation.labels[i] % COLORS.length];
    if (segmentation.masks && segmentation.masks[i]) {
      context.drawImage(maskCanvas(segmentation.masks[i], color), 0, 0, canvas.width, canvas.height);
    }
    const [x, y, w, h] = box.map((v) => v * scale);
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.strokeRect(x, y, w, h);
    const label = `${segmentation.names[i]} ${segmentation.scores[i].toFixed(3)}`;
    context.font = "12px sans-serif";
    const width = context.measureText(label).width + 6;
    const left = Math.max(0, Math.min(x, canvas.width - width));  // keep the label on the canvas
    context.fillStyle = color;
    context.fillRect(left, Math.max(0, y - 14), width, 14);
    context.fillStyle = "#fff";
    context.fillText(label, left + 3, Math.max(11, y - 3));
  });
  canvas.dataset.drawn = String(segmentation.boxes.length);
}

function showLabels(classification) {
  const rows = classification.top_names.map((name, i) =>
    `<tr><td>${escapeHtml(name)}</td><td>${classification.top_scores[i].toFixed(3)}</td></tr>`);
  $("#labels tbody").innerHTML = rows.join("");
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot display this file"));
    image.src = URL.createObjectURL(file);
  });
}

async function analyse(file) {
  currentFile = file;
  document.body.dataset.state = "working";
  $("#rank").disabled = true;
  $("#caption").textContent = "";
  setStatus("Asking the model…");
  try {
    const maxDetections = $("#max-detections").value || "10";
    const [image, segmentation, caption, classification] = await Promise.all([
      loadImage(file),
      post("/v1/segment", { image: file, max_detections: maxDetections }),
      post("/v1/caption", { image: file }),
      post("/v1/classify", { image: file, top_k: "5" }),
    ]);
    draw(image, segmentation);
    $("#caption").textContent = caption.caption;
    showLabels(classification);
    setStatus(`${segmentation.boxes.length} instances`);
    $("#rank").disabled = false;
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  }
}

async function rank() {
  const texts = $("#texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!currentFile || texts.length === 0) return;
  const list = $("#ranking");
  list.dataset.state = "working";
  try {
    const ranked = await post("/v1/retrieve/text", { image: currentFile, texts: texts });
    list.innerHTML = ranked.results.map((r) =>
      `<li>${escapeHtml(r.text)} <small>(${r.score.toFixed(3)})</small></li>`).join("");
    list.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    list.dataset.state = "error";
  }
}

$("#file").addEventListener("change", (event) => {
  if (event.target.files.length) analyse(event.target.files[0]);
});
$("#rank").addEventListener("click", rank);
