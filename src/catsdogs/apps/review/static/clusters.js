"use strict";
// The clusters' review page: the clusters of GET /clusters, one card each; every decision goes to
// POST /clusters/{number}/decision, which has saved it (one row per photo) to the corrections file when
// it answers. Keys act on the current cluster (the framed one), and a decision moves on to the next.

const list = document.getElementById("clusters");
const template = document.getElementById("cluster-template");
let classes = [];
let clusters = [];  // as the server last described them, in the order shown
const items = [];  // the card of each cluster, in the same order
let current = 0;
let correctionsFile = "";

function describeDecision(cluster) {
  switch (cluster.decision) {
    case "new_class": return `Named as the new class ${cluster.label}`;
    case "merge": return `Merged into ${cluster.label}`;
    case "leave_out": return "Left out";
    default: return "Not decided yet";
  }
}

function showProgress() {
  const decided = clusters.filter((cluster) => cluster.decision).length;
  document.getElementById("progress").textContent =
    `${decided} of ${clusters.length} clusters decided. Each decision is saved to ${correctionsFile} as it is made.`;
}

// The new names given so far, offered when naming another cluster (two clusters may make one class).
function showNewNames() {
  const names = [...new Set(clusters.filter((c) => c.decision === "new_class").map((c) => c.label))];
  document.getElementById("new-names").replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    return option;
  }));
}

function buildCard(cluster, position) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.number = cluster.number;
  card.setAttribute("aria-label", `Cluster ${cluster.number}: ${cluster.photos} photos`);
  const image = card.querySelector(".photo");
  image.src = `/clusters/${cluster.number}/montage.png`;
  image.alt = `Photos of cluster ${cluster.number}, e.g. ${cluster.examples.join(", ")}`;
  card.querySelector("figcaption").textContent = `Cluster ${cluster.number}`;
  card.querySelector(".name").textContent = `Cluster ${cluster.number}: ${cluster.photos} photos, e.g. ` +
    cluster.examples.join(", ");
  const form = card.querySelector(".new-class");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = form.querySelector(".new-name").value.trim();
    if (name) choose(position, "new_class", name);
  });
  const actions = card.querySelector(".actions");
  actions.setAttribute("aria-label", `Decision for cluster ${cluster.number}`);
  classes.forEach((name, i) => {
    actions.append(actionButton(`Merge into ${name}`, i < 9 ? String(i + 1) : "", "merge", name,
                                () => choose(position, "merge", name)));
  });
  actions.append(actionButton("Leave out", "x", "leave_out", null, () => choose(position, "leave_out")));
  card.addEventListener("click", (event) => {
    if (!event.target.closest("button, input, label")) select(position);
  });
  card.addEventListener("focusin", () => select(position));
  return card;
}

function showDecision(position) {
  const cluster = clusters[position];
  const card = items[position];
  if (cluster.decision) card.dataset.decision = cluster.decision;
  else delete card.dataset.decision;
  card.querySelector(".decision-text").textContent = describeDecision(cluster);
  if (cluster.decision === "new_class") card.querySelector(".new-name").value = cluster.label;
  for (const button of card.querySelectorAll("button[data-decision]")) {
    const pressed = button.dataset.decision === cluster.decision &&
      (cluster.decision !== "merge" || button.dataset.label === cluster.label);
    button.setAttribute("aria-pressed", String(pressed));
  }
}

function select(position) {
  if (position < 0 || position >= items.length || position === current && items[current].classList.contains("current")) return;
  items[current].classList.remove("current");
  current = position;
  const card = items[current];
  card.classList.add("current");
  if (!card.contains(document.activeElement)) card.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
}

async function decide(position, decision, label = null) {
  const cluster = clusters[position];
  try {
    const payload = await postDecision(`/clusters/${cluster.number}/decision`, decision, label);
    clusters[position] = payload;
    showDecision(position);
    showProgress();
    showNewNames();
    say(items[position], `Cluster ${cluster.number}: ${describeDecision(payload).toLowerCase()} (saved).`);
  } catch (error) {
    say(items[position], `Cluster ${cluster.number}: not saved: ${error.message}`, true);
  }
}

// A decision on a cluster, then on to the next: at once, so that keys pressed quickly each act on their own cluster.
function choose(position, decision, label = null) {
  decide(position, decision, label);
  items[position].querySelector(".new-name").blur();
  select(position + 1);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !items.length) return;
  if (event.target.closest && event.target.closest("input")) {  // typing a name: Enter submits, Escape leaves
    if (event.key === "Escape") items[current].focus();
    return;
  }
  const key = event.key;
  if (["ArrowRight", "ArrowDown", "l"].includes(key)) select(current + 1);
  else if (["ArrowLeft", "ArrowUp", "j"].includes(key)) select(current - 1);
  else if (key === "n") items[current].querySelector(".new-name").focus();
  else if (key === "x") choose(current, "leave_out");
  else if (/^[1-9]$/.test(key) && Number(key) <= classes.length) choose(current, "merge", classes[Number(key) - 1]);
  else return;
  event.preventDefault();
});

async function start() {
  const info = document.getElementById("run-info");
  let listing;
  try {
    listing = await fetchJson("/clusters");
  } catch (error) {
    info.textContent = `The clusters could not be listed (${error.message}).`;
    return;
  }
  ({ classes, clusters } = listing);
  correctionsFile = listing.corrections_file;
  info.textContent = `Run ${listing.run}: ${clusters.length} clusters found in ${listing.folder}, largest first. ` +
    `Known classes: ${classes.join(", ")}.`;
  const classKeys = document.getElementById("class-keys");
  classKeys.replaceChildren();
  classes.slice(0, 9).forEach((name, i) => {
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    classKeys.append(i ? " · " : "", key, ` merge into ${name}`);
  });
  showProgress();
  if (!clusters.length) {
    list.textContent = "No cluster: the photos the model rejected or was unsure of form no group large enough.";
    return;
  }
  clusters.forEach((cluster, position) => items.push(buildCard(cluster, position)));
  list.append(...items);
  clusters.forEach((cluster, position) => showDecision(position));
  showNewNames();
  const firstUndecided = clusters.findIndex((cluster) => !cluster.decision);
  current = firstUndecided === -1 ? 0 : firstUndecided;
  items[current].classList.add("current");
  items[current].focus({ preventScroll: true });
}

start();
