"""The explorer's page: HTML, CSS and plain JavaScript, no framework and no network (see `explorer.py`).

`__TITLE__` and `__DATA__` are replaced by the escaped title and the JSON record written by `write_explorer`.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { display: flex; align-items: center; gap: 16px; padding: 6px 12px; background: #263238; color: #fff; }
header h1 { font-size: 16px; margin: 0; flex: 1; }
header button { background: #455a64; color: #fff; border: 0; padding: 5px 12px; cursor: pointer; }
header button.on { background: #00897b; }
#strip { display: flex; gap: 4px; overflow-x: auto; padding: 6px 12px; background: #eceff1; }
#strip img { height: 56px; cursor: pointer; border: 2px solid transparent; }
#strip img.on { border-color: #00897b; }
#main { display: flex; gap: 16px; padding: 10px 12px; align-items: flex-start; }
#viewer { flex: none; max-width: 600px; overflow: auto; }
#view { cursor: crosshair; display: block; }
#panel { flex: 1; min-width: 320px; }
.controls { margin: 6px 0; display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
.legend span { display: inline-flex; align-items: center; gap: 4px; margin-right: 10px; }
.sw { display: inline-block; width: 12px; height: 12px; border: 1px solid #0004; vertical-align: middle; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0 10px; }
.card { background: #fff; border: 1px solid #ddd; padding: 4px; font-size: 11px; width: min-content; }
.card.win { border: 2px solid #00897b; }
.card canvas { display: block; }
.card .pair { display: flex; gap: 4px; }
.patch { position: relative; width: 80px; height: 80px; flex: none; }
.patch img { width: 80px; height: 80px; display: block; }
.patch .box { position: absolute; border: 1.5px solid yellow; box-sizing: border-box; }
.unused { filter: grayscale(1); opacity: .4; }
.tag { color: #c62828; font-weight: bold; }
h2 { font-size: 14px; margin: 10px 0 4px; } h3 { font-size: 13px; margin: 8px 0 2px; }
.note { color: #666; font-style: italic; }
#gallery { padding: 10px 12px; }
#gallery .card { min-width: 80px; }
.scales { display: flex; gap: 18px; flex-wrap: wrap; }
.scale { border-left: 3px solid #cfd8dc; padding-left: 6px; }
</style>
</head>
<body>
<header><h1 id="title">__TITLE__</h1><button id="tab-explore" class="on">Explore</button>
<button id="tab-gallery">Gallery</button></header>
<section id="explore">
<div id="strip"></div>
<div id="main">
<div id="viewer"><div id="imginfo"></div><canvas id="view" width="1" height="1"></canvas>
<div class="controls"><label>overlay <select id="overlay"><option value="pred">prediction</option>
<option value="truth">ground truth</option><option value="win">winner</option><option value="none">none</option>
</select></label><label>opacity <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.45"></label></div>
<div id="legend" class="legend"></div></div>
<div id="panel" data-state="empty"><p class="note">Choose an image above, then click a pixel.</p></div>
</div>
</section>
<section id="gallery" hidden></section>
<script type="application/json" id="explorer-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("explorer-data").textContent);
const $ = id => document.getElementById(id);
const FIT = 560, CARD = 156;
let cur = null;
const cache = new Map();

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "cls") e.className = v;
    else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}
function bytes(b64) {
  const s = atob(b64), a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
  return a;
}
function unrle(r, n) {
  const a = new Int32Array(n);
  for (let i = 0, k = 0; i < r.length; i += 2) { a.fill(r[i], k, k + r[i + 1]); k += r[i + 1]; }
  return a;
}
function hex(c) { return [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)); }
function jet(t) {
  const f = x => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * t - x))));
  return [f(3), f(2), f(1)];
}
function winColour(v) {  // a distinct hue per winner (golden-angle steps)
  if (v < 0) return [0, 0, 0];
  const h = (v * 137.508) % 360, f = n => { const k = (n + h / 30) % 12; return Math.round(255 * (0.5 - 0.33 * Math.max(-1, Math.min(k - 3, 9 - k, 1)))); };
  return [f(0), f(8), f(4)];
}
function loaded(img, fn) { if (img.complete && img.naturalWidth) fn(); else img.addEventListener("load", fn, {once: true}); }

// One image's decoded maps, kept once opened.
function record(i) {
  if (!cache.has(i)) {
    const r = D.images[i], n = r.W * r.H, img = new Image();
    img.src = r.png;
    const q = {}, sal = {};
    for (const [c, e] of Object.entries(r.perClass)) q[c] = {protos: e.data ? bytes(e.data) : null, groups: e.groupMaps ? bytes(e.groupMaps.data) : null};
    for (const [c, e] of Object.entries(r.saliency || {})) sal[c] = bytes(e.data);
    cache.set(i, {i, r, img, W: r.W, H: r.H, pred: unrle(r.pred, n), truth: unrle(r.truth, n), win: unrle(r.win, n), q, sal});
  }
  return cache.get(i);
}
// A w×h heat canvas of map k of a quantised stack (browser upsampling does the rest).
function heat(q, k, w, h) {
  const cv = el("canvas", {width: w, height: h}), ctx = cv.getContext("2d"), im = ctx.createImageData(w, h);
  for (let j = 0; j < w * h; j++) { const [R, G, B] = jet(q[k * w * h + j] / 255); im.data.set([R, G, B, 255], 4 * j); }
  ctx.putImageData(im, 0, 0);
  return cv;
}
function overlay(rec, src, x, y, side = CARD) {
  const s = side / Math.max(rec.W, rec.H), w = Math.round(rec.W * s), h = Math.round(rec.H * s);
  const cv = el("canvas", {width: w, height: h});
  const draw = () => {
    const ctx = cv.getContext("2d");
    ctx.drawImage(rec.img, 0, 0, w, h);
    if (src) { ctx.globalAlpha = 0.55; ctx.imageSmoothingEnabled = true; ctx.drawImage(src, 0, 0, w, h); ctx.globalAlpha = 1; }
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc((x + 0.5) * s, (y + 0.5) * s, 4, 0, 7); ctx.stroke();
  };
  loaded(rec.img, draw);
  return cv;
}
function valueAt(q, e, k, x, y, rec, fh, fw) {
  const fy = Math.min(fh - 1, Math.floor(y * fh / rec.H)), fx = Math.min(fw - 1, Math.floor(x * fw / rec.W));
  return e.lo[k] + q[k * fh * fw + fy * fw + fx] / 255 * (e.hi[k] - e.lo[k]);
}
function patch(p) {
  const P = D.patches[p];
  if (!P) return el("div", {cls: "patch note", text: "no patch"});
  const [y0, x0, y1, x1] = P.box, box = y0 < 0 ? null : el("div", {cls: "box", style:
    `left:${100 * x0 / P.w}%;top:${100 * y0 / P.h}%;width:${100 * (x1 - x0) / P.w}%;height:${100 * (y1 - y0) / P.h}%`});
  return el("div", {cls: "patch", title: "source patch of " + D.protos[p].name}, el("img", {src: P.png, alt: D.protos[p].name}), box);
}
function className(c) { return c === 255 ? "void" : (D.classes[c] ?? "?"); }
function swatch(c) { return el("span", {cls: "sw", style: "background:" + (c === 255 ? "#000" : D.colours[c])}); }

// --- the image view -----------------------------------------------------------------------------
function openImage(i) {
  cur = record(i);
  document.querySelectorAll("#strip img").forEach((t, k) => t.classList.toggle("on", k === i));
  const v = $("view"), big = Math.max(cur.W, cur.H);
  cur.s = big > FIT ? FIT / big : Math.max(1, Math.floor(FIT / big));  // integer zoom: pixel-exact clicks
  v.width = Math.round(cur.W * cur.s); v.height = Math.round(cur.H * cur.s);
  v.style.width = v.width + "px"; v.style.height = v.height + "px";
  $("imginfo").textContent = `${cur.r.id} (${i + 1}/${D.images.length}, ${cur.W}×${cur.H} px)`;
  $("panel").replaceChildren(el("p", {cls: "note", text: "Click a pixel of the image."}));
  $("panel").dataset.state = "empty";
  cur.sel = null;
  loaded(cur.img, drawView);
  drawView();
}
function drawView() {
  if (!cur) return;
  const v = $("view"), ctx = v.getContext("2d"), mode = $("overlay").value;
  ctx.clearRect(0, 0, v.width, v.height);
  if (cur.img.complete && cur.img.naturalWidth) ctx.drawImage(cur.img, 0, 0, v.width, v.height);
  const present = new Set(), rgb = D.colours.map(hex);
  // winner overlay: one colour per (class, group) of a grouped model, per prototype otherwise
  const key = j => mode === "win" ? (D.grouped && cur.win[j] >= 0 ? cur.pred[j] * D.groups + cur.win[j] : cur.win[j])
    : (mode === "pred" ? cur.pred[j] : cur.truth[j]);
  if (mode !== "none") {
    const off = el("canvas", {width: cur.W, height: cur.H}), octx = off.getContext("2d");
    const im = octx.createImageData(cur.W, cur.H);
    for (let j = 0; j < cur.W * cur.H; j++) {
      const c = key(j), col = mode === "win" ? winColour(c) : (c === 255 ? [0, 0, 0] : rgb[c]);
      present.add(c);
      im.data.set([col[0], col[1], col[2], 255], 4 * j);
    }
    octx.putImageData(im, 0, 0);
    ctx.globalAlpha = +$("opacity").value; ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, v.width, v.height); ctx.globalAlpha = 1;
  }
  if (cur.sel) {
    const [x, y] = cur.sel; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc((x + 0.5) * cur.s, (y + 0.5) * cur.s, 7, 0, 7); ctx.stroke();
  }
  const label = c => mode !== "win" ? [swatch(c), className(c)] : [
    el("span", {cls: "sw", style: `background:rgb(${winColour(c).join(",")})`}),
    c < 0 ? "no prototype" : D.grouped ? `${className(Math.floor(c / D.groups))} g${c % D.groups}` : D.protos[c].name];
  $("legend").replaceChildren(...[...present].sort((a, b) => a - b).map(c => el("span", {}, ...label(c))));
}
function pixelOf(e) {
  const r = $("view").getBoundingClientRect();
  const x = Math.floor((e.clientX - r.left) * cur.W / r.width), y = Math.floor((e.clientY - r.top) * cur.H / r.height);
  return [Math.max(0, Math.min(cur.W - 1, x)), Math.max(0, Math.min(cur.H - 1, y))];
}

// --- the panel ----------------------------------------------------------------------------------
function showPixel(x, y) {
  const rec = cur, k = y * rec.W + x, c = rec.pred[k], t = rec.truth[k], w = rec.win[k], r = rec.r;
  const e = r.perClass[String(c)], q = rec.q[String(c)], panel = $("panel");
  cur.sel = [x, y]; drawView();
  const kids = [el("h2", {}, `Pixel (x ${x}, y ${y}) of ${r.id}: predicted `, swatch(c), " " + className(c)),
    el("div", {}, "ground truth: ", swatch(t), " " + className(t))];
  let shown = [];
  const stored = e.maps !== false;
  if (!stored) kids.push(el("p", {cls: "note", "data-maps-note": "1", text: `Activation maps not stored: ${className(c)} is not among the ${D.mapClasses} predicted classes with the most pixels in this image.`}));
  if (D.grouped) {
    const G = D.groups, groups = D.classHead[c];
    kids.push(el("h3", {text: `Winning group: group ${w} of ${className(c)} (largest group activation × own-class head weight ${groups[w].head.toFixed(3)})`}));
    const row = el("div", {cls: "cards"});
    for (let g = 0; g < (stored ? G : 0); g++) {
      const a = valueAt(q.groups, e.groupMaps, g, x, y, rec, r.fh, r.fw);
      row.append(el("div", {cls: "card" + (g === w ? " win" : ""), "data-group": g}, overlay(rec, heat(q.groups, g, r.fw, r.fh), x, y),
        el("div", {text: `group ${g}${g === w ? " (winner)" : ""}: activation ≈ ${a.toFixed(3)}, head ${groups[g].head.toFixed(3)}`})));
    }
    kids.push(row, el("h3", {text: `Prototypes of group ${w} (group weight, source patch, activation map)`}));
    shown = groups[w].protos.map(([p, wt]) => [p, `group weight ${wt.toFixed(3)}`]);
  } else if (w < 0) {
    kids.push(el("h3", {text: `${className(c)} has no prototype left to explain this pixel.`}));
  } else {
    kids.push(el("h3", {text: `Winning prototype: ${D.protos[w].name} (largest activation × own-class last-layer weight among the ${className(c)} prototypes)`}));
    const rest = D.classHead[c].filter(([p]) => p !== w), own = D.classHead[c].find(([p]) => p === w);
    shown = [own, ...rest].filter(Boolean).map(([p, wt]) => [p, `last-layer weight ${wt.toFixed(3)}`]);
    kids.push(el("h3", {text: `Prototypes of ${className(c)} (winner first)`}));
  }
  const cards = el("div", {cls: "cards"});
  for (const [p, label] of shown) {
    const j = stored ? e.protos.indexOf(p) : -1;
    const act = j < 0 ? null : valueAt(q.protos, e, j, x, y, rec, r.fh, r.fw);
    cards.append(el("div", {cls: "card" + (p === w && !D.grouped ? " win" : ""), "data-prototype": p},
      el("div", {cls: "pair"}, patch(p), j < 0 ? null : overlay(rec, heat(q.protos, j, r.fw, r.fh), x, y, 120)),
      el("div", {text: `${D.protos[p].name}: ${label}` + (act === null ? "" : `, activation ≈ ${act.toFixed(3)}`)})));
  }
  if (!shown.length) cards.append(el("p", {cls: "note", text: "No prototype to show."}));
  kids.push(cards, el("h3", {text: `${D.saliencyLabel} of the predicted class`}));
  const sal = r.saliency && r.saliency[String(c)];
  if (sal) kids.push(el("div", {cls: "card", "data-gradcam": c}, overlay(rec, heat(rec.sal[String(c)], 0, sal.w, sal.h), x, y),
    el("div", {text: `${D.saliencyLabel} of ${className(c)} (range ${sal.lo[0].toFixed(3)}…${sal.hi[0].toFixed(3)})`})));
  else kids.push(el("p", {cls: "note", text: D.hasSaliency ? `No ${D.saliencyLabel} map of ${className(c)} for this image.` : `No ${D.saliencyLabel} maps were given.`}));
  panel.replaceChildren(...kids);
  Object.assign(panel.dataset, {state: "pixel", image: rec.i, x, y, class: c, className: className(c), truth: t,
    group: D.grouped ? w : "", prototype: D.grouped ? "" : w, maps: stored ? "1" : "0", prototypes: shown.map(s => s[0]).join(","), gradcam: sal ? "1" : "0"});
}

// --- the gallery --------------------------------------------------------------------------------
function buildGallery() {
  const gal = $("gallery"), weights = {};
  if (D.grouped) D.classHead.forEach(gs => gs.forEach((g, k) => g.protos.forEach(([p, wt]) => (weights[p] ||= []).push(`g${k}:${wt.toFixed(2)}`))));
  else D.classHead.forEach(ps => ps.forEach(([p, wt]) => (weights[p] = [`w ${wt.toFixed(2)}`])));
  gal.append(el("p", {cls: "note", text: "Source patches by class and scale (yellow: the high-activation box)" +
    (D.grouped ? "; greyed: unused by every group." : ".") + (D.patches.length ? "" : " No source patches were given.")}));
  D.classes.forEach((name, c) => {
    const mine = D.protos.map((p, k) => [p, k]).filter(([p]) => p.cls === c);
    if (!mine.length) return;
    const line = el("div", {cls: "scales"});
    [...new Set(mine.map(([p]) => p.scale))].sort((a, b) => a - b).forEach(s => {
      const row = el("div", {cls: "cards", "data-class": c, "data-scale": s});
      for (const [p, k] of mine.filter(([q]) => q.scale === s)) {
        row.append(el("div", {cls: "card" + (p.used ? "" : " unused"), "data-prototype": k}, patch(k),
          el("div", {text: p.name}), p.used ? el("div", {text: (weights[k] || []).join(" ")}) : el("div", {cls: "tag", text: "unused"})));
      }
      line.append(el("div", {cls: "scale"}, el("h3", {text: D.scaleLabels[s] ?? `scale ${s}`}), row));
    });
    gal.append(el("h2", {}, swatch(c), " " + name), line);
  });
}
function tab(name) {
  $("explore").hidden = name !== "explore"; $("gallery").hidden = name !== "gallery";
  $("tab-explore").classList.toggle("on", name === "explore"); $("tab-gallery").classList.toggle("on", name === "gallery");
}

// --- start --------------------------------------------------------------------------------------
D.images.forEach((r, i) => { const t = el("img", {src: r.png, alt: r.id, title: r.id}); t.onclick = () => openImage(i); $("strip").append(t); });
$("view").addEventListener("click", e => { if (cur) showPixel(...pixelOf(e)); });
$("overlay").onchange = drawView; $("opacity").oninput = drawView;
$("tab-explore").onclick = () => tab("explore"); $("tab-gallery").onclick = () => tab("gallery");
buildGallery();
// Test hook: #image=i&x=..&y=.. opens image i and clicks that label pixel through the listener above.
const h = new URLSearchParams(location.hash.slice(1));
if (["pred", "truth", "win", "none"].includes(h.get("overlay"))) $("overlay").value = h.get("overlay");
if (D.images.length) openImage(Math.max(0, Math.min(D.images.length - 1, +(h.get("image") || 0))));
if (h.has("x") && h.has("y") && cur) {
  const r = $("view").getBoundingClientRect(), sx = r.width / cur.W, sy = r.height / cur.H;
  const x = Math.max(0, Math.min(cur.W - 1, +h.get("x"))), y = Math.max(0, Math.min(cur.H - 1, +h.get("y")));
  $("view").dispatchEvent(new MouseEvent("click", {bubbles: true, clientX: Math.ceil(r.left + x * sx), clientY: Math.ceil(r.top + y * sy)}));
}
if (h.get("view") === "gallery") tab("gallery");
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""
