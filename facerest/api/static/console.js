// The facerest console (issue 29): a client of the public API and nothing more. Every call carries
// the key the user typed (X-API-Key), kept for the tab in sessionStorage, so the console can do
// exactly what that key can do. Plain browser JavaScript: no build step, nothing fetched from
// anywhere but this server, every URL relative to the page so it works behind a path prefix.
// Text from the server is only ever put in the page as text (textContent), never as HTML.
"use strict";

const KEY = "facerest.key";
const GALLERY = "facerest.gallery";
const PAGE = 100; // rows per page of every list
const BASE = new URL(".", location.href); // /prefix/console -> /prefix/

// --- small helpers ------------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

/** An element: attributes (on* are listeners, `dataset` an object), children as nodes or text. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "className") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// a message set just before the page changes (after a rename, a merge...) shows on the next page
let pendingStatus = "";
function setStatus(text) {
  $("#status").textContent = text || "";
  pendingStatus = text || "";
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function fmtRate(value) {
  return value === null || value === undefined ? "–" : Number(value).toExponential(1);
}

function when(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "–";
}

function enc(name) { return encodeURIComponent(name); }

function plural(count, word) { return `${count} ${word}${count === 1 ? "" : "s"}`; }

// --- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, detail) {
    super(code ? `${detail} (${code}, HTTP ${status})` : `${detail} (HTTP ${status})`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

function apiUrl(path, query) {
  const url = new URL(path, BASE);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

/** One call; the answer's JSON, or an ApiError carrying the API's own message. */
async function api(method, path, { body, form, query } = {}) {
  const options = { method, headers: headers({ Accept: "application/json" }) };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  } else if (form !== undefined) {
    options.body = form;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), options);
  } catch (error) {
    throw new ApiError(0, "network", `the server did not answer: ${error.message}`);
  }
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  if (!response.ok) {
    const detail = answer && answer.detail ? answer.detail : response.statusText;
    const error = new ApiError(response.status, answer && answer.code, detail);
    if (response.status === 401) showKeyPrompt(sessionStorage.getItem(KEY) ? "This key was refused." : "");
    throw error;
  }
  return answer;
}

// pictures need the key too, so they are fetched, not linked: kept as blob URLs, the oldest freed
const pictures = new Map();
const MAX_PICTURES = 600;

async function pictureUrl(path) {
  if (pictures.has(path)) {
    const cached = pictures.get(path);
    pictures.delete(path);
    pictures.set(path, cached); // most recently used last
    return cached;
  }
  const pending = (async () => {
    const response = await fetch(apiUrl(path), { headers: headers() });
    if (!response.ok) {
      // the API's own reason (a 403 names the role or gallery the key lacks), else "no picture"
      let answer = null;
      try { answer = await response.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, answer && answer.code, answer && answer.detail ? answer.detail : "no picture");
    }
    return URL.createObjectURL(await response.blob());
  })();
  pictures.set(path, pending);
  while (pictures.size > MAX_PICTURES) {
    const [oldest, url] = pictures.entries().next().value;
    pictures.delete(oldest);
    url.then((u) => URL.revokeObjectURL(u), () => {});
  }
  try {
    return await pending;
  } catch (error) {
    pictures.delete(path);
    throw error;
  }
}

// pictures load when they come into view: a page of 100 people asks for the visible ones first
const pictureObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    pictureObserver.unobserve(entry.target);
    loadPicture(entry.target);
  }
});

const loads = new WeakMap(); // img -> the promise of its picture

function loadPicture(img) {
  const path = img.dataset.picture;
  const done = pictureUrl(path).then((url) => {
    img.src = url;
    return img.decode ? img.decode().catch(() => {}) : undefined;
  }, (error) => { img.replaceWith(placeholder(img.alt, error.status === 404 ? "" : error.message)); });
  loads.set(img, done);
  return done;
}

/** Pictures about to leave the page are not fetched any more. */
function forget(root) {
  for (const img of root.querySelectorAll("img[data-picture]")) pictureObserver.unobserve(img);
}

/** Where no picture is shown; `why`: the API's refusal, shown on hover. */
function placeholder(label, why = "") {
  return el("div", { className: "thumb placeholder", role: "img", "aria-label": label || "no picture", title: why }, "☺");
}

/** A face's picture (`path` under the API) or a placeholder when none is kept. */
function picture(path, label) {
  if (!path) return placeholder(label);
  const img = el("img", { className: "thumb", alt: label, dataset: { picture: path } });
  pictureObserver.observe(img);
  return img;
}

/** Until the pictures of `root` that are in view have loaded (or failed). */
async function visiblePicturesLoaded(root) {
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  const waits = [];
  for (const img of root.querySelectorAll("img[data-picture]")) {
    const box = img.getBoundingClientRect();
    const visible = box.bottom > 0 && box.top < innerHeight && box.right > 0 && box.left < innerWidth;
    if (!visible) continue;
    if (!loads.has(img)) { pictureObserver.unobserve(img); loadPicture(img); }
    waits.push(loads.get(img));
  }
  await Promise.all(waits);
}

function galleryPath(gallery, ...parts) {
  return ["gallery", gallery, ...parts].map(enc).join("/");
}

function facePicture(gallery, face) {
  return face.has_image === false ? null : `${galleryPath(gallery, "faces", String(face.face_id))}/image`;
}

// --- the key ------------------------------------------------------------------------------------

function showKeyPrompt(message) {
  $("#app").hidden = true;
  $("#main").replaceChildren(); // nothing of what the key showed stays in the page
  $("#key-prompt").hidden = false;
  $("#key-error").textContent = message || "";
  document.body.dataset.ready = "true";
  document.body.dataset.page = "key";
  $("#key-input").focus();
}

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("#key-input").value = "";
  await start();
});

