// The demo page, built from /v1/tasks: one section per endpoint, its form from the endpoint's request fields,
// its answer shown the way the task declares (instances drawn on the image, a label table, a text, a ranking,
// or the JSON). Choosing an image runs every endpoint that takes one image. Plain browser JavaScript, no build
// step. The body's data-state is "ready" once the forms are built, then "done" (or "error") when the runs an
// image started have finished; each section has its own data-state. The browser test waits on these.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
let currentFile = null;
let routes = [];

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
    if (Array.isArray(value) && value.length && value[0] instanceof Blob) {
      value.forEach((blob) => form.append(key, blob));
    } else {
      form.append(key, typeof value === "string" || value instanceof Blob ? value : JSON.stringify(value));
    }
  }
  const response = await fetch(path, { method: "POST", body: form, headers: authHeaders() });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(`${path}: ${response.status} ${body.error ? body.error.message : ""}`);
  }
  return body;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ----------------------------------------------------------------------------------------- forms
function fieldInput(field, example) {
  const value = example !== undefined ? example : field.default;
  const title = escapeHtml(field.description || "");
  const name = escapeHtml(field.name);
  if (field.kind.startsWith("list of")) {
    const text = Array.isArray(value) ? value.join("\n") : "";
    return `<label title="${title}">${name} (one per line)${field.required ? " *" : ""}
      <textarea name="${name}" rows="3">${escapeHtml(text)}</textarea></label>`;
  }
  const type = field.kind === "integer" || field.kind === "number" ? "number" : "text";
  const bounds = ["minimum", "maximum"].filter((b) => b in field)
    .map((b) => `${b === "minimum" ? "min" : "max"}="${field[b]}"`).join(" ");
  const step = field.kind === "number" ? 'step="any"' : "";
  return `<label title="${title}">${name}${field.required ? " *" : ""}
    <input name="${name}" type="${type}" ${bounds} ${step} value="${value === null || value === undefined ? "" : escapeHtml(value)}"></label>`;
}

function buildSection(task, route) {
  const section = document.createElement("section");
  section.dataset.route = route.path;
  section.dataset.state = "idle";
  const images = route.images === "many"
    ? `<label>images <input name="images" type="file" accept="image/*" multiple></label>` +
      (route.uses_gallery ? "<small>(none: the server's indexed gallery)</small>" : "")
    : "";
  section.innerHTML = `<h2>${escapeHtml(route.path)} <small>${escapeHtml(task)}: ${escapeHtml(route.summary)}</small></h2>
    <form>${route.fields.map((f) => fieldInput(f, route.example[f.name])).join(" ")} ${images}
    <button type="submit">Run</button></form><div class="answer"></div>`;
  $("form", section).addEventListener("submit", (event) => {
    event.preventDefault();
    run(route, section);
  });
  return section;
}

function formValues(route, section) {
  const values = {};
  for (const field of route.fields) {
    const input = $(`[name="${field.name}"]`, section);
    const raw = input.value.trim();
    if (raw === "") continue;
    if (field.kind.startsWith("list of")) {
      const items = raw.split("\n").map((t) => t.trim()).filter(Boolean);
      values[field.name] = field.kind.endsWith("string") ? items : items.map(Number);
    } else {
      values[field.name] = raw;
    }
  }
  return values;
}

function ready(route, section) {
  return route.fields.every((f) => !f.required || $(`[name="${f.name}"]`, section).value.trim() !== "");
}

// ---------------------------------------------------------------------------------------- answers
async function run(route, section) {
  const fields = formValues(route, section);
  if (route.images === "one") {
    if (!currentFile) { setStatus("choose an image first", true); return; }
    fields.image = currentFile;
  } else if (route.images === "many") {
    const files = [...$('[name="images"]', section).files];
    if (files.length) fields.images = files;
  }
  section.dataset.state = "working";
  try {
    const answer = await post(route.path, fields);
    await show(route, section, answer);
    section.dataset.state = "done";
  } catch (error) {
    $(".answer", section).innerHTML = `<p class="error">${escapeHtml(error.message)}</p>`;
    section.dataset.state = "error";
    throw error;
  }
}

