"use strict";
// The catsdogs page: every photo dropped or chosen is sent on its own to POST /predict, so that
// results appear as they come (and the server batches the requests that arrive together).

const results = document.getElementById("results");
const template = document.getElementById("card-template");
const dropZone = document.getElementById("drop-zone");
const fileInput = document.getElementById("file-input");

// A server started with --api-key wants the key on its API. The page takes it from its own
// address (/#key=KEY after the server's address: a fragment, which browsers never send over the network)
// or asks for it once, and keeps it for this tab.
const KEY_STORAGE = "catsdogs-api-key";
const keyInAddress = new URLSearchParams(window.location.hash.slice(1)).get("key");
if (keyInAddress) {
  sessionStorage.setItem(KEY_STORAGE, keyInAddress);
  history.replaceState(null, "", window.location.pathname);  // out of the address bar and history
}
let keyQuestion = null;

function askForKey() {
  // Photos dropped together all get 401 at once: one question for all of them.
  keyQuestion ??= Promise.resolve().then(() => {
    const key = window.prompt("This server needs its API key:");
    if (key) sessionStorage.setItem(KEY_STORAGE, key.trim());
    keyQuestion = null;
    return Boolean(key);
  });
  return keyQuestion;
}

async function apiFetch(url, options = {}) {
  const send = () => {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    return fetch(url, { ...options, headers });
  };
  const response = await send();
  if (response.status === 401 && await askForKey()) return send();
  return response;
}

async function getJson(url) {
  const response = await apiFetch(url);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}

// How many similar training photos each answer shows, where the model names them.
const SIMILAR_SHOWN = 5;

async function showModel() {
  const info = document.getElementById("model-info");
  try {
    const health = await getJson("/healthz");
    const model = await getJson(`/v1/models/${encodeURIComponent(health.model)}`);
    // A multi-label model's headline is its mean average precision over the labels.
    const accuracy = !model.metrics ? "" : model.multi_label ? `, test mAP ${(100 * model.metrics.mAP).toFixed(2)}%`
      : `, test accuracy ${(100 * model.metrics.accuracy).toFixed(2)}%`;
    const format = model.format === "keras" ? "" : ` (${model.format} export: no Grad-CAM overlay)`;
    const classes = `${model.multi_label ? "labels (any number a photo)" : "classes"} ${model.classes.join(", ")}`;
    info.textContent = `Model ${model.name}: ${model.backbone}, ${classes}${accuracy}${format}.`;
    return { heatmaps: model.heatmaps, similar: Math.min(model.similar || 0, SIMILAR_SHOWN) };
  } catch (error) {
    info.textContent = `The model's description is unavailable (${error.message}).`;
    return null;  // unknown: ask for heatmaps, as a Keras model gives them, and no similar photos
  }
}

function percent(probability) {
  return `${(100 * probability).toFixed(1)}%`;
}

// "cats" and "dogs" -> "Neither a cat nor a dog"; more classes -> "None of: ...".
function neither(classes) {
  const one = (name) => {
    const singular = name.endsWith("s") && !name.endsWith("ss") ? name.slice(0, -1) : name;
    return `${/^[aeiou]/i.test(singular) ? "an" : "a"} ${singular}`;
  };
  return classes.length === 2 ? `Neither ${one(classes[0])} nor ${one(classes[1])}` : `None of: ${classes.join(", ")}`;
}

