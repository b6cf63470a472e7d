"use strict";
// The review page: the photos of GET /photos, one card each; every decision goes to
// POST /photos/{index}/decision, which has saved it to the corrections file when it answers.
// Keys act on the current photo (the framed one), and a decision moves on to the next. In a multi-label
// run a photo has a set of labels: each label's button (or number key) adds or removes it, a relabel to
// the new set, and stays on the photo so that several labels can be changed.

const list = document.getElementById("photos");
const template = document.getElementById("photo-template");
let classes = [];
let photos = [];  // as the server last described them, by index
const items = [];  // the card of each photo, by index
let current = 0;
let correctionsFile = "";
let separator = null;  // a multi-label run's: what joins a photo's labels; null for one class a photo

// A label set as the server writes it ("cats;dogs") as a list, and as the page shows it.
function labelsOf(text) {
  return text ? text.split(separator) : [];
}

function shown(label) {
  if (separator === null) return label;
  return labelsOf(label).join(", ") || "no label";
}

// The labels in force for a multi-label photo: the decided set, else the given one.
function labelsInForce(photo) {
  return labelsOf(photo.decision === "relabel" ? photo.label : photo.given_label);
}

let showsSimilar = false;  // whether the server names the training photos most similar to a photo

function percent(probability) {
  return `${(100 * probability).toFixed(1)}%`;
}

function fileName(photo) {
  return photo.path.split("/").pop();
}

// A message about a photo: in the page's status line (announced), and on the photo's card (seen
// wherever the page is scrolled).
function describeDecision(photo) {
  switch (photo.decision) {
    case "keep": return `Kept as ${shown(photo.label)}`;
    case "relabel": return `Relabelled as ${shown(photo.label)}`;
    case "exclude": return "Excluded from training";
    default: return "Not decided yet";
  }
}

function showProgress() {
  const decided = photos.filter((photo) => photo.decision).length;
  document.getElementById("progress").textContent =
    `${decided} of ${photos.length} decided. Each decision is saved to ${correctionsFile} as it is made.`;
}

function classKey(name) {
  const number = classes.indexOf(name) + 1;
  return number <= 9 ? String(number) : "";
}

// The training photos most similar to a photo, asked for when its card first comes into view (each
// costs the server a forward pass): thumbnails where the server can read them, names otherwise.
async function showSimilar(card, photo) {
  const figure = card.querySelector(".similar");
  let similar;
  try {
    const response = await fetch(`/photos/${photo.index}/similar`);
    if (!response.ok) return;  // the photo cannot be read any more: its card says so elsewhere
    similar = await response.json();
  } catch {
    return;
  }
  const list = figure.querySelector("ol");
  for (const training of similar) {
    const item = document.createElement("li");
    const name = training.path.split("/").pop();
    item.title = `${training.path}: ${training.label}, similarity ${training.similarity.toFixed(3)}`;
    if (training.label !== photo.given_label) item.classList.add("other-label");
    if (training.photo_url) {
      const image = document.createElement("img");
      image.src = training.photo_url;
      image.alt = `${name}, labelled ${training.label}`;
      item.append(image);
    } else {
      item.append(name, document.createElement("br"));
    }
    item.append(`${training.label} ${training.similarity.toFixed(2)}`);
    list.append(item);
  }
  figure.hidden = !similar.length;
}

const similarWhenSeen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    similarWhenSeen.unobserve(entry.target);
    showSimilar(entry.target, photos[Number(entry.target.dataset.index)]);
  }
});

function buildCard(photo) {
  const card = template.content.firstElementChild.cloneNode(true);
  const name = fileName(photo);
  card.dataset.index = photo.index;
  card.dataset.split = photo.split;
  card.setAttribute("aria-label",
                    `Photo ${photo.index + 1} of ${photos.length}: ${name}, labelled ${shown(photo.given_label)}`);
  const image = card.querySelector(".photo");
  image.loading = "lazy";
  image.src = `/photos/${photo.index}/photo.jpg`;
  image.alt = `${name}, labelled ${shown(photo.given_label)}`;
  const gradcam = card.querySelector(".gradcam");
  gradcam.src = `/photos/${photo.index}/gradcam.png`;
  gradcam.alt = `Grad-CAM of ${name}: where the model saw ${photo.explained}`;
  card.querySelector(".gradcam-caption").textContent = `Grad-CAM: evidence for ${photo.explained}`;
  card.querySelector(".name").textContent = `${photo.path} (${photo.split})`;

  const labels = card.querySelector(".labels");
  const given = document.createElement("strong");
  given.textContent = shown(photo.given_label);
  const predicted = document.createElement("strong");
  predicted.textContent = shown(photo.predicted);
  labels.append("Labelled ", given, ", predicted ", predicted, ` ${percent(photo.probability)}`);
  const why = [];
  if (photo.label_looks_wrong) why.push("its label looks wrong (cleanlab)");
  if (photo.confident_mistake) why.push("a confident mistake");
  why.push(`loss ${photo.loss.toFixed(2)}`);
  if (photo.split === "test") why.push("a test photo: never excluded from evaluation");
  card.querySelector(".why").textContent = why.join("; ");

  const actions = card.querySelector(".actions");
  actions.setAttribute("aria-label", `Decision for ${name}`);
  actions.append(actionButton(`Keep as ${shown(photo.given_label)}`, "k", "keep", null,
                              () => choose(photo.index, "keep")));
  if (separator !== null) {
    for (const name of classes) {  // its text says add or remove, as the labels in force have it
      actions.append(actionButton(name, classKey(name), "relabel", name, () => toggle(photo.index, name)));
    }
  } else {
    for (const other of classes.filter((name) => name !== photo.given_label)) {
      actions.append(actionButton(`Relabel as ${other}`, classKey(other), "relabel", other,
                                  () => choose(photo.index, "relabel", other)));
    }
  }
  if (photo.split !== "test") {
    actions.append(actionButton("Exclude from training", "x", "exclude", null, () => choose(photo.index, "exclude")));
  }
  card.addEventListener("click", (event) => {
    if (!event.target.closest("button")) select(photo.index);  // a button's decision moves on by itself
  });
  if (showsSimilar) similarWhenSeen.observe(card);
  return card;
}

