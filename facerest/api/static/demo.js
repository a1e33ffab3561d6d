// The demo page: detect faces in one image through /extract, draw them, list their crops, and
// (when the server has a gallery) enrol and search. Plain browser JavaScript, nothing fetched
// from anywhere but this server; URLs are relative so the page works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, dataUrl: null, faces: [], names: [], gallery: false };

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  if (!response.ok) {
    const detail = answer && answer.detail ? answer.detail : response.statusText;
    const error = new Error(`${response.status} ${answer && answer.code ? answer.code + ": " : ""}${detail}`);
    error.status = response.status;
    throw error;
  }
  return answer;
}

// the image as plain base64, without the data-URL prefix every endpoint may not strip
function imageData() {
  return state.dataUrl.slice(state.dataUrl.indexOf(",") + 1);
}

function readAsDataUrl(file) {
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
    image.onerror = () => reject(new Error("the browser cannot display this image"));
    image.src = src;
  });
}

const LANDMARK_COLORS = ["#ff3030", "#ffd400", "#ff30ff", "#30ff30", "#3080ff"];

function draw() {
  const canvas = $("canvas");
  const image = state.image;
  if (!image) return;
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const unit = Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 500));
  ctx.font = `${Math.max(12, 6 * unit)}px sans-serif`;
  ctx.textBaseline = "bottom";
  state.faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.bbox;
    const name = state.names[i];
    ctx.lineWidth = 2 * unit;
    ctx.strokeStyle = name ? "#ffb000" : "#00c800";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if ($("show-landmarks").checked && face.landmarks) {
      face.landmarks.forEach(([x, y], k) => {
        ctx.fillStyle = LANDMARK_COLORS[k % LANDMARK_COLORS.length];
        ctx.beginPath();
        ctx.arc(x, y, 1.5 * unit, 0, 2 * Math.PI);
        ctx.fill();
      });
    }
    const label = [`#${i + 1}`];
    if ($("show-scores").checked) label.push(face.prob.toFixed(2));
    if (name) label.push(name);
    const text = label.join(" ");
    const width = ctx.measureText(text).width + 4;
    const height = Math.max(12, 6 * unit) + 2;
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(x1, Math.max(0, y1 - height), width, height);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + 2, Math.max(height, y1) - 1);
  });
}

function listFaces() {
  const list = $("faces");
  list.replaceChildren();
  state.faces.forEach((face, i) => {
    const item = document.createElement("li");
    item.className = "face";
    item.dataset.index = String(i);
    if (face.facedata) {
      const crop = document.createElement("img");
      crop.className = "crop";
      crop.alt = `face ${i + 1}`;
      crop.src = `data:image/jpeg;base64,${face.facedata}`;
      item.append(crop);
    }
    const caption = document.createElement("div");
    caption.textContent = `#${i + 1} · score ${face.prob.toFixed(3)} · ${face.size}px`;
    item.append(caption);
    if (state.names[i] !== undefined) {
      const who = document.createElement("div");
      who.className = "who";
      who.textContent = state.names[i] || "unknown";
      item.append(who);
    }
    item.addEventListener("mouseenter", () => item.classList.add("hover"));
    item.addEventListener("mouseleave", () => item.classList.remove("hover"));
    list.append(item);
  });
  $("face-count").textContent = String(state.faces.length);
}

async function detect() {
  if (!state.dataUrl) return;
  const threshold = Number($("threshold").value);
  setStatus("Detecting…");
  const started = performance.now();
  try {
    const answer = await api("POST", "extract", {
      images: { data: [imageData()] },
      threshold: Number.isFinite(threshold) ? threshold : 0.6,
      return_landmarks: true,
      return_face_data: true,
      extract_embedding: false,
    });
    const [item] = answer.data;
    if (item.status !== "ok") throw new Error(item.traceback || "the server could not read this image");
    state.faces = item.faces;
    state.names = [];
    draw();
    listFaces();
    const ms = Math.round(performance.now() - started);
    setStatus(`${state.faces.length} faces found in ${ms} ms.`);
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(error.message, true);
  }
  updateButtons();
}