$("#forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  pictures.clear();
  showKeyPrompt("");
});

// --- pages --------------------------------------------------------------------------------------

let renderToken = 0;

function currentGallery() { return sessionStorage.getItem(GALLERY) || ""; }

function useGallery(name) {
  if (name) sessionStorage.setItem(GALLERY, name);
  const gallery = currentGallery();
  $("#current-gallery").textContent = gallery ? `Gallery: ${gallery}` : "";
  for (const link of document.querySelectorAll("[data-gallery-page]")) {
    if (gallery) link.href = `#/g/${enc(gallery)}/${link.dataset.galleryPage}`;
    else link.removeAttribute("href");
  }
}

/** The route in the hash: [page, gallery, rest, query]. */
function parseRoute() {
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").map(decodeURIComponent);
  const query = new URLSearchParams(search || "");
  if (parts[0] === "g" && parts[1]) return { page: parts[2] || "people", gallery: parts[1], rest: parts.slice(3), query };
  return { page: parts[0] || "galleries", gallery: "", rest: parts.slice(1), query };
}

const PAGES = {};

async function route() {
  const token = ++renderToken;
  const { page, gallery, rest, query } = parseRoute();
  if (gallery) useGallery(gallery);
  const render = PAGES[page] || PAGES.galleries;
  document.body.dataset.ready = "false";
  document.body.dataset.page = page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.nav === page || (page === "person" && link.dataset.nav === "people")) {
      link.setAttribute("aria-current", "page");
    } else link.removeAttribute("aria-current");
  }
  const main = $("#main");
  forget(main);
  main.replaceChildren();
  $("#status").textContent = pendingStatus;
  pendingStatus = "";
  try {
    await render(main, { gallery: gallery || currentGallery(), rest, query, token });
  } catch (error) {
    if (token !== renderToken) return;
    if (error.status === 401) return; // the key prompt is showing
    main.append(el("p", { className: "error", role: "alert" }, error.message));
  }
  if (token === renderToken) document.body.dataset.ready = "true";
}

function stale(token) { return token !== renderToken; }

function errorLine() { return el("p", { className: "error", role: "alert" }); }

/** Run `work`; its ApiError's message goes to `where` (next to the control that caused it). */
async function attempt(where, work) {
  where.textContent = "";
  try {
    return await work();
  } catch (error) {
    if (error.status !== 401) where.textContent = error.message;
    return undefined;
  }
}

function needGallery(main, gallery) {
  if (gallery) return true;
  main.append(el("h1", {}, "No gallery chosen"), el("p", {}, "Choose or create one on the ", el("a", { href: "#/galleries" }, "Galleries"), " page."));
  return false;
}

// --- Galleries ------------------------------------------------------------------------------------

PAGES.galleries = async (main, { token }) => {
  const error = errorLine();
  const name = el("input", { id: "new-gallery", name: "name", "aria-label": "New gallery name", placeholder: "New gallery name", required: true });
  const form = el("form", { className: "inline", id: "create-gallery" }, name, el("button", { type: "submit", className: "primary" }, "Create gallery"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const created = await attempt(error, () => api("PUT", galleryPath(name.value.trim())));
    if (created) {
      useGallery(created.name);
      location.hash = `#/g/${enc(created.name)}/people`;
    }
  });
  const filter = el("input", { type: "search", id: "galleries-q", placeholder: "Filter by name", "aria-label": "Filter galleries by name" });
  const body = el("tbody");
  const listError = errorLine();
  const more = el("button", { type: "button", id: "galleries-more", hidden: true }, "More galleries");
  let cursor = null;
  async function load(reset) {
    if (reset) { cursor = null; body.replaceChildren(); }
    const answer = await attempt(listError, () => api("GET", "galleries", { query: { limit: PAGE, cursor, q: filter.value.trim() } }));
    if (!answer || stale(token)) return;
    for (const g of answer.galleries) {
      const remove = el("button", { type: "button", className: "danger", "aria-label": `Delete gallery ${g.name}` }, "Delete");
      remove.addEventListener("click", async () => {
        if (!confirm(`Delete gallery "${g.name}" with its ${g.faces} faces? This cannot be undone.`)) return;
        if (await attempt(listError, () => api("DELETE", galleryPath(g.name)))) {
          if (currentGallery() === g.name) { sessionStorage.removeItem(GALLERY); useGallery(""); }
          row.remove();
          setStatus(`Gallery ${g.name} deleted.`);
        }
      });
      const row = el("tr", { dataset: { gallery: g.name } },
        el("td", {}, el("a", { href: `#/g/${enc(g.name)}/people` }, g.name)),
        el("td", {}, g.model), el("td", { className: "faces" }, g.faces), el("td", {}, g.index), el("td", {}, remove));
      body.append(row);
    }
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  }
  more.addEventListener("click", () => load(false));
  let typing;
  filter.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => load(true), 250); });
  main.append(
    el("h1", {}, "Galleries"), form,
    el("div", { className: "toolbar" }, filter),
    el("table", { id: "galleries-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Model"), el("th", {}, "Faces"), el("th", {}, "Index"), el("th", {}, ""))), body),
    listError, more);
  await load(true);
};

// --- People -------------------------------------------------------------------------------------