function showDecision(photo) {
  const card = items[photo.index];
  if (photo.decision) card.dataset.decision = photo.decision;
  else delete card.dataset.decision;
  card.querySelector(".decision-text").textContent = describeDecision(photo);
  for (const button of card.querySelectorAll(".actions button")) {
    if (separator !== null && button.dataset.label) {  // a label's toggle: pressed while the photo has it
      const has = labelsInForce(photo).includes(button.dataset.label);
      button.firstChild.textContent = `${has ? "Remove" : "Add"} ${button.dataset.label} `;
      button.setAttribute("aria-label", `${has ? "Remove" : "Add"} ${button.dataset.label}`);
      button.setAttribute("aria-pressed", String(has));
      continue;
    }
    const pressed = button.dataset.decision === photo.decision &&
      (photo.decision !== "relabel" || button.dataset.label === photo.label);
    button.setAttribute("aria-pressed", String(pressed));
  }
}

function select(index) {
  if (index < 0 || index >= items.length) return;
  items[current].classList.remove("current");
  current = index;
  const card = items[current];
  card.classList.add("current");
  if (!card.contains(document.activeElement)) card.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
}

async function decide(index, decision, label = null) {
  const photo = photos[index];
  try {
    const payload = await postDecision(`/photos/${index}/decision`, decision, label);
    photos[index] = payload;
    showDecision(payload);
    showProgress();
    say(items[index], `${fileName(photo)}: ${describeDecision(payload).toLowerCase()} (saved).`);
  } catch (error) {
    say(items[index], `${fileName(photo)}: not saved: ${error.message}`, true);
  }
}

// A decision on a photo, then on to the next: at once, so that keys pressed quickly each act
// on their own photo while the answers come.
function choose(index, decision, label = null) {
  const photo = photos[index];
  if (decision === "relabel" && label === photo.given_label) decision = "keep";  // its own class: kept
  if (decision === "exclude" && photo.split === "test") {
    say(items[index], `${fileName(photo)} is a test photo: test photos are never excluded from evaluation (keep or ` +
        "relabel it).", true);
    return;
  }
  decide(index, decision, decision === "relabel" ? label : null);
  select(index + 1);
}

// Adds a label to a multi-label photo, or removes it: a relabel to the new set (its own set: kept). The
// photo stays the current one, so that more of its labels can change.
function toggle(index, name) {
  const photo = photos[index];
  const labels = labelsInForce(photo);
  const changed = labels.includes(name) ? labels.filter((label) => label !== name) : [...labels, name];
  const label = classes.filter((label) => changed.includes(label)).join(separator);  // in the server's order
  if (label === photo.given_label) decide(index, "keep");
  else decide(index, "relabel", label);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !items.length) return;
  const key = event.key;
  if (["ArrowRight", "ArrowDown", "l"].includes(key)) select(current + 1);
  else if (["ArrowLeft", "ArrowUp", "j"].includes(key)) select(current - 1);
  else if (key === "k") choose(current, "keep");
  else if (key === "x") choose(current, "exclude");
  else if (/^[1-9]$/.test(key) && Number(key) <= classes.length) {
    if (separator !== null) toggle(current, classes[Number(key) - 1]);
    else choose(current, "relabel", classes[Number(key) - 1]);
  }
  else return;
  event.preventDefault();
});

async function start() {
  const info = document.getElementById("run-info");
  let listing;
  try {
    listing = await fetchJson("/photos");
  } catch (error) {
    info.textContent = `The photos could not be listed (${error.message}).`;
    return;
  }
  ({ classes, photos } = listing);
  separator = listing.label_separator ?? null;
  correctionsFile = listing.corrections_file;
  showsSimilar = listing.similar;
  info.textContent = `Run ${listing.run}: ${photos.length} photos to review, highest loss first: training and ` +
    `validation photos whose labels look wrong, and the most confident mistakes. Classes: ${classes.join(", ")}.`;
  if (listing.note) {
    const note = document.getElementById("source-note");
    note.textContent = listing.note;
    note.hidden = false;
  }
  const classKeys = document.getElementById("class-keys");
  classKeys.replaceChildren();
  classes.slice(0, 9).forEach((name, i) => {
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    classKeys.append(i ? " · " : "", key, separator === null ? ` label as ${name}` : ` add or remove ${name}`);
  });
  showProgress();
  if (!photos.length) {
    list.textContent = "Nothing to review: no training or validation photo looks mislabelled, and the model made " +
      "no mistakes.";
    return;
  }
  for (const photo of photos) {
    items.push(buildCard(photo));
    showDecision(photo);
  }
  list.append(...items);
  const firstUndecided = photos.findIndex((photo) => !photo.decision);
  select(firstUndecided === -1 ? 0 : firstUndecided);
}

start();