// A <span> of a class, holding text (class names are text, never HTML).
function span(className, text = "") {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function showPrediction(card, prediction) {
  card.dataset.state = "done";
  // A multi-label model answers a set of labels (maybe none); a single-label one a class.
  const chosen = prediction.labels ?? [prediction.label];
  card.dataset.label = prediction.accepted === false ? prediction.label : chosen.join(", ");
  const label = card.querySelector(".label");
  if (prediction.accepted === false) {
    card.dataset.state = "unknown";
    label.textContent = neither(Object.keys(prediction.probabilities));
    const note = card.querySelector(".note");
    note.textContent = `It looks like none of the photos this model learned from (score ` +
      `${prediction.in_distribution_score.toFixed(3)}); closest class: ` +
      `${Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1])[0][0]}.`;
    note.hidden = false;
  } else if (prediction.labels && !prediction.labels.length) {
    label.textContent = `No label applies (${Object.keys(prediction.probabilities).join(", ")})`;
  } else if (prediction.labels) {
    label.textContent = prediction.labels.map((name) => `${name} ${percent(prediction.probabilities[name])}`)
      .join(" + ");
  } else {
    label.textContent = `${prediction.label} ${percent(prediction.probability)}`;
  }
  const bars = card.querySelector(".bars");
  for (const [name, probability] of Object.entries(prediction.probabilities)) {
    const row = document.createElement("div");
    row.className = chosen.includes(name) ? "bar-row predicted" : "bar-row";
    const fill = document.createElement("span");
    fill.style.width = percent(probability);
    const bar = span("bar");
    bar.append(fill);
    row.append(span("class", name), bar, span("value", percent(probability)));
    bars.append(row);
  }
  showSimilar(card, prediction.similar || []);
  if (!prediction.heatmap_png) {
    card.querySelector(".toggle").hidden = true;
    return;
  }
  const heatmap = card.querySelector(".heatmap");
  const toggle = card.querySelector(".show-heatmap");
  heatmap.src = `data:image/png;base64,${prediction.heatmap_png}`;
  toggle.disabled = false;
  toggle.addEventListener("change", () => { heatmap.hidden = !toggle.checked; });
}

// The training photos most similar to the photo: thumbnails where the server can read them (fetched
// with the API key, as every API call), their names otherwise.
function showSimilar(card, photos) {
  if (!photos.length) return;
  const section = card.querySelector(".similar");
  const list = section.querySelector("ol");
  for (const photo of photos) {
    const item = document.createElement("li");
    const name = photo.path.split("/").pop();
    item.title = `${photo.path}: ${photo.label}, similarity ${photo.similarity.toFixed(3)}`;
    const caption = span("similar-caption", `${photo.label} ${photo.similarity.toFixed(2)}`);
    if (photo.photo_url) {
      const image = document.createElement("img");
      image.alt = `${name}, labelled ${photo.label}`;
      item.append(image);
      apiFetch(photo.photo_url).then((response) => (response.ok ? response.blob() : Promise.reject()))
        .then((blob) => { image.src = URL.createObjectURL(blob); })
        .catch(() => { image.replaceWith(span("similar-name", name)); });
    } else {
      item.append(span("similar-name", name));
    }
    item.append(caption);
    list.append(item);
  }
  section.hidden = false;
}

function showError(card, message) {
  card.dataset.state = "error";
  card.querySelector(".label").textContent = "Not predicted";
  card.querySelector(".toggle").hidden = true;
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
}

async function predict(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  const image = card.querySelector(".image");
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  // Not every image the server reads can be shown by every browser (TIFF), nor is every file a photo.
  image.addEventListener("error", () => { card.querySelector(".photo").hidden = true; });
  results.prepend(card);
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const model = await modelInfo;
    const heatmap = model?.heatmaps !== false;
    const similar = model?.similar || 0;
    const response = await apiFetch(`/predict?heatmap=${heatmap}&similar=${similar}`, { method: "POST", body: form });
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.error || response.statusText);
    showPrediction(card, payload.predictions[0]);
  } catch (error) {
    showError(card, error.message);
  }
}

function addPhotos(files) {
  for (const file of files) predict(file);
}

fileInput.addEventListener("change", () => {
  addPhotos(fileInput.files);
  fileInput.value = "";  // choosing the same photo again still counts
});
// Photos dropped anywhere on the page count; without this the browser would open them instead.
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
}
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) dropZone.classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  addPhotos(event.dataTransfer.files);
});

// Whether the server draws Grad-CAM heatmaps (a Keras model does, an exported one cannot), and how many
// similar training photos it names.
const modelInfo = showModel();