async function useFile(file) {
  if (!file) return;
  try {
    state.dataUrl = await readAsDataUrl(file);
    state.image = await loadImage(state.dataUrl);
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  state.faces = [];
  draw();
  await detect();
}

// --- gallery (only when the server answers GET /galleries) -------------------------------------

function updateButtons() {
  const ready = state.gallery && state.dataUrl !== null && state.faces.length > 0;
  $("enrol").disabled = !ready || !$("subject-name").value.trim() || !$("gallery-name").value.trim();
  $("search").disabled = !ready || !$("gallery-name").value.trim();
}

async function refreshGalleries() {
  const { galleries } = await api("GET", "galleries");
  const list = $("galleries");
  list.replaceChildren();
  for (const g of galleries) {
    const item = document.createElement("li");
    item.textContent = `${g.name}: ${g.subjects} subjects, ${g.faces} faces (${g.model})`;
    list.append(item);
  }
}

async function checkGallery() {
  try {
    await refreshGalleries();
    state.gallery = true;
    $("gallery-status").textContent =
      "Enrol the largest face of the image under a name, or search the gallery for every face in it.";
    $("gallery-controls").hidden = false;
  } catch (error) {
    $("gallery-status").textContent = error.status === 404
      ? "This server has no gallery API: enrolment and search are not available."
      : `Gallery unavailable: ${error.message}`;
  }
  updateButtons();
}

function galleryPath(...parts) {
  return ["gallery", ...parts].map(encodeURIComponent).join("/");
}

async function enrol() {
  const gallery = $("gallery-name").value.trim();
  const subject = $("subject-name").value.trim();
  try {
    const answer = await api("POST", `${galleryPath(gallery, "subjects", subject)}/faces`, {
      images: { data: [imageData()] },
      all_faces: false,
    });
    const failed = answer.failed && answer.failed.length ? ` (${answer.failed[0].detail})` : "";
    setStatus(`Enrolled ${answer.added.length} face(s) as "${answer.subject}" in "${answer.gallery}"${failed}.`);
    await refreshGalleries();
  } catch (error) {
    setStatus(error.message, true);
  }
}

function centre(bbox) {
  return [(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2];
}

async function search() {
  const gallery = $("gallery-name").value.trim();
  try {
    const answer = await api("POST", galleryPath(gallery, "search"), {
      images: { data: [imageData()] },
      top_k: 3,
      threshold: null,
    });
    const found = (answer.data[0] && answer.data[0].faces) || [];
    // the search detects again: pair its faces with ours by the nearest box centre
    state.names = state.faces.map((face) => {
      const [cx, cy] = centre(face.bbox);
      let best = null;
      let bestDistance = Infinity;
      for (const other of found) {
        const [ox, oy] = centre(other.bbox);
        const distance = Math.hypot(cx - ox, cy - oy);
        if (distance < bestDistance) { best = other; bestDistance = distance; }
      }
      if (!best || bestDistance > (face.bbox[2] - face.bbox[0]) / 2) return null;
      return best.subject ? `${best.subject} (${best.similarity.toFixed(2)})` : null;
    });
    draw();
    listFaces();
    const known = state.names.filter(Boolean).length;
    setStatus(`${known} of ${state.faces.length} faces recognised (threshold ${answer.threshold}).`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

// --- wiring -------------------------------------------------------------------------------------

$("file").addEventListener("change", (event) => useFile(event.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  useFile(event.dataTransfer.files[0]);
});
$("threshold").addEventListener("change", detect);
$("show-landmarks").addEventListener("change", draw);
$("show-scores").addEventListener("change", draw);
$("subject-name").addEventListener("input", updateButtons);
$("gallery-name").addEventListener("input", updateButtons);
$("enrol").addEventListener("click", enrol);
$("search").addEventListener("click", search);
checkGallery();