PAGES.people = async (main, { gallery, query, token }) => {
  if (!needGallery(main, gallery)) return;
  const info = await api("GET", galleryPath(gallery));
  if (stale(token)) return;
  const grid = el("div", { className: "grid", id: "people-grid", dataset: { state: "loading" } });
  const search = el("input", { type: "search", id: "people-q", placeholder: "Search by name", "aria-label": "Search people by name", value: query.get("q") || "" });
  const prev = el("button", { type: "button", id: "people-prev", disabled: true }, "Previous");
  const next = el("button", { type: "button", id: "people-next", disabled: true }, "Next");
  const where = el("span", { id: "people-page" });
  const error = errorLine();
  const cursors = [null]; // the cursor of each page shown so far
  let shown = 0;

  async function show(index) {
    grid.dataset.state = "loading";
    const answer = await attempt(error, () => api("GET", galleryPath(gallery, "subjects"), { query: { limit: PAGE, cursor: cursors[index], q: search.value.trim() } }));
    if (!answer || stale(token)) return;
    shown = index;
    if (answer.next_cursor) cursors[index + 1] = answer.next_cursor;
    else cursors.length = index + 1;
    forget(grid);
    grid.replaceChildren(...answer.subjects.map((s) => el("a", { className: "card", href: `#/g/${enc(gallery)}/person/${enc(s.subject)}`, dataset: { subject: s.subject } },
      picture(s.representative ? `${galleryPath(gallery, "faces", String(s.representative))}/image` : null, s.subject),
      el("span", { className: "name" }, s.subject),
      el("span", { className: "count" }, `${s.faces} face${s.faces === 1 ? "" : "s"}`))));
    if (!answer.subjects.length) grid.append(el("p", { className: "muted" }, search.value ? "Nobody by that name." : "Nobody enrolled yet: see Enrol."));
    prev.disabled = index === 0;
    next.disabled = !answer.next_cursor;
    where.textContent = `Page ${index + 1}`;
    await visiblePicturesLoaded(grid);
    grid.dataset.page = String(index + 1);
    grid.dataset.state = "ready";
  }
  prev.addEventListener("click", () => show(shown - 1));
  next.addEventListener("click", () => show(shown + 1));
  let typing;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { cursors.length = 1; show(0); }, 250);
  });
  main.append(
    el("h1", {}, `${gallery}: people`),
    el("p", { className: "muted", id: "gallery-summary" }, `${info.faces} faces · model ${info.model} · index ${info.index} · `,
      el("a", { href: `#/g/${enc(gallery)}/clusters` }, "unsorted faces"), " · ", el("a", { href: `#/g/${enc(gallery)}/review` }, "review queue")),
    // the pager above the grid: turning a page needs no scrolling past (and loading) this one
    el("div", { className: "toolbar" }, search, el("nav", { className: "pager", "aria-label": "Pages of people" }, prev, where, next)),
    error, grid);
  await show(0);
};

// --- A person -----------------------------------------------------------------------------------

PAGES.person = async (main, { gallery, rest, token }) => {
  if (!needGallery(main, gallery)) return;
  const subject = rest[0] || "";
  const first = await api("GET", galleryPath(gallery, "subjects", subject), { query: { limit: PAGE } });
  if (stale(token)) return;
  const grid = el("div", { className: "grid", id: "faces-grid" });
  const selected = new Set();
  const facesError = errorLine();

  function faceCard(face) {
    const box = el("input", { type: "checkbox", className: "pick", "aria-label": `Select face ${face.face_id}` });
    const card = el("div", { className: "card face-card", dataset: { faceId: String(face.face_id) } },
      el("label", {}, box, `#${face.face_id}`),
      picture(facePicture(gallery, face), `face ${face.face_id}`),
      el("span", { className: "count" }, `quality ${fmt(face.quality, 2)} · ${face.source || "?"}`),
      el("span", { className: "count" }, when(face.added_at)),
      face.representative ? el("span", { className: "count ok" }, "shows the person") : null);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(face.face_id); else selected.delete(face.face_id);
      card.classList.toggle("selected", box.checked);
    });
    const cover = el("button", { type: "button", className: "make-cover" }, "Show person");
    cover.addEventListener("click", async () => {
      if (await attempt(facesError, () => api("PUT", galleryPath(gallery, "subjects", subject, "representative"), { body: { face_id: face.face_id } }))) {
        setStatus(`Face ${face.face_id} now shows ${subject}.`);
        route();
      }
    });
    const remove = el("button", { type: "button", className: "danger delete-face" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!confirm(`Delete face ${face.face_id}?`)) return;
      if (await attempt(facesError, () => api("DELETE", galleryPath(gallery, "faces", String(face.face_id))))) {
        card.remove();
        selected.delete(face.face_id);
        setStatus(`Face ${face.face_id} deleted.`);
        if (!grid.querySelector(".face-card")) location.hash = `#/g/${enc(gallery)}/people`;
      }
    });
    card.append(el("div", { className: "toolbar" }, cover, remove));
    return card;
  }

  let cursor = first.next_cursor;
  grid.append(...first.faces.map(faceCard));
  const more = el("button", { type: "button", id: "faces-more", hidden: !cursor }, "More faces");
  more.addEventListener("click", async () => {
    const answer = await attempt(facesError, () => api("GET", galleryPath(gallery, "subjects", subject), { query: { limit: PAGE, cursor } }));
    if (!answer) return;
    grid.append(...answer.faces.map(faceCard));
    cursor = answer.next_cursor;
    more.hidden = !cursor;
  });

  // rename
  const renameError = errorLine();
  const newName = el("input", { id: "rename-input", "aria-label": "New name", value: subject });
  const rename = el("form", { className: "inline", id: "rename-form" }, newName, el("button", { type: "submit" }, "Rename"), renameError);
  rename.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await attempt(renameError, () => api("PATCH", galleryPath(gallery, "subjects", subject), { body: { new_name: newName.value.trim() } }));
    if (answer) { setStatus(`Renamed to ${answer.subject}.`); location.hash = `#/g/${enc(gallery)}/person/${enc(answer.subject)}`; }
  });

  // merge
  const mergeError = errorLine();
  const into = el("input", { id: "merge-input", "aria-label": "Merge into", placeholder: "Merge into…", list: "subject-names" });
  const merge = el("form", { className: "inline", id: "merge-form" }, into, el("button", { type: "submit" }, "Merge"), mergeError);
  merge.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await attempt(mergeError, () => api("POST", galleryPath(gallery, "subjects", subject, "merge"), { body: { into: into.value.trim() } }));
    if (answer) { setStatus(`${plural(answer.moved, "face")} merged into ${answer.subject}.${samePhotoNote(answer)}`); location.hash = `#/g/${enc(gallery)}/person/${enc(answer.subject)}`; }
  });

  // move the selected faces
  const moveError = errorLine();
  const target = el("input", { id: "move-input", "aria-label": "Move selected faces to", placeholder: "Move selected to…", list: "subject-names" });
  const onlyNew = el("input", { type: "checkbox", id: "move-new" });
  const move = el("form", { className: "inline", id: "move-form" }, target, el("label", {}, onlyNew, "as a new person"), el("button", { type: "submit" }, "Move selected"), moveError);
  move.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!selected.size) { moveError.textContent = "Select the faces to move first."; return; }
    const name = target.value.trim();
    const answer = await attempt(moveError, () => api("POST", galleryPath(gallery, "faces", "move"), { body: { face_ids: [...selected], subject: name || null, new: onlyNew.checked } }));
    if (answer) { setStatus(`${plural(answer.moved, "face")} moved to ${answer.subject || "the unsorted faces"}.${samePhotoNote(answer)}`); route(); }
  });

  // delete the person
  const deleteError = errorLine();
  const remove = el("button", { type: "button", className: "danger", id: "delete-subject" }, `Delete ${subject}`);
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${subject} and all their faces?`)) return;
    if (await attempt(deleteError, () => api("DELETE", galleryPath(gallery, "subjects", subject)))) {
      setStatus(`${subject} deleted.`);
      location.hash = `#/g/${enc(gallery)}/people`;
    }
  });

  const names = el("datalist", { id: "subject-names" });
  into.addEventListener("input", () => suggestNames(gallery, into.value, names));
  target.addEventListener("input", () => suggestNames(gallery, target.value, names));
  main.append(
    el("p", {}, el("a", { href: `#/g/${enc(gallery)}/people` }, "← People")),
    el("h1", { id: "person-name" }, subject), rename, merge, move,
    el("h2", {}, "Faces"), facesError, grid, more,
    el("h2", {}, "Delete"), remove, deleteError, names);
  await visiblePicturesLoaded(grid);
};

