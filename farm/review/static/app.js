// seedfarm review page: plain JavaScript, no build step, no network beyond its own server.
// Live mode talks to `farm review`'s JSON API; a static export (`farm review --export`) sets
// window.SEEDFARM_DATA in data.js instead, and then marks are read-only.
"use strict";

const STATIC = window.SEEDFARM_DATA || null;
const JOB_POLL_MS = 2000;   // while a job renders: new images appear by themselves
const MARK_POLL_MS = 4000;  // other reviewers' stars
const LIST_POLL_MS = 3000;

const main = document.getElementById("main");
const zoom = document.getElementById("zoom");
let timers = [];
let view = null;  // the job on screen: {job, data, x, y, filters, cells, zoomed}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

function every(ms, fn) { timers.push(setInterval(fn, ms)); }
function stopTimers() { timers.forEach(clearInterval); timers = []; }

// ---- routing: #/ is the job list, #/job/ID?x=..&y=..&f.AXIS=LABEL a job (reload keeps the view)

function route() {
  stopTimers();
  if (zoom.open) zoom.close();
  if (STATIC) return openJob(STATIC.job, new URLSearchParams(location.hash.split("?")[1] || ""));
  const m = location.hash.match(/^#\/job\/([^?]+)(?:\?(.*))?$/);
  if (m) return openJob(decodeURIComponent(m[1]), new URLSearchParams(m[2] || ""));
  return showJobs();
}

function saveHash() {
  const params = new URLSearchParams();
  if (view.x) params.set("x", view.x);
  if (view.y) params.set("y", view.y);
  for (const [axis, label] of Object.entries(view.filters)) params.set("f." + axis, label);
  const base = STATIC ? "#" : `#/job/${encodeURIComponent(view.job)}`;
  history.replaceState(null, "", `${base}?${params}`);
}

// ---- the job list

async function showJobs() {
  view = null;
  document.title = "seedfarm review";
  const render = async () => {
    try {
      const data = await api("/api/jobs");
      document.getElementById("where").textContent = data.store;
      const rows = data.jobs.map((j) => el("tr", {},
        el("td", {}, el("a", { href: `#/job/${encodeURIComponent(j.job)}` }, j.name)),
        el("td", {}, j.job),
        el("td", {}, el("progress", { max: j.images || 1, value: j.done, "aria-label": `${j.name} progress` }),
           ` ${j.done} / ${j.images}`),
        el("td", {}, j.created_at)));
      main.replaceChildren(
        el("h2", {}, "Jobs"),
        data.jobs.length
          ? el("table", { class: "jobs" },
              el("thead", {}, el("tr", {}, ...["Job", "Id", "Images", "Created"].map((t) => el("th", { scope: "col" }, t)))),
              el("tbody", {}, rows))
          : el("p", {}, "No jobs in this store yet."));
      notice("");
    } catch (e) { notice(`Cannot list jobs: ${e.message}`); }
  };
  await render();
  every(LIST_POLL_MS, render);
}

// ---- one job

async function openJob(job, params) {
  let data;
  try { data = STATIC || await api(`/api/jobs/${encodeURIComponent(job)}`); }
  catch (e) { main.replaceChildren(el("p", {}, `Cannot open job ${job}: ${e.message}`)); return; }
  const names = data.axes.map((a) => a.name);
  const pick = (want, fallback) => (names.includes(want) ? want : fallback);
  const x = pick(params.get("x"), pick(data.grid.x, names[0] || null));
  const y = params.has("y") ? pick(params.get("y"), null) : pick(data.grid.y, names.find((n) => n !== x) || null);
  const filters = {};
  for (const [k, v] of params) if (k.startsWith("f.")) filters[k.slice(2)] = v;
  view = { job, data, x, y: y === x ? null : y, filters, cells: [], zoomed: null };
  document.title = `${data.name}: seedfarm review`;
  document.getElementById("where").textContent = STATIC ? "static copy" : job;
  if (STATIC) notice("A static copy of this review: stars are read-only here. Run `farm review` on the store to change them.");
  else notice("");
  renderJob();
  if (STATIC) return;
  every(JOB_POLL_MS, async () => {
    if (view.data.done >= view.data.total) return;
    try { view.data = await api(`/api/jobs/${encodeURIComponent(job)}`); renderJob(true); } catch (e) { notice(e.message); }
  });
  every(MARK_POLL_MS, async () => {
    try {
      const marks = await api(`/api/jobs/${encodeURIComponent(job)}/marks`);
      if (JSON.stringify(marks) !== JSON.stringify(view.data.marks)) { view.data.marks = marks; renderJob(true); }
    } catch (e) { notice(e.message); }
  });
}

function axis(name) { return view.data.axes.find((a) => a.name === name); }

// The images shown: those matching the filter on every axis that is not on x or y.
function layout() {
  const { data, x, y } = view;
  const others = data.axes.filter((a) => a.name !== x && a.name !== y);
  const chosen = {};
  for (const a of others) {
    let i = a.labels.indexOf(view.filters[a.name]);
    if (i < 0) i = 0;  // default: the first value
    view.filters[a.name] = a.labels[i];
    chosen[a.name] = i;
  }
  for (const k of Object.keys(view.filters)) if (!others.some((a) => a.name === k)) delete view.filters[k];
  const cols = x ? axis(x).labels.length : 1;
  const rows = y ? axis(y).labels.length : 1;
  const cells = Array.from({ length: rows }, () => Array(cols).fill(null));
  for (const image of data.images) {
    if (!others.every((a) => image.at[a.name] === chosen[a.name])) continue;
    const c = x ? image.at[x] : 0;
    const r = y ? image.at[y] : 0;
    if (!cells[r][c]) cells[r][c] = image;
  }
  view.cells = cells;
  return others;
}

function imageUrl(image, path = image.image) {
  return STATIC ? `../${path}` : `/store/${encodeURIComponent(view.job)}/${path}`;
}

function describe(image) {
  return view.data.axes.map((a) => `${a.title}: ${a.labels[image.at[a.name]]}`).join(", ") || `seed ${image.seed}`;
}

function axisSelect(label, value, allowNone, onchange) {
  const options = view.data.axes.map((a) => el("option", { value: a.name, selected: a.name === value }, a.title));
  if (allowNone) options.unshift(el("option", { value: "", selected: !value }, "(none)"));
  return el("label", {}, label, el("select", { onchange: (e) => onchange(e.target.value || null) }, options));
}

function renderJob(keepFocus = false) {
  const focused = keepFocus && document.activeElement?.dataset?.id;
  const { data } = view;
  const others = layout();
  saveHash();
  const marks = Object.values(data.marks);
  const stars = marks.filter((m) => m === "star").length;
  const rejects = marks.filter((m) => m === "reject").length;
  const live = data.done < data.total;

  const toolbar = el("div", { class: "toolbar" },
    axisSelect("Columns (x)", view.x, true, (v) => { view.x = v; if (view.y === v) view.y = null; renderJob(); }),
    axisSelect("Rows (y)", view.y, true, (v) => { view.y = v; if (view.x === v) view.x = null; renderJob(); }),
    ...others.map((a) => el("label", {}, `${a.title} (filter)`,
      el("select", { "data-axis": a.name, onchange: (e) => { view.filters[a.name] = e.target.value; renderJob(); } },
        a.labels.map((l) => el("option", { value: l, selected: l === view.filters[a.name] }, l))))),
    el("label", {}, "Thumbnail size",
      el("input", { type: "range", min: 64, max: 512, step: 16, value: parseInt(getComputedStyle(document.documentElement).getPropertyValue("--cell")),
                    oninput: (e) => document.documentElement.style.setProperty("--cell", `${e.target.value}px`) })),
    el("div", { class: "actions" },
      exportLink("Export stars as job spec", "stars.yaml", stars, true),
      exportLink("Sheet of stars", "stars.png", stars, false)));

  const head = el("tr", {},
    el("th", { class: "corner", scope: "col" }, `${view.y ? axis(view.y).title : ""}${view.y && view.x ? " \\ " : ""}${view.x ? axis(view.x).title : ""}`),
    ...(view.x ? axis(view.x).labels : [""]).map((l) =>
      el("th", { scope: "col" }, view.x ? el("span", { class: "axis" }, axis(view.x).title) : null, l)));
  const body = view.cells.map((row, r) => el("tr", {},
    el("th", { scope: "row" }, view.y ? el("span", { class: "axis" }, axis(view.y).title) : null, view.y ? axis(view.y).labels[r] : ""),
    ...row.map((image, c) => el("td", {}, image ? cellButton(image, r, c)
      : el("div", { class: "missing", role: "img", "aria-label": "not rendered yet" }, live ? "rendering…" : "no image")))));

  main.replaceChildren(
    el("h2", {}, data.name, " ", el("span", { class: "summary" }, data.job)),
    el("p", { class: "summary" }, el("progress", { max: data.total || 1, value: data.done, "aria-label": "images done" }),
      ` ${data.done} / ${data.total} images${live ? " (rendering: new images appear here as they finish)" : ""}`,
      ` · ${stars} starred · ${rejects} rejected`),
    toolbar,
    el("div", { class: "gridwrap" }, el("table", { class: "grid", "aria-label": "images" }, el("thead", {}, head), el("tbody", {}, body))),
    el("p", { class: "hint" }, "Click an image or press Enter to zoom. Arrow keys move between images; S stars, X rejects."));
  if (focused) main.querySelector(`.cell[data-id="${CSS.escape(focused)}"]`)?.focus();
  if (view.zoomed) showZoom(view.zoomed.r, view.zoomed.c, false);
}

function exportLink(text, file, stars, download) {
  const href = STATIC ? file : `/api/jobs/${encodeURIComponent(view.job)}/${file}`;
  const off = stars === 0;
  return el("a", { class: "button", href: off ? null : href, download: download && !off ? `${view.job}-stars.yaml` : null,
                   target: download ? null : "_blank", "aria-disabled": off ? "true" : null,
                   title: off ? "Star some images first" : null }, text);
}

function cellButton(image, r, c) {
  const mark = view.data.marks[image.id];
  return el("button", {
    type: "button", class: `cell ${mark || ""}`, "data-id": image.id, "data-r": r, "data-c": c,
    "aria-label": `${describe(image)}${mark ? ` (${mark === "star" ? "starred" : "rejected"})` : ""}`,
    onclick: () => showZoom(r, c, true),
    onkeydown: (e) => cellKey(e, r, c),
  }, el("img", { src: imageUrl(image), alt: "", loading: "lazy" }),
     // img2img: the init image beside the result, small in the cell's corner
     image.input ? el("img", { class: "init", src: imageUrl(image, image.input), alt: "init image", loading: "lazy" }) : null,
     el("span", { class: "badge", "aria-hidden": "true" }));
}

// The nearest image from (r, c) going (dr, dc), skipping cells with none.
function step(r, c, dr, dc) {
  for (let i = r + dr, j = c + dc; i >= 0 && j >= 0 && i < view.cells.length && j < view.cells[0].length; i += dr, j += dc) {
    if (view.cells[i][j]) return [i, j];
  }
  return null;
}

const MOVES = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };

