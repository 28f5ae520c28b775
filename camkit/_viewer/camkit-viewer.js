// The camkit map store viewer: reads window.CAMKIT_VIEWER (data.js), draws a page at a time.
// No framework, no network: every file it uses lies beside index.html.
"use strict";

(function () {
  const data = window.CAMKIT_VIEWER;
  const columns = data.columns;
  const count = columns.index.length;
  const sheets = data.sheets;
  const PAGE = 120;
  const DETAIL = 2.5;  // the detail view's thumbnails, times their size in the grid
  const state = { order: [], page: 0, current: -1, drawn: 0 };
  const $ = (id) => document.getElementById(id);

  function className(value) {
    if (value < 0) return "-";
    return data.classes && data.classes[value] !== undefined ? data.classes[value] : String(value);
  }

  // A thumbnail: the sample's cell of a sprite sheet, drawn at `scale` times its size.
  function sprite(element, kind, position, scale) {
    const per = sheets.cells * sheets.cells;
    const sheet = Math.floor(position / per);
    const cell = position % per;
    const row = Math.floor(cell / sheets.cells);
    const col = cell % sheets.cells;
    const size = sheets.thumb * scale;
    element.style.backgroundImage = `url("sheets/${kind}-${String(sheet).padStart(4, "0")}.jpg")`;
    element.style.backgroundPosition = `${-col * size}px ${-row * size}px`;
    element.style.backgroundSize = `${sheets.cells * size}px auto`;
    element.style.width = `${size}px`;
    element.style.height = `${size}px`;
  }

  // One sprite layer alone in `container` (the image, or the other store's map).
  function single(container, kind, position, scale) {
    const layer = document.createElement("div");
    layer.className = `layer ${kind === "image" ? "image" : "map"}`;
    sprite(layer, kind, position, scale);
    container.replaceChildren(layer);
    container.style.width = `${sheets.thumb * scale}px`;
    container.style.height = `${sheets.thumb * scale}px`;
  }

  function layers(container, position, scale, withImage) {
    container.replaceChildren();
    const kinds = [];
    if (withImage && sheets.kinds.includes("image")) kinds.push("image");
    kinds.push("map");
    for (const kind of kinds) {
      const layer = document.createElement("div");
      layer.className = `layer ${kind}`;
      sprite(layer, kind, position, scale);
      container.appendChild(layer);
    }
    container.style.width = `${sheets.thumb * scale}px`;
    container.style.height = `${sheets.thumb * scale}px`;
    return container;
  }

  // The sample positions the controls select, in the order they ask for (ties: by index).
  function selection() {
    const target = $("filter-target").value;
    const prediction = $("filter-prediction").value;
    const correct = $("filter-correct").value;
    const source = $("filter-source").value.trim().toLowerCase();
    const kept = [];
    for (let i = 0; i < count; i++) {
      if (target !== "" && columns.target[i] !== Number(target)) continue;
      if (prediction !== "" && columns.prediction[i] !== Number(prediction)) continue;
      const right = columns.target[i] === columns.prediction[i];
      if (correct === "correct" && !right) continue;
      if (correct === "incorrect" && right) continue;
      if (source && !(columns.source && columns.source[i].toLowerCase().includes(source))) continue;
      kept.push(i);
    }
    const sort = $("sort").value;
    const keys = {
      "index": (i) => columns.index[i],
      "score-desc": (i) => -columns.score[i],
      "score-asc": (i) => columns.score[i],
      "target": (i) => columns.target[i],
      "prediction": (i) => columns.prediction[i],
      "offset-desc": (i) => -columns.offset[i],
      "agreement-asc": (i) => columns.agreement[i],
      "inside-asc": (i) => columns.inside[i],
    };
    const key = keys[sort];
    kept.sort((a, b) => key(a) - key(b) || columns.index[a] - columns.index[b]);
    return kept;
  }

  function refresh(resetPage) {
    state.order = selection();
    if (resetPage) state.page = 0;
    draw();
  }

  function draw() {
    const total = state.order.length;
    const pages = Math.max(1, Math.ceil(total / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * PAGE;
    const shown = state.order.slice(start, start + PAGE);
    $("showing").textContent = total
      ? `${start + 1}–${start + shown.length} of ${total} (page ${state.page + 1} of ${pages})`
      : "no sample matches";
    $("previous").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    const grid = $("grid");
    const items = [];
    const draws = [];
    const page = ++state.drawn;
    for (const position of shown) {
      const item = document.createElement("button");
      item.type = "button";
      item.className = "item";
      item.setAttribute("role", "listitem");
      item.dataset.index = String(columns.index[position]);
      item.style.width = `${sheets.thumb + 10}px`;
      const right = columns.target[position] === columns.prediction[position];
      item.classList.add(right ? "right" : "wrong");
      const canvas = document.createElement("canvas");
      canvas.width = sheets.thumb;
      canvas.height = sheets.thumb;
      canvas.className = "thumb";
      item.appendChild(canvas);
      drawThumb(canvas, position, draws);
      const caption = document.createElement("span");
      caption.className = "caption";
      caption.textContent = `#${columns.index[position]} ${className(columns.target[position])}` +
        `→${className(columns.prediction[position])} ${columns.score[position].toFixed(2)}`;
      caption.title = caption.textContent;
      item.appendChild(caption);
      item.addEventListener("click", () => open(position));
      items.push(item);
    }
    grid.replaceChildren(...items);
    grid.dataset.drawn = "";
    Promise.all(draws).then(() => {
      if (page !== state.drawn) return;
      grid.dataset.drawn = String(page);
      prefetch(state.order.slice(start + PAGE, start + 2 * PAGE));
    });
  }

  // Load and decode the sheets of the next page while the reader looks at this one.
  function prefetch(positions) {
    const kind = sheets.kinds.includes("overlay") ? "overlay" : "map";
    const per = sheets.cells * sheets.cells;
    const wanted = [...new Set(positions.map((position) => Math.floor(position / per)))];
    setTimeout(() => { for (const sheet of wanted) sheetImage(kind, sheet); }, 0);
  }

  // Sprite sheets as decoded bitmaps, each loaded and decoded once, then kept (drawing
  // from a bitmap copies pixels; drawing from an <img> may decode the whole sheet again).
  // At most KEPT are kept, the least recently used dropped first (and freed once no
  // drawing in progress holds it).
  const KEPT = 256;
  const loaded = new Map();
  function sheetImage(kind, sheet) {
    const name = `sheets/${kind}-${String(sheet).padStart(4, "0")}.jpg`;
    let bitmap = loaded.get(name);
    if (bitmap === undefined) {
      const image = new Image();
      image.src = name;
      bitmap = image.decode().then(() => createImageBitmap(image));
    }
    loaded.delete(name);
    loaded.set(name, bitmap);  // now the most recently used
    while (loaded.size > KEPT) loaded.delete(loaded.keys().next().value);
    return bitmap;
  }

  // A grid thumbnail on a canvas: the sample's overlay (its map over its image, blended
  // when the site was written: one sheet to decode per block of samples), or its map.
  function drawThumb(canvas, position, draws) {
    const per = sheets.cells * sheets.cells;
    const sheet = Math.floor(position / per);
    const cell = position % per;
    const x = (cell % sheets.cells) * sheets.thumb;
    const y = Math.floor(cell / sheets.cells) * sheets.thumb;
    const kind = sheets.kinds.includes("overlay") ? "overlay" : "map";
    const context = canvas.getContext("2d");
    draws.push(sheetImage(kind, sheet).then((image) => {
      context.drawImage(image, x, y, sheets.thumb, sheets.thumb, 0, 0, sheets.thumb, sheets.thumb);
    }));
  }

  function open(position) {
    state.current = position;
    const index = columns.index[position];
    $("detail-title").textContent = `Sample ${index}` +
      (columns.source ? ` — ${columns.source[position]}` : "");
    $("detail").dataset.index = String(index);
    const overlay = layers($("detail-overlay"), position, DETAIL, true);
    const opacity = Number($("opacity").value) / 100;
    for (const layer of overlay.querySelectorAll(".layer.map")) layer.style.opacity = String(opacity);
    const withImage = sheets.kinds.includes("image");
    $("detail-image-figure").hidden = !withImage;
    if (withImage) single($("detail-image"), "image", position, DETAIL);
    layers($("detail-map"), position, DETAIL, false);
    $("detail-map-caption").textContent = `${data.store.method} at ${data.store.layers.join(", ")}`;
    const hasOther = sheets.kinds.includes("other");
    $("detail-other-figure").hidden = !hasOther;
    if (hasOther) {
      single($("detail-other"), "other", position, DETAIL);
      $("detail-other-caption").textContent =
        `${data.other.method} at ${data.other.layers.join(", ")}`;
    }
    const rows = [
      ["index", index],
      ["source", columns.source ? columns.source[position] : "-"],
      ["class", className(columns.target[position])],
      ["predicted", className(columns.prediction[position])],
      ["score", columns.score[position]],
      ["map off-centre", columns.offset[position]],
    ];
    if (columns.agreement) rows.push(["agreement (Pearson r)", columns.agreement[position]]);
    if (columns.inside) rows.push(["map inside the object", columns.inside[position]]);
    const table = $("record");
    table.replaceChildren(...rows.map(([name, value]) => {
      const row = document.createElement("tr");
      const head = document.createElement("th");
      head.textContent = name;
      const cell = document.createElement("td");
      cell.textContent = String(value);
      cell.dataset.field = name;
      row.append(head, cell);
      return row;
    }));
    $("detail").hidden = false;
    $("close").focus();
  }

  function close() {
    $("detail").hidden = true;
    state.current = -1;
  }

  // The class table, in class order, or by "offset" (farthest first) or "inside" (least first).
  function classTable(order) {
    const rows = data.summary.classes.slice();
    if (order === "offset") rows.sort((a, b) => b.offset - a.offset || a.class - b.class);
    if (order === "inside") rows.sort((a, b) => a.inside - b.inside || a.class - b.class);
    const body = $("class-table").querySelector("tbody");
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.class = String(row.class);
      const cells = [className(row.class), row.count, row.accuracy.toFixed(3),
        row.score.toFixed(3), row.offset.toFixed(3)];
      if (columns.inside) cells.push(row.inside.toFixed(3));
      for (const value of cells) {
        const td = document.createElement("td");
        td.textContent = String(value);
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      const image = document.createElement("img");
      image.src = `classes/class-${row.class}.png`;
      image.alt = `mean map of class ${className(row.class)}`;
      image.loading = "lazy";
      td.appendChild(image);
      tr.appendChild(td);
      return tr;
    }));
  }

  function tab(name) {
    $("samples").hidden = name !== "samples";
    $("classes").hidden = name !== "classes";
    $("tab-samples").classList.toggle("active", name === "samples");
    $("tab-classes").classList.toggle("active", name === "classes");
  }

  function options(select, values) {
    for (const value of values) {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = className(value);
      select.appendChild(option);
    }
  }

  function start() {
    document.title = `camkit viewer — ${data.title}`;
    $("title").textContent = data.title;
    const about = [`${count} samples`, `${data.store.method} at ${data.store.layers.join(", ")}`];
    if (!data.store.complete) about.push("the store is incomplete");
    if (data.other) about.push(`compared with ${data.other.method} at ${data.other.layers.join(", ")}`);
    $("about").textContent = about.join(" · ");
    options($("filter-target"), [...new Set(columns.target)].sort((a, b) => a - b));
    options($("filter-prediction"), [...new Set(columns.prediction)].sort((a, b) => a - b));
    if (!columns.agreement) $("sort").querySelector('option[value="agreement-asc"]').remove();
    if (!columns.inside) {
      $("sort").querySelector('option[value="inside-asc"]').remove();
      $("class-table").querySelector("th.inside").remove();
    }
    if (!columns.source) $("filter-source").closest("label").hidden = true;
    for (const id of ["sort", "filter-target", "filter-prediction", "filter-correct"]) {
      $(id).addEventListener("change", () => refresh(true));
    }
    $("filter-source").addEventListener("input", () => refresh(true));
    $("controls").addEventListener("submit", (event) => event.preventDefault());
    $("previous").addEventListener("click", () => { state.page -= 1; draw(); });
    $("next").addEventListener("click", () => { state.page += 1; draw(); });
    $("close").addEventListener("click", close);
    $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) close(); });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") close(); });
    $("opacity").addEventListener("input", () => {
      const opacity = Number($("opacity").value) / 100;
      for (const layer of $("detail-overlay").querySelectorAll(".layer.map")) {
        layer.style.opacity = String(opacity);
      }
    });
    $("tab-samples").addEventListener("click", () => tab("samples"));
    $("tab-classes").addEventListener("click", () => tab("classes"));
    $("sort-classes").addEventListener("click", () => classTable("offset"));
    if (columns.inside) $("sort-classes-inside").addEventListener("click", () => classTable("inside"));
    classTable("class");
    refresh(true);
    document.body.dataset.ready = "true";
  }

  start();
})();