function samePhotoNote(answer) {
  const pairs = answer.same_photo || [];
  return pairs.length ? ` Note: faces ${pairs.map((p) => p.join(" and ")).join(", ")} come from one photo, so they are two people: move one.` : "";
}

let suggestTimer;
function suggestNames(gallery, text, list) {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    try {
      const answer = await api("GET", galleryPath(gallery, "subjects"), { query: { limit: 20, q: text.trim() } });
      list.replaceChildren(...answer.subjects.map((s) => el("option", { value: s.subject })));
    } catch (_) { /* suggestions are a convenience */ }
  }, 200);
}

// --- photos in the browser ----------------------------------------------------------------------

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image (the server may still read it)"));
    image.src = src;
  });
}

function base64Of(dataUrl) { return dataUrl.slice(dataUrl.indexOf(",") + 1); }

/** A face of a photo the browser shows, as a data URL (for choices and results). */
function cropOf(image, bbox, size = 96) {
  if (!image) return null;
  const [x1, y1, x2, y2] = bbox;
  const side = Math.max(x2 - x1, y2 - y1) * 1.4;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  canvas.getContext("2d").drawImage(image, (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2, side, side, 0, 0, size, size);
  return canvas.toDataURL("image/jpeg", 0.85);
}

/** A drop zone with a file picker (keyboard: the picker's button). */
function dropZone(id, label, onFiles, accept = "image/*") {
  const input = el("input", { type: "file", id: `${id}-files`, multiple: true, accept });
  const zone = el("div", { className: "drop", id: `${id}-drop` }, el("p", {}, label), el("label", {}, "or choose files: ", input));
  input.addEventListener("change", () => { onFiles([...input.files]); input.value = ""; });
  for (const name of ["dragenter", "dragover"]) zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); onFiles([...event.dataTransfer.files]); });
  return zone;
}

/** Files handled one after another (the server batches across requests anyway). */
function queue(handle) {
  let chain = Promise.resolve();
  let pending = 0;
  return (files) => {
    for (const file of files) {
      pending++;
      document.body.dataset.busy = "true";
      chain = chain.then(() => handle(file)).catch(() => {}).finally(() => {
        if (--pending === 0) document.body.dataset.busy = "false";
      });
    }
  };
}

// --- Enrol --------------------------------------------------------------------------------------