async function show(route, section, answer) {
  const out = $(".answer", section);
  if (route.shows === "instances" && currentFile) {
    const canvas = document.createElement("canvas");
    out.replaceChildren(canvas);
    drawInstances(canvas, await loadImage(currentFile), answer);
  } else if (route.shows === "labels") {
    out.innerHTML = "<table><thead><tr><th>class</th><th>score</th></tr></thead><tbody>" +
      answer.top_names.map((name, i) =>
        `<tr><td>${escapeHtml(name)}</td><td>${answer.top_scores[i].toFixed(3)}</td></tr>`).join("") +
      "</tbody></table>";
  } else if (route.shows === "text") {
    const text = Object.entries(answer).find(([key, value]) => key !== "task" && typeof value === "string");
    out.innerHTML = `<div class="answer-text">${escapeHtml(text ? text[1] : "")}</div>`;
  } else if (route.shows === "ranking") {
    out.innerHTML = "<ol>" + answer.results.map((r) =>
      `<li>${escapeHtml(r.text !== undefined ? r.text : "image " + (r.image_id !== undefined ? r.image_id : r.index))}` +
      ` <small>(${r.score.toFixed(3)})</small></li>`).join("") + "</ol>";
  } else {
    out.innerHTML = `<pre>${escapeHtml(JSON.stringify(answer, null, 2))}</pre>`;
  }
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

function drawInstances(canvas, image, instances) {
  const scale = Math.min(640 / image.naturalWidth, 480 / image.naturalHeight);  // small images grow
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  instances.boxes.forEach((box, i) => {
    const color = COLORS[instances.labels[i] % COLORS.length];
    if (instances.masks && instances.masks[i]) {
      context.drawImage(maskCanvas(instances.masks[i], color), 0, 0, canvas.width, canvas.height);
    }
    const [x, y, w, h] = box.map((v) => v * scale);
    context.strokeStyle = color;
    context.lineWidth = 2;
    context.strokeRect(x, y, w, h);
    const label = `${instances.names[i]} ${instances.scores[i].toFixed(3)}`;
    context.font = "12px sans-serif";
    const width = context.measureText(label).width + 6;
    const left = Math.max(0, Math.min(x, canvas.width - width));  // keep the label on the canvas
    context.fillStyle = color;
    context.fillRect(left, Math.max(0, y - 14), width, 14);
    context.fillStyle = "#fff";
    context.fillText(label, left + 3, Math.max(11, y - 3));
  });
  canvas.dataset.drawn = String(instances.boxes.length);
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot display this file"));
    image.src = URL.createObjectURL(file);
  });
}

// ------------------------------------------------------------------------------------------ page
async function analyse(file) {
  currentFile = file;
  document.body.dataset.state = "working";
  setStatus("Asking the model…");
  const chosen = routes.filter(({ route, section }) => route.images === "one" && ready(route, section));
  const outcomes = await Promise.allSettled(chosen.map(({ route, section }) => run(route, section)));
  const failed = outcomes.filter((o) => o.status === "rejected");
  if (failed.length) {
    setStatus(failed.map((o) => o.reason.message).join("; "), true);
    document.body.dataset.state = "error";
  } else {
    setStatus(`${chosen.length} endpoints answered`);
    document.body.dataset.state = "done";
  }
}

async function loadRoutes() {
  const response = await fetch("/v1/tasks", { headers: authHeaders() });
  if (!response.ok) {
    setStatus(response.status === 401 ? "this server needs a token: enter it above" : `/v1/tasks: ${response.status}`,
              true);
    return;
  }
  const { tasks } = await response.json();
  const container = $("#routes");
  container.replaceChildren();
  routes = [];
  for (const [task, info] of Object.entries(tasks)) {
    for (const route of info.routes) {
      const section = buildSection(task, route);
      container.appendChild(section);
      routes.push({ route, section });
    }
  }
  setStatus("");
  document.body.dataset.state = "ready";
}

$("#file").addEventListener("change", (event) => {
  if (event.target.files.length) analyse(event.target.files[0]);
});
$("#token").addEventListener("change", loadRoutes);
loadRoutes();
