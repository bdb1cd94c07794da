// skretrieval search page: choose or drop an image, optionally drag a box on
// it, and show the top-k results of POST /search.  No dependencies.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file"), dropzone = $("dropzone"), stage = $("stage");
  const preview = $("preview"), overlay = $("overlay"), kInput = $("k");
  const boxText = $("box"), clearBox = $("clear-box"), searchButton = $("search");
  const status = $("status"), results = $("results"), info = $("info");
  let file = null, box = null, drag = null, previewUrl = null, requestNo = 0;

  function setStatus(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  fetch("/health").then((r) => r.json()).then((h) => {
    info.textContent = `${h.n_images} images, ${h.dimension} dimensions, skretrieval ${h.version}`;
    kInput.max = h.max_k;
  }).catch(() => { info.textContent = "server unreachable"; });

  // -- choosing the image --------------------------------------------------
  function useFile(f) {
    if (!f) return;
    file = f;
    box = null;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(f);
    preview.src = previewUrl;
    stage.hidden = false;
    searchButton.disabled = false;
    showBox();
    search();
  }
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  ["dragenter", "dragover"].forEach((t) => dropzone.addEventListener(t, (e) => {
    e.preventDefault(); dropzone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => dropzone.addEventListener(t, (e) => {
    e.preventDefault(); dropzone.classList.remove("over");
  }));
  dropzone.addEventListener("drop", (e) => useFile(e.dataTransfer.files[0]));
  preview.addEventListener("load", () => {
    overlay.width = preview.clientWidth;
    overlay.height = preview.clientHeight;
    drawBox();
  });
  preview.addEventListener("error", () => setStatus("the browser cannot show this file " +
    "(the server may still read it)", true));

  // -- the box, drawn in display pixels, sent in image pixels ---------------
  function scale() { return preview.naturalWidth / (preview.clientWidth || 1); }
  function position(e) {
    const r = overlay.getBoundingClientRect();
    return [Math.min(Math.max(e.clientX - r.left, 0), r.width),
            Math.min(Math.max(e.clientY - r.top, 0), r.height)];
  }
  function drawBox() {
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const b = drag ? drag.display : (box && box.map((v) => v / scale()));
    if (!b) return;
    ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
    ctx.fillRect(0, 0, overlay.width, overlay.height);
    ctx.clearRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
    ctx.strokeStyle = "#ffeb3b";
    ctx.lineWidth = 2;
    ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
  }
  function showBox() {
    boxText.textContent = box ? `region x1,y1,x2,y2 = ${box.join(", ")} (image pixels)`
                              : "whole image (drag on it to select a region)";
    clearBox.disabled = !box;
    drawBox();
  }
  overlay.addEventListener("mousedown", (e) => {
    const [x, y] = position(e);
    drag = { x, y, display: null };
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const [x, y] = position(e);
    drag.display = [Math.min(drag.x, x), Math.min(drag.y, y),
                    Math.max(drag.x, x), Math.max(drag.y, y)];
    drawBox();
  });
  window.addEventListener("mouseup", () => {
    if (!drag) return;
    const d = drag.display;
    drag = null;
    if (d && d[2] - d[0] >= 4 && d[3] - d[1] >= 4) {
      const s = scale();
      box = d.map((v) => Math.round(v * s));
      box[2] = Math.min(box[2], preview.naturalWidth);
      box[3] = Math.min(box[3], preview.naturalHeight);
      showBox();
      search();
    } else {
      drawBox();
    }
  });
  clearBox.addEventListener("click", () => { box = null; showBox(); search(); });

  // -- searching -----------------------------------------------------------
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); search(); });

  async function search() {
    if (!file) return;
    const mine = ++requestNo;
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("k", kInput.value || "10");
    if (box) form.append("box", box.join(","));
    results.dataset.state = "loading";
    setStatus("searching\u2026");
    const t0 = performance.now();
    let body;
    try {
      const response = await fetch("/search", { method: "POST", body: form });
      body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    } catch (err) {
      if (mine !== requestNo) return;
      results.dataset.state = "error";
      results.replaceChildren();
      setStatus(`error: ${err.message}`, true);
      return;
    }
    if (mine !== requestNo) return;  // a newer search is under way
    render(body.results);
    setStatus(`${body.results.length} results of ${body.n_images} images in ` +
              `${Math.round(performance.now() - t0)} ms`);
    results.dataset.state = "done";
  }

  function render(items) {
    const nodes = items.map((hit) => {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "result");
      li.dataset.rank = hit.rank;
      li.dataset.id = hit.id;
      li.dataset.score = hit.score;
      li.id = `result-${hit.rank}`;
      if (hit.thumbnail) {
        const img = document.createElement("img");
        img.src = hit.thumbnail;
        img.alt = hit.name;
        img.loading = "lazy";
        li.append(img);
      }
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${hit.rank}`;
      const score = document.createElement("span");
      score.className = "score";
      score.setAttribute("data-testid", "result-score");
      score.textContent = hit.score.toFixed(4);
      const id = document.createElement("span");
      id.className = "id";
      id.setAttribute("data-testid", "result-id");
      id.textContent = hit.id;
      li.append(rank, score, id);
      return li;
    });
    results.replaceChildren(...nodes);
  }
})();