PAGES.enrol = async (main, { gallery }) => {
  if (!needGallery(main, gallery)) return;
  const subject = el("input", { id: "enrol-subject", "aria-label": "Person's name", placeholder: "Name (empty: unsorted faces, grouped later)", list: "subject-names" });
  const names = el("datalist", { id: "subject-names" });
  subject.addEventListener("input", () => suggestNames(gallery, subject.value, names));
  const results = el("ol", { className: "results", id: "enrol-results" });

  async function enrolOne(item, data, name, bbox, force) {
    const state = $(".state", item);
    const path = name ? `${galleryPath(gallery, "subjects", name)}/faces` : `${galleryPath(gallery)}/faces`;
    const images = { data: [data] };
    if (bbox) images.faces = [[{ bbox }]];
    state.textContent = "Enrolling…";
    try {
      const answer = await api("POST", path, { body: { images, return_quality: true, force: !!force } });
      if (answer.added.length) {
        const face = answer.added[0];
        item.dataset.state = "added";
        item.dataset.faceId = String(face.face_id);
        state.className = "state ok";
        state.textContent = `Enrolled as ${name || "an unsorted face"} (face ${face.face_id}, quality ${fmt(face.quality && face.quality.score, 2)}).${samePhotoNote(answer)}`;
      } else {
        const reason = answer.failed.map((f) => f.detail).join("; ") || "refused";
        item.dataset.state = "refused";
        state.className = "state error";
        state.textContent = `Refused: ${reason}`;
        if (!force && !/no face/.test(reason)) {
          const again = el("button", { type: "button", className: "force" }, "Enrol anyway");
          again.addEventListener("click", () => { again.remove(); enrolOne(item, data, name, bbox, true); });
          state.after(again);
        }
      }
    } catch (error) {
      item.dataset.state = "failed";
      state.className = "state error";
      state.textContent = error.message;
    }
  }

  const handle = queue(async (file) => {
    const name = subject.value.trim();
    const state = el("span", { className: "state" }, "Looking for faces…");
    const thumb = el("img", { className: "small-thumb", alt: file.name });
    const item = el("li", { className: "enrol-item", dataset: { file: file.name, state: "working" } },
      el("div", { className: "row" }, thumb, el("div", {}, el("div", {}, file.name), state)));
    results.append(item);
    let dataUrl;
    try { dataUrl = await readFile(file); } catch (error) { state.textContent = error.message; item.dataset.state = "failed"; return; }
    thumb.src = dataUrl;
    const data = base64Of(dataUrl);
    let image = null;
    try { image = await loadImage(dataUrl); } catch (_) { /* the server says what it thinks of it */ }
    let faces;
    try {
      const found = await api("POST", "extract", { body: { images: { data: [data] }, extract_embedding: false } });
      const entry = found.data[0];
      if (entry.status !== "ok") throw new ApiError(400, entry.code, entry.traceback || "the server could not read this image");
      faces = entry.faces;
    } catch (error) {
      item.dataset.state = "failed";
      state.className = "state error";
      state.textContent = error.message;
      return;
    }
    if (faces.length < 2) { await enrolOne(item, data, name, null, false); return; }
    // several faces: the person chooses which one is `name`
    item.dataset.state = "choose";
    state.textContent = `${faces.length} faces in this photo: which one is ${name || "to keep"}?`;
    const choices = el("div", { className: "choices" });
    faces.forEach((face, i) => {
      const src = cropOf(image, face.bbox, 72);
      const button = el("button", { type: "button", className: "choice", "aria-label": `Face ${i + 1}`, dataset: { index: String(i) } },
        src ? el("img", { src, alt: `face ${i + 1}` }) : `Face ${i + 1}`);
      button.addEventListener("click", () => { choices.remove(); enrolOne(item, data, name, face.bbox, false); });
      choices.append(button);
    });
    state.after(choices);
  });

  main.append(
    el("h1", {}, `${gallery}: enrol`),
    el("p", { className: "muted" }, "Drop photos of one person: the largest face of each is enrolled under the name (you choose when a photo holds several). Faces below the quality floors are refused with the reason; enrol them anyway if you must."),
    el("div", { className: "toolbar" }, subject, names),
    dropZone("enrol", "Drop photos here", handle), results);
};

// --- Identify -----------------------------------------------------------------------------------