function cellKey(e, r, c) {
  if (MOVES[e.key]) {
    const to = step(r, c, ...MOVES[e.key]);
    if (to) main.querySelector(`.cell[data-r="${to[0]}"][data-c="${to[1]}"]`).focus();
    e.preventDefault();
  } else if (e.key === "s" || e.key === "x") {
    toggle(view.cells[r][c], e.key === "s" ? "star" : "reject");
  }
}

async function toggle(image, mark) {
  if (STATIC) { notice("This is a static copy: stars are read-only here. Run `farm review` to change them."); return; }
  const next = view.data.marks[image.id] === mark ? null : mark;
  try {
    await api(`/api/jobs/${encodeURIComponent(view.job)}/marks/${encodeURIComponent(image.id)}`,
              { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mark: next }) });
  } catch (e) { notice(`Could not save the mark: ${e.message}`); return; }
  if (next) view.data.marks[image.id] = next; else delete view.data.marks[image.id];
  renderJob(true);
}

// ---- zoom: one image, its parameters, neighbours by keyboard

function showZoom(r, c, open) {
  const image = view.cells[r]?.[c];
  if (!image) { if (zoom.open) zoom.close(); return; }
  view.zoomed = { r, c };
  const mark = view.data.marks[image.id];
  document.getElementById("zoom-img").src = imageUrl(image);
  document.getElementById("zoom-img").alt = describe(image);
  const init = document.getElementById("zoom-init");  // img2img: its init image beside it
  init.hidden = !image.input;
  if (image.input) init.querySelector("img").src = imageUrl(image, image.input);
  document.getElementById("zoom-title").textContent = `Seed ${image.seed}`;
  document.getElementById("zoom-values").replaceChildren(
    ...view.data.axes.map((a) => el("li", {}, el("strong", {}, `${a.title}: `), a.labels[image.at[a.name]])),
    el("li", {}, el("strong", {}, "Worker: "), `${image.worker} (${image.seconds} s)`));
  document.getElementById("zoom-params").textContent = image.parameters;
  const star = document.getElementById("zoom-star");
  const reject = document.getElementById("zoom-reject");
  star.setAttribute("aria-pressed", String(mark === "star"));
  star.firstChild.textContent = mark === "star" ? "★ Starred " : "☆ Star ";
  reject.setAttribute("aria-pressed", String(mark === "reject"));
  star.disabled = reject.disabled = Boolean(STATIC);
  if (open && !zoom.open) zoom.showModal();
}

zoom.addEventListener("keydown", (e) => {
  const { r, c } = view.zoomed;
  if (MOVES[e.key]) {
    const to = step(r, c, ...MOVES[e.key]);
    if (to) showZoom(to[0], to[1], false);
    e.preventDefault();
  } else if (e.key === "s" || e.key === "x") {
    toggle(view.cells[r][c], e.key === "s" ? "star" : "reject");
  }
});
zoom.addEventListener("close", () => {
  const { r, c } = view.zoomed || {};
  view.zoomed = null;
  main.querySelector(`.cell[data-r="${r}"][data-c="${c}"]`)?.focus();
});
document.getElementById("zoom-close").addEventListener("click", () => zoom.close());
document.getElementById("zoom-star").addEventListener("click", () => toggle(view.cells[view.zoomed.r][view.zoomed.c], "star"));
document.getElementById("zoom-reject").addEventListener("click", () => toggle(view.cells[view.zoomed.r][view.zoomed.c], "reject"));

window.addEventListener("hashchange", () => { if (!view || !location.hash.startsWith(`#/job/${encodeURIComponent(view.job)}?`)) route(); });
route();
