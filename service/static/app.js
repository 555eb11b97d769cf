"use strict";

// Okabe-Ito palette, the colours service/engine/draw.py uses (class i gets colour i mod 8).
const PALETTE = [
  [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66],
  [0, 114, 178], [213, 94, 0], [204, 121, 167], [0, 0, 0],
];

const elements = {
  form: document.getElementById("controls"),
  file: document.getElementById("file"),
  model: document.getElementById("model"),
  conf: document.getElementById("conf"),
  confValue: document.getElementById("conf-value"),
  apiKey: document.getElementById("api-key"),
  detect: document.getElementById("detect"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  canvas: document.getElementById("canvas"),
  table: document.getElementById("detections"),
};

const state = { file: null, image: null, busy: false };

function showError(message) {
  elements.error.textContent = message;
  elements.error.hidden = !message;
}

function headers() {
  const key = elements.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

// Calls the API; throws an Error with the server's message (every error is JSON) on a non-2xx answer.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers() });
  } catch (networkError) {
    throw new Error(`the server cannot be reached: ${networkError.message}`);
  }
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const body = isJson ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = isJson && body.error ? (body.error.message || body.error) : body;
    throw new Error(`${response.status} ${response.statusText}: ${detail}`);
  }
  return body;
}

async function loadModels() {
  try {
    const data = await api("/v1/models");
    const previous = elements.model.value;
    elements.model.replaceChildren(...data.models.map((model) => {
      const option = new Option(model.ready ? model.name : `${model.name} (${model.state})`, model.name);
      option.disabled = !model.ready;
      option.selected = previous ? model.name === previous : model.default;
      return option;
    }));
    showError("");
  } catch (error) {
    showError(`Models could not be listed: ${error.message}`);
  }
  updateButton();
}

function updateButton() {
  elements.detect.disabled = state.busy || !state.image || !elements.model.value;
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`${file.name} cannot be shown by the browser`));
    image.src = URL.createObjectURL(file);
  });
}

function drawResult(result) {
  const { canvas } = elements;
  canvas.width = result.width;
  canvas.height = result.height;
  const context = canvas.getContext("2d");
  context.drawImage(state.image, 0, 0, result.width, result.height);
  const thickness = Math.max(Math.round(((result.width + result.height) / 2) * 0.003), 2);
  context.lineWidth = thickness;
  context.font = `${Math.max(thickness * 6, 12)}px sans-serif`;
  context.textBaseline = "top";
  for (const detection of result.detections) {
    const [r, g, b] = PALETTE[detection.class % PALETTE.length];
    const colour = `rgb(${r}, ${g}, ${b})`;
    const { x1, y1, x2, y2 } = detection.box;
    context.strokeStyle = colour;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${detection.name} ${detection.confidence.toFixed(2)}`;
    const textHeight = Math.max(thickness * 6, 12) + 4;
    const textWidth = context.measureText(label).width + 6;
    const top = y1 - textHeight >= 0 ? y1 - textHeight : y1;
    context.fillStyle = colour;
    context.fillRect(x1, top, textWidth, textHeight);
    context.fillStyle = r + g + b < 450 ? "#fff" : "#000";
    context.fillText(label, x1 + 3, top + 2);
  }
}

function listDetections(result) {
  const rows = result.detections.map((detection, index) => {
    const row = document.createElement("tr");
    const { x1, y1, x2, y2 } = detection.box;
    for (const text of [index + 1, detection.name, detection.confidence.toFixed(3),
      [x1, y1, x2, y2].map((v) => v.toFixed(1)).join(", ")]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  elements.table.tBodies[0].replaceChildren(...rows);
  elements.table.hidden = rows.length === 0;
}

async function detect() {
  if (!state.file || state.busy) return;
  state.busy = true;
  updateButton();
  showError("");
  elements.status.textContent = "Detecting…";
  const body = new FormData();
  body.append("image", state.file);
  body.append("conf", elements.conf.value);
  body.append("model", elements.model.value);
  try {
    const data = await api("/v1/detect", { method: "POST", body });
    const [result] = data.results;
    drawResult(result);
    listDetections(result);
    const count = result.detections.length;
    elements.status.textContent =
      `${count} ${count === 1 ? "box" : "boxes"} · model ${data.model} · ${result.timing_ms.total.toFixed(0)} ms`;
    elements.status.dataset.count = String(count);
  } catch (error) {
    elements.status.textContent = "Detection failed.";
    delete elements.status.dataset.count;
    showError(error.message);
  } finally {
    state.busy = false;
    updateButton();
  }
}

elements.file.addEventListener("change", async () => {
  const [file] = elements.file.files;
  if (!file) return;
  try {
    state.image = await loadImage(file);
    state.file = file;
    await detect();
  } catch (error) {
    state.image = null;
    state.file = null;
    showError(error.message);
  }
  updateButton();
});

elements.conf.addEventListener("input", () => {
  elements.confValue.textContent = Number(elements.conf.value).toFixed(2);
});
elements.conf.addEventListener("change", detect);
elements.model.addEventListener("change", detect);
elements.apiKey.addEventListener("change", () => {
  sessionStorage.setItem("apiKey", elements.apiKey.value);
  loadModels();
});
elements.form.addEventListener("submit", (event) => {
  event.preventDefault();
  detect();
});

elements.apiKey.value = sessionStorage.getItem("apiKey") || "";
loadModels();