PAGES.identify = async (main, { gallery }) => {
  if (!needGallery(main, gallery)) return;
  const results = el("ol", { className: "results", id: "identify-results" });

  function faceBlock(data, image, hit, imageHash) {
    const error = errorLine();
    const who = el("div", { className: "who" }, hit.subject ? hit.subject : "Unknown");
    const block = el("div", { className: "identify-face", dataset: { subject: hit.subject || "", unknown: String(!hit.subject) } });
    const src = cropOf(image, hit.bbox);
    if (src) block.append(el("img", { className: "small-thumb", src, alt: hit.subject || "unknown face" }));
    block.append(who, el("div", { className: "count" }, hit.subject ? `similarity ${fmt(hit.similarity)} · FMR ${fmtRate(hit.fmr)}` : `best ${fmt(hit.similarity)} (below the decision point)`));
    const candidates = el("ul", { className: "candidates" });
    for (const m of hit.matches) {
      const yes = el("button", { type: "button", className: "this-is", dataset: { subject: m.subject } }, `This is ${m.subject}`);
      yes.addEventListener("click", () => thisIs(m.subject));
      candidates.append(el("li", {}, `${m.subject} ${fmt(m.similarity)} (FMR ${fmtRate(m.fmr)}) `, yes));
    }
    block.append(candidates);
    const name = el("input", { className: "this-is-name", "aria-label": "Who is it", placeholder: "Who is it?" });
    const enrol = el("form", { className: "inline" }, name, el("button", { type: "submit" }, "This is…"));
    enrol.addEventListener("submit", (event) => { event.preventDefault(); if (name.value.trim()) thisIs(name.value.trim()); });
    block.append(enrol);
    if (hit.subject) {
      const no = el("button", { type: "button", className: "not-x" }, `Not ${hit.subject}`);
      no.addEventListener("click", async () => {
        if (await attempt(error, () => api("POST", galleryPath(gallery, "feedback"), { body: { not: [{ image_hash: imageHash, subject: hit.subject }] } }))) {
          who.textContent = `Not ${hit.subject}`;
          block.dataset.subject = "";
          block.dataset.unknown = "true";
          no.remove();
        }
      });
      block.append(no);
    }
    block.append(error);

    async function thisIs(subject, force = false) {
      const body = { images: { data: [data], faces: [[{ bbox: hit.bbox }]] }, force };
      const answer = await attempt(error, () => api("POST", `${galleryPath(gallery, "subjects", subject)}/faces`, { body }));
      if (answer && answer.added.length) {
        who.textContent = `${subject} (enrolled)`;
        block.dataset.subject = subject;
        block.dataset.unknown = "false";
        block.dataset.enrolled = String(answer.added[0].face_id);
      } else if (answer) {
        // below a quality floor: the reason, and the choice to enrol it all the same
        error.textContent = `Refused: ${answer.failed.map((f) => f.detail).join("; ")} `;
        const anyway = el("button", { type: "button", className: "force" }, "Enrol anyway");
        anyway.addEventListener("click", () => thisIs(subject, true));
        error.append(anyway);
      }
    }
    return block;
  }

  const handle = queue(async (file) => {
    const state = el("span", { className: "state" }, "Searching…");
    const canvas = el("canvas", { className: "photo" });
    const faces = el("div", { className: "faces-found" });
    const item = el("li", { className: "identify-item", dataset: { file: file.name, state: "working" } },
      el("div", {}, file.name, " · ", state), el("div", { className: "row" }, canvas, faces));
    results.append(item);
    try {
      const dataUrl = await readFile(file);
      const data = base64Of(dataUrl);
      let image = null;
      try { image = await loadImage(dataUrl); } catch (_) { /* the server may still read it */ }
      const answer = await api("POST", galleryPath(gallery, "search"), { body: { images: { data: [data] }, top_k: 3 } });
      const entry = answer.data[0];
      if (entry.status !== "ok") throw new ApiError(400, entry.code, entry.traceback || "the server could not read this image");
      if (image) {
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(image, 0, 0);
        ctx.lineWidth = Math.max(2, canvas.width / 300);
        for (const hit of entry.faces) {
          const [x1, y1, x2, y2] = hit.bbox;
          ctx.strokeStyle = hit.subject ? "#1e7b34" : "#c77700";
          ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
        }
      }
      faces.append(...entry.faces.map((hit) => faceBlock(data, image, hit, entry.image_hash)));
      const named = entry.faces.filter((f) => f.subject).length;
      state.textContent = `${entry.faces.length} face(s), ${named} named`;
      item.dataset.state = "done";
    } catch (error) {
      state.className = "state error";
      state.textContent = error.message;
      item.dataset.state = "failed";
    }
  });

  main.append(
    el("h1", {}, `${gallery}: identify`),
    el("p", { className: "muted" }, "Drop photos: every face is searched in the gallery and named at the server's decision point (FMR: the chance such a score comes from a stranger). Faces nobody could name go to the review queue."),
    dropZone("identify", "Drop photos here", handle), results);
};

// --- Review -------------------------------------------------------------------------------------

PAGES.review = async (main, { gallery, token }) => {
  if (!needGallery(main, gallery)) return;
  const list = el("div", { id: "review-list" });
  const selected = new Set();
  const subject = el("input", { id: "review-subject", "aria-label": "Subject", placeholder: "Subject", list: "subject-names" });
  const names = el("datalist", { id: "subject-names" });
  subject.addEventListener("input", () => suggestNames(gallery, subject.value, names));
  const error = errorLine();
  const buttons = {
    assign: el("button", { type: "button", id: "review-assign", className: "primary" }, "Assign"),
    create: el("button", { type: "button", id: "review-new" }, "New person"),
    not: el("button", { type: "button", id: "review-not" }, "Not this person"),
    dismiss: el("button", { type: "button", id: "review-dismiss", className: "danger" }, "Dismiss"),
  };
  const more = el("button", { type: "button", id: "review-more", hidden: true }, "More");
  let cursor = null;

  function item(entry) {
    const box = el("input", { type: "checkbox", className: "pick", "aria-label": `Select item ${entry.review_id}` });
    const card = el("div", { className: "card review-item", dataset: { reviewId: String(entry.review_id), group: String(entry.group) } },
      el("label", {}, box, `#${entry.review_id}`),
      picture(entry.has_image ? `${galleryPath(gallery, "review", String(entry.review_id))}/image` : null, `review item ${entry.review_id}`),
      el("span", { className: "count", title: entry.ref || "" }, entry.source, entry.ref ? ` · ${entry.ref.slice(0, 28)}` : ""),
      el("span", { className: "count" }, when(entry.created_at)),
      el("span", { className: "count candidates" }, entry.candidates.length ? `closest: ${entry.candidates.map((c) => `${c.subject} ${fmt(c.similarity, 2)}`).join(", ")}` : "no candidate"),
      entry.excluded.length ? el("span", { className: "count warn" }, `not ${entry.excluded.join(", ")}`) : null);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(entry.review_id); else selected.delete(entry.review_id);
      card.classList.toggle("selected", box.checked);
      if (box.checked && !subject.value && entry.candidates.length) subject.value = entry.candidates[0].subject;
    });
    return card;
  }

  async function load(reset) {
    if (reset) { cursor = null; list.replaceChildren(); selected.clear(); }
    const answer = await attempt(error, () => api("GET", galleryPath(gallery, "review"), { query: { limit: PAGE, cursor } }));
    if (!answer || stale(token)) return;
    for (const entry of answer.items) {
      let group = list.querySelector(`.review-group[data-group="${entry.group}"]`);
      if (!group) {
        const pick = el("button", { type: "button", className: "pick-group" }, "Select all");
        group = el("section", { className: "review-group", dataset: { group: String(entry.group) } },
          el("div", { className: "toolbar" }, el("h2", {}, `Group ${entry.group}`), pick), el("div", { className: "grid" }));
        pick.addEventListener("click", () => {
          for (const box of group.querySelectorAll("input.pick")) if (!box.checked) { box.checked = true; box.dispatchEvent(new Event("change")); }
        });
        list.append(group);
      }
      group.lastChild.append(item(entry));
    }
    if (!list.children.length) list.append(el("p", { className: "muted", id: "review-empty" }, "Nothing to review: faces that searches, videos and streams could not name appear here."));
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    await visiblePicturesLoaded(list);
  }

  async function act(path, body, done) {
    if (!selected.size) { error.textContent = "Select faces first."; return; }
    const answer = await attempt(error, () => api("POST", galleryPath(gallery, "review", path), { body: { review_ids: [...selected], ...body } }));
    if (answer) { setStatus(done(answer)); await load(true); }
  }
  buttons.assign.addEventListener("click", () => act("assign", { subject: subject.value.trim() }, (a) => `${plural(a.moved, "face")} enrolled as ${a.subject}.${samePhotoNote(a)}`));
  buttons.create.addEventListener("click", () => act("assign", { subject: subject.value.trim(), new: true }, (a) => `New person ${a.subject} with ${plural(a.moved, "face")}.${samePhotoNote(a)}`));
  buttons.not.addEventListener("click", () => act("not", { subject: subject.value.trim() }, (a) => `Noted: not ${a.subject}.`));
  buttons.dismiss.addEventListener("click", () => act("dismiss", {}, (a) => `${plural(a.dismissed, "face")} dismissed.`));
  more.addEventListener("click", () => load(false));
  main.append(
    el("h1", {}, `${gallery}: review`),
    el("p", { className: "muted" }, "Faces searches, videos and streams could not name, grouped by likeness. Select some, then assign them to a person, make them a new person, say who they are not, or dismiss them."),
    el("div", { className: "toolbar", id: "review-toolbar" }, subject, names, ...Object.values(buttons)), error, list, more);
  await load(true);
};

