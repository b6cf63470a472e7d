"use strict";
// What both review pages (the photos' and the clusters') share: their decision buttons, their
// status lines and their requests to the server.

// A decision's button: its text, its key (none: "") shown beside it and announced by aria-keyshortcuts.
function actionButton(text, key, decision, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-label", text);  // the key is announced by aria-keyshortcuts
  button.className = decision;
  button.dataset.decision = decision;
  if (label) button.dataset.label = label;
  if (key) button.setAttribute("aria-keyshortcuts", key);
  button.setAttribute("aria-pressed", "false");
  button.append(`${text} `);
  if (key) {
    const shortcut = document.createElement("kbd");
    shortcut.textContent = key;
    button.append(shortcut);
  }
  button.addEventListener("click", onClick);
  return button;
}

// The message on the page's status line and on the card's own line, in red for an error.
function say(card, message, isError = false) {
  for (const line of [document.getElementById("status"), card.querySelector(".message")]) {
    line.textContent = message;
    line.classList.toggle("error", isError);
  }
}

// The JSON the server answers; an Error with its message when it answers an error.
async function fetchJson(url, options = {}) {
  const response = await fetch(url, options);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}

// A decision POSTed to `url`; the item as the server now describes it.
function postDecision(url, decision, label) {
  return fetchJson(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ decision, label }),
  });
}