// --- Clusters -----------------------------------------------------------------------------------

PAGES.clusters = async (main, { gallery, token }) => {
  if (!needGallery(main, gallery)) return;
  const list = el("div", { id: "clusters-list", className: "results" });
  const error = errorLine();
  const more = el("button", { type: "button", id: "clusters-more", hidden: true }, "More");
  let cursor = null;

  function cluster(c) {
    const name = el("input", { className: "cluster-name", "aria-label": `Name cluster ${c.cluster_id}`, placeholder: "Who is it?", value: c.suggested_subject || "" });
    const mistake = errorLine();
    const form = el("form", { className: "inline" }, name, el("button", { type: "submit", className: "primary" }, "Name"), mistake);
    const card = el("section", { className: "review-group cluster", dataset: { clusterId: String(c.cluster_id), size: String(c.size) } },
      el("h2", {}, `${c.size} face${c.size === 1 ? "" : "s"}${c.suggested_subject ? ` · looks like ${c.suggested_subject} (${fmt(c.similarity, 2)})` : ""}`),
      el("div", { className: "grid" }, ...c.faces.slice(0, 12).map((f) => picture(facePicture(gallery, f), `face ${f.face_id}`))),
      form);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const answer = await attempt(mistake, () => api("POST", galleryPath(gallery, "faces", "move"), { body: { face_ids: c.faces.map((f) => f.face_id), subject: name.value.trim() } }));
      if (answer) { setStatus(`${plural(answer.moved, "face")} named ${answer.subject}.${samePhotoNote(answer)}`); card.remove(); }
    });
    return card;
  }

  async function load(reset) {
    if (reset) { cursor = null; list.replaceChildren(); }
    const answer = await attempt(error, () => api("GET", galleryPath(gallery, "clusters"), { query: { limit: 50, cursor } }));
    if (!answer || stale(token)) return;
    list.append(...answer.clusters.map(cluster));
    if (!list.children.length) list.append(el("p", { className: "muted" }, "No unsorted faces: enrol photos without a name to have them grouped here."));
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    await visiblePicturesLoaded(list);
  }
  more.addEventListener("click", () => load(false));
  main.append(
    el("h1", {}, `${gallery}: unsorted faces`),
    el("p", { className: "muted" }, "Faces enrolled without a name, grouped into people (two faces of one photo are never grouped). Name a group to make it a person, or add it to one."),
    error, list, more);
  await load(true);
};

// --- Video --------------------------------------------------------------------------------------

PAGES.video = async (main, { gallery }) => {
  const results = el("ol", { className: "results", id: "video-results" });
  const identify = el("input", { type: "checkbox", id: "video-identify", checked: !!gallery, disabled: !gallery });
  const handle = queue(async (file) => {
    const state = el("span", { className: "state" }, "Analysing…");
    const tracks = el("div", { className: "grid" });
    const item = el("li", { className: "video-item", dataset: { file: file.name, state: "working" } }, el("div", {}, file.name, " · ", state), tracks);
    results.append(item);
    const form = new FormData();
    form.append("file", file);
    form.append("return_crops", "true");
    form.append("return_embedding", "false");
    if (identify.checked && gallery) form.append("gallery", gallery);
    try {
      const answer = await api("POST", "multipart/video/extract", { form });
      for (const t of answer.tracks) {
        const who = t.identity ? (t.identity.subject || "unknown") : "";
        tracks.append(el("div", { className: "card track" },
          t.best.image ? el("img", { className: "thumb", src: `data:image/jpeg;base64,${t.best.image}`, alt: `track ${t.track}` }) : placeholder(`track ${t.track}`),
          el("span", { className: "name" }, who || `track ${t.track}`),
          el("span", { className: "count" }, `${fmt(t.first_s, 1)}–${fmt(t.last_s, 1)} s · ${t.frames} frames`)));
      }
      state.textContent = `${answer.tracks.length} track(s), ${answer.video.duration_s ? fmt(answer.video.duration_s, 1) + " s" : ""} ${answer.video.width}x${answer.video.height}`;
      item.dataset.state = "done";
    } catch (error) {
      state.className = "state error";
      state.textContent = error.message;
      item.dataset.state = "failed";
    }
  });
  main.append(
    el("h1", {}, "Video"),
    el("p", { className: "muted" }, "Drop a video file: its faces are tracked, each track shown with its best frame."),
    el("label", {}, identify, gallery ? ` identify the tracks in ${gallery} (unknown ones go to its review queue)` : " choose a gallery to identify the tracks"),
    dropZone("video", "Drop a video here", handle, "video/*"), results);
};

// --- Streams ------------------------------------------------------------------------------------

let watching = null; // the AbortController of the event stream being read

PAGES.streams = async (main, { gallery, token }) => {
  if (watching) { watching.abort(); watching = null; }
  const error = errorLine();
  const url = el("input", { type: "url", id: "stream-url", "aria-label": "Stream URL", placeholder: "rtsp:// or http(s):// stream", required: true });
  const form = el("form", { className: "inline", id: "stream-form" }, url, el("button", { type: "submit", className: "primary" }, "Start"), error);
  const body = el("tbody");
  const events = el("div", { className: "events", id: "stream-events", "aria-live": "polite" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = await attempt(error, () => api("POST", "video/jobs", { body: { url: url.value.trim(), gallery: gallery || null, return_embedding: false, return_crops: true } }));
    if (job) { await list(); watch(job.id); }
  });
  async function list() {
    const answer = await attempt(error, () => api("GET", "video/jobs"));
    if (!answer || stale(token)) return;
    body.replaceChildren(...answer.jobs.map((job) => {
      const see = el("button", { type: "button" }, "Watch");
      see.addEventListener("click", () => watch(job.id));
      const stop = el("button", { type: "button", className: "danger" }, "Stop");
      stop.addEventListener("click", async () => { if (await attempt(error, () => api("DELETE", `video/jobs/${enc(job.id)}`))) list(); });
      return el("tr", { dataset: { job: job.id } }, el("td", {}, job.url), el("td", {}, job.status), el("td", {}, job.tracks), el("td", {}, see, " ", stop));
    }));
  }
  async function watch(id) {
    if (watching) watching.abort();
    watching = new AbortController();
    events.replaceChildren(el("div", { className: "muted" }, `Events of job ${id}:`));
    // fetch, not EventSource: EventSource cannot send the key header
    try {
      const response = await fetch(apiUrl(`video/jobs/${enc(id)}/events`), { headers: headers(), signal: watching.signal });
      if (!response.ok) throw new ApiError(response.status, null, "the events could not be read");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1];
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (!kind || !data) continue;
          const parsed = JSON.parse(data);
          const line = kind === "track"
            ? el("div", {}, parsed.best && parsed.best.image ? el("img", { className: "small-thumb", src: `data:image/jpeg;base64,${parsed.best.image}`, alt: "" }) : null,
              ` track ${parsed.track}: ${fmt(parsed.first_s, 1)}–${fmt(parsed.last_s, 1)} s ${parsed.identity ? parsed.identity.subject || "unknown" : ""}`)
            : el("div", {}, `status: ${parsed.status}${parsed.reason ? ` (${parsed.reason})` : ""}`);
          events.append(line);
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") events.append(el("div", { className: "error" }, error.message));
    }
  }
  main.append(
    el("h1", {}, "Live streams"),
    el("p", { className: "muted" }, gallery ? `Tracks are identified in ${gallery}.` : "Choose a gallery to identify the tracks."),
    form,
    el("table", { id: "jobs-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Stream"), el("th", {}, "Status"), el("th", {}, "Tracks"), el("th", {}, ""))), body),
    el("h2", {}, "Events"), events);
  await list();
};

// --- System -------------------------------------------------------------------------------------

PAGES.system = async (main, { token }) => {
  const [info, health] = await Promise.all([api("GET", "info"), api("GET", "health").catch((e) => ({ status: e.message }))]);
  if (stale(token)) return;
  const models = info.models;
  const rows = Object.entries(models.providers || {}).map(([model, backend]) => {
    const [runtime, provider] = backend.split(":");
    return el("tr", {}, el("td", {}, model), el("td", {}, runtime), el("td", {}, provider || runtime));
  });
  const table = (object) => el("table", {}, el("tbody", {}, ...Object.entries(object || {}).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v))))));
  main.append(
    el("h1", {}, "System"),
    el("p", { id: "health" }, `facerest ${info.version} · health: ${health.status}`),
    el("h2", {}, "Models"),
    el("table", { id: "models-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Model"), el("th", {}, "Runtime"), el("th", {}, "Provider"))), el("tbody", {}, ...rows)),
    el("p", { className: "muted" }, `detector ${models.det_name} · recognizer ${models.rec_name || "none"} · threads ${info.threads}`),
    el("h2", {}, "Limits"), table(info.limits),
    el("h2", {}, "Decisions"), table({ verify_fmr: info.decisions.verify_fmr, search_fpir: info.decisions.search_fpir, calibration: info.decisions.calibration ? info.decisions.calibration.source : "none" }));
};

// --- start --------------------------------------------------------------------------------------

async function start() {
  // one probe: it tells whether a key is needed (401) before anything else shows
  try {
    await api("GET", "galleries", { query: { limit: 1 } });
  } catch (error) {
    if (error.status === 401) return; // the prompt shows, and only the prompt
    // anything else (no gallery storage, a network error): the pages say it where it matters
  }
  $("#key-prompt").hidden = true;
  $("#app").hidden = false;
  $("#forget-key").hidden = !sessionStorage.getItem(KEY);
  useGallery("");
  await route();
}

addEventListener("hashchange", route);
start();
