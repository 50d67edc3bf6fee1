// The review page of the medicraft MONAI Label app (served at /review/ by the app's own server).
// Plain JavaScript, no build step, nothing fetched from the network. MONAI Label's own endpoints are used where they
// exist (next image, image bytes and info, verdicts as labels with tag "review", synthesize); the page's routes live
// under /review/api/ (see medicraft_monai/label/lib/page.py). Every error the server answers is shown on the page.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const REVIEWER_KEY = "medicraft.review.reviewer";
  const BLINDED_KEY = "medicraft.review.blinded";
  const ZOOMS = [1, 2, 4];

  const state = {
    config: null,
    view: "review",
    current: null, // {id, info, reviewed: verdict or null}
    verdict: null,
    tags: new Set(),
    undo: [], // image ids this page submitted a verdict for, last on top
    skipped: new Set(), // image ids passed over with N before a verdict (not served to this page again)
    zoom: 0,
    trial: null, // {token, classes}
    trialAnswer: null,
    trialClass: null,
    trialsAnswered: 0,
    busy: false,
  };

  // ------------------------------------------------------------------------------------------------- helpers
  function reviewer() {
    return $("#reviewer").value.trim();
  }

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = !message;
  }

  function status(message) {
    $("#status").textContent = message || "";
  }

  function detailText(detail) {
    if (detail == null) return "";
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => (d && d.msg ? `${(d.loc || []).join(".")}: ${d.msg}` : JSON.stringify(d))).join("; ");
    return JSON.stringify(detail);
  }

  // fetch() that throws (and shows) the server's own reason on any non-2xx answer
  async function api(method, url, body) {
    const init = { method, headers: {} };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      showError(`The server cannot be reached (${err.message}).`);
      throw err;
    }
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const data = type.includes("json") ? await response.json() : await response.text();
        detail = detailText(data && data.detail !== undefined ? data.detail : data) || detail;
      } catch (_) {
        /* keep the status text */
      }
      const err = new Error(`${response.status}: ${detail}`);
      err.status = response.status;
      showError(`Server error ${response.status}: ${detail}`);
      throw err;
    }
    if (type.includes("json")) return response.json();
    return response.blob();
  }

  async function imageInto(img, url) {
    const blob = await api("GET", url);
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    const objectUrl = URL.createObjectURL(blob); // the file name never appears in the page
    img.dataset.url = objectUrl;
    await new Promise((resolve) => {
      img.onload = resolve;
      img.onerror = resolve;
      img.src = objectUrl;
    });
  }

  function pct(value) {
    return value == null ? "n/a" : `${(100 * value).toFixed(1)}%`;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -------------------------------------------------------------------------------------------------- set-up
  async function init() {
    $("#reviewer").value = localStorage.getItem(REVIEWER_KEY) || "";
    const blinded = localStorage.getItem(BLINDED_KEY);
    $("#blinded").checked = blinded === null ? true : blinded === "true";
    state.config = await api("GET", "api/config");
    const cfg = state.config;
    cfg.classes.forEach((c) => {
      $("#class-filter").appendChild(el("option", { value: c }, c));
      $("#synth-class").appendChild(el("option", { value: c }, c));
    });
    $("#synth-count").max = String(cfg.max_count);
    cfg.anomaly_tags.forEach((tag, i) => {
      const label = el("label", { class: "tag" });
      const box = el("input", { type: "checkbox", id: `tag-${tag}`, "data-tag": tag });
      box.addEventListener("change", () => toggleTag(tag, box.checked));
      label.appendChild(box);
      label.appendChild(document.createTextNode(` ${tag.replace(/_/g, " ")} `));
      label.appendChild(el("kbd", {}, String(i + 1)));
      $("#tags").appendChild(label);
    });
    $("#tab-turing").disabled = !cfg.turing.available;
    $("#tab-turing").title = cfg.turing.available ? "" : "needs --conf turing_datalist on the server";
    bindEvents();
    document.body.dataset.ready = "true";
    await refreshProgress();
    if (reviewer()) await nextImage();
    else status("Enter your name to start.");
  }

  function bindEvents() {
    $("#reviewer").addEventListener("change", async () => {
      localStorage.setItem(REVIEWER_KEY, reviewer());
      if (reviewer() && !state.current && state.view === "review") await nextImage();
    });
    $("#blinded").addEventListener("change", () => {
      localStorage.setItem(BLINDED_KEY, String($("#blinded").checked));
      renderCandidate();
    });
    $("#class-filter").addEventListener("change", () => nextImage());
    $("#accept").addEventListener("click", () => setVerdict("accept"));
    $("#reject").addEventListener("click", () => setVerdict("reject"));
    $("#verdict-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      submitVerdict();
    });
    $("#undo").addEventListener("click", () => undo());
    $("#next").addEventListener("click", () => skipOrNext());
    $("#synth-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      synthesize();
    });
    $("#tab-review").addEventListener("click", () => setView("review"));
    $("#tab-turing").addEventListener("click", () => setView("turing"));
    $("#help-button").addEventListener("click", () => toggleHelp());
    $("#answer-real").addEventListener("click", () => setAnswer("real"));
    $("#answer-synthetic").addEventListener("click", () => setAnswer("synthetic"));
    $("#trial-submit").addEventListener("click", () => submitAnswer());
    document.addEventListener("keydown", onKey);
    // a clicked button gives the focus back, so the keyboard shortcuts (Enter above all) keep their meaning
    document.addEventListener("click", (ev) => {
      const button = ev.target.closest && ev.target.closest("button");
      if (button) button.blur();
    });
  }

  // --------------------------------------------------------------------------------------------------- review
  async function nextImage() {
    if (!reviewer()) {
      status("Enter your name to start.");
      return;
    }
    showError("");
    const params = { client_id: reviewer(), skip: Array.from(state.skipped) };
    if ($("#class-filter").value) params.class = $("#class-filter").value;
    const res = await api("POST", "../activelearning/review", params);
    resetForm();
    if (!res || !res.id) {
      state.current = null;
      $("#candidate").dataset.state = "empty";
      $("#candidate-img").removeAttribute("src");
      $("#references").replaceChildren();
      status("No unreviewed synthetic image is left: make more with the form on the right.");
      renderCandidate();
      return;
    }
    state.current = { id: res.id, info: res, reviewed: null };
    await imageInto($("#candidate-img"), `../datastore/image?image=${encodeURIComponent(res.id)}`);
    $("#candidate").dataset.state = "judging";
    status("Judge this image: A accept, R reject, 1-7 anomalies, Enter submit.");
    renderCandidate();
  }

  async function skipOrNext() {
    if (state.current && !state.current.reviewed) state.skipped.add(state.current.id); // passed over: not served again
    await nextImage();
  }

  function resetForm() {
    state.verdict = null;
    state.tags.clear();
    $("#comment").value = "";
    document.querySelectorAll("#tags input").forEach((box) => (box.checked = false));
    document.querySelectorAll(".verdict").forEach((b) => b.classList.remove("selected"));
    $("#after").hidden = true;
  }

  function revealed() {
    return !$("#blinded").checked || (state.current && state.current.reviewed);
  }

  function renderCandidate() {
    const cur = state.current;
    const meta = $("#candidate-meta");
    const show = cur && revealed();
    meta.hidden = !show;
    $("#references-box").hidden = !show;
    if (!cur) {
      $("#candidate-label").textContent = "No image";
      return;
    }
    const info = cur.info || {};
    const prov = info.provenance || {};
    $("#candidate-label").textContent = show ? `Synthetic B-scan: ${info.class_name}` : "Synthetic B-scan (blinded)";
    if (show && !cur.referencesShown) {
      cur.referencesShown = true; // in blinded review: asked for only after the verdict
      loadReferences().catch(() => {});
    }
    if (show) {
      meta.textContent = `class ${info.class_name} · seed ${prov.seed} · model ${String(prov.model_sha256 || "").slice(0, 12)} · ${prov.steps} steps · guidance ${prov.guidance_scale}`;
      $("#candidate").dataset.image = cur.id;
    } else {
      meta.textContent = "";
      delete $("#candidate").dataset.image;
    }
  }

  function loadReferences() {
    state.referencesLoading = fetchReferences();
    return state.referencesLoading;
  }

  async function fetchReferences() {
    const cur = state.current;
    const box = $("#references");
    box.replaceChildren();
    if (!cur || !cur.info.class_name) return;
    const ref = await api("GET", `api/references?class=${encodeURIComponent(cur.info.class_name)}&image=${encodeURIComponent(cur.id)}&n=3`);
    $("#references-note").textContent = ref.images.length
      ? ""
      : `No real ${ref.class} B-scan in the studies folder (real images need class_name in their info).`;
    for (const id of ref.images) {
      const fig = el("figure", { class: "reference" });
      const img = el("img", { alt: `real ${ref.class} B-scan` });
      fig.appendChild(img);
      fig.appendChild(el("figcaption", {}, `real · ${ref.class}`));
      box.appendChild(fig);
      await imageInto(img, `api/image?image=${encodeURIComponent(id)}`);
    }
  }

  function setVerdict(verdict) {
    if (!state.current || state.current.reviewed) return;
    state.verdict = verdict;
    document.querySelectorAll(".verdict").forEach((b) => b.classList.toggle("selected", b.dataset.verdict === verdict));
  }

  function toggleTag(tag, on) {
    if (on === undefined) on = !state.tags.has(tag);
    if (on) state.tags.add(tag);
    else state.tags.delete(tag);
    const box = document.getElementById(`tag-${tag}`);
    if (box) box.checked = on;
  }

  async function submitVerdict() {
    const cur = state.current;
    if (!cur || cur.reviewed || state.busy) return;
    if (!state.verdict) {
      showError("Choose accept (A) or reject (R) first.");
      return;
    }
    const payload = {
      verdict: state.verdict,
      anomalies: state.config.anomaly_tags.filter((t) => state.tags.has(t)),
      comment: $("#comment").value,
      reviewer: reviewer(), // the server checks it (an empty name answers 422)
    };
    const form = new FormData();
    form.append("label", new Blob([JSON.stringify(payload)], { type: "application/json" }), "verdict.json");
    form.append("params", "{}");
    state.busy = true;
    try {
      await api("PUT", `../datastore/label?image=${encodeURIComponent(cur.id)}&tag=review`, form);
    } catch (_) {
      return; // shown by api()
    } finally {
      state.busy = false;
    }
    showError("");
    cur.reviewed = payload;
    state.undo.push(cur.id);
    await showAfter();
    await refreshProgress();
    $("#candidate").dataset.state = "judged"; // set last: the page is complete
    status("Verdict saved. N: next image, U: undo.");
  }

  async function showAfter() {
    const cur = state.current;
    const info = await api("GET", `../datastore/image/info?image=${encodeURIComponent(cur.id)}`);
    cur.info = { ...cur.info, ...info };
    renderCandidate();
    await state.referencesLoading;
    const v = cur.reviewed;
    $("#after-verdict").textContent = `${v.verdict}${v.anomalies.length ? ` (${v.anomalies.join(", ")})` : ""}${v.comment ? `: "${v.comment.trim()}"` : ""} · image status ${info.review_status}`;
    const prov = info.provenance || {};
    const dl = $("#provenance");
    dl.replaceChildren();
    [
      ["image", cur.id],
      ["class", info.class_name],
      ["seed", prov.seed],
      ["model", prov.model_sha256],
      ["sampler", `${prov.sampler}, ${prov.steps} steps, guidance ${prov.guidance_scale}`],
      ["made", prov.created],
    ].forEach(([k, v2]) => {
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(el("dd", {}, v2 == null ? "" : String(v2)));
    });
    renderChecks(info.qa);
    $("#after").hidden = false;
  }

  function renderChecks(qa) {
    const box = $("#checks");
    box.replaceChildren();
    if (!qa) {
      box.dataset.state = "none";
      box.appendChild(el("p", { class: "note" }, "not scored yet"));
      return;
    }
    box.dataset.state = qa.passed ? "passed" : "failed";
    const mark = (ok) => (ok === true ? "passed" : ok === false ? "failed" : "not applicable");
    // [name, text, ok (true / false / null: not applicable)]
    const rows = [["overall", qa.passed ? "all checks passed" : "at least one check failed", Boolean(qa.passed)]];
    if (qa.anatomy) {
      const f = qa.anatomy.failures || [];
      rows.push(["anatomy", `${mark(qa.anatomy.passed)}${f.length ? ` (${f.join(", ")})` : ""}`, qa.anatomy.passed]);
    }
    if (qa.classifier) {
      const c = qa.classifier;
      rows.push(["classifier", `${c.predicted} (${pct(c.confidence)}) · ${c.agrees ? "agrees" : "disagrees"} with the intended class`, c.agrees]);
    } else rows.push(["classifier", "no classifier", null]);
    if (qa.nearest_real) {
      const n = qa.nearest_real;
      const thr = n.threshold == null ? "no threshold" : `threshold ${Number(n.threshold).toFixed(4)}`;
      const mem = n.memorised == null ? "" : n.memorised ? " · MEMORISED (copy of a real image?)" : " · not a copy";
      rows.push(["nearest real image", `distance ${Number(n.distance).toFixed(4)} (${thr})${mem}`, n.memorised == null ? null : !n.memorised]);
    } else rows.push(["nearest real image", "not computed", null]);
    if (qa.error) rows.push(["error", qa.error, false]);
    const table = el("table", { id: "checks-table" });
    rows.forEach(([k, v, ok]) => {
      const tr = el("tr", { "data-check": k, "data-ok": ok == null ? "n/a" : String(ok) });
      tr.appendChild(el("th", {}, k));
      tr.appendChild(el("td", {}, v));
      table.appendChild(tr);
    });
    box.appendChild(table);
  }

  async function undo() {
    const id = state.undo[state.undo.length - 1];
    if (!id) {
      showError("Nothing to undo: you have not submitted a verdict on this page.");
      return;
    }
    try {
      await api("DELETE", `api/verdict?image=${encodeURIComponent(id)}&reviewer=${encodeURIComponent(reviewer())}`);
    } catch (_) {
      return;
    }
    state.undo.pop();
    showError("");
    // judge the same image again
    const info = await api("GET", `../datastore/image/info?image=${encodeURIComponent(id)}`);
    resetForm();
    state.current = { id, info, reviewed: null };
    await imageInto($("#candidate-img"), `../datastore/image?image=${encodeURIComponent(id)}`);
    $("#candidate").dataset.state = "judging";
    renderCandidate();
    await state.referencesLoading;
    status("Verdict withdrawn: judge this image again.");
    await refreshProgress();
  }

  function zoom() {
    state.zoom = (state.zoom + 1) % ZOOMS.length;
    const z = ZOOMS[state.zoom];
    $("#candidate-img").style.width = `${100 * z}%`;
    $("#zoom-box").dataset.zoom = String(z);
    $("#zoom-level").firstChild.textContent = `zoom ${z}x `;
  }

  // -------------------------------------------------------------------------------------------------- progress
  async function refreshProgress() {
    let p;
    try {
      p = await api("GET", "api/progress");
    } catch (_) {
      return;
    }
    $("#progress-total").textContent = `${p.reviewed} reviewed, ${p.unreviewed} waiting; accepted ${p.accepted} (${pct(p.acceptance_rate)})`;
    const classes = $("#progress-classes tbody");
    classes.replaceChildren();
    Object.entries(p.per_class).forEach(([name, c]) => {
      const tr = el("tr", { "data-class": name });
      [name, c.waiting, c.reviewed, c.accepted, pct(c.acceptance_rate)].forEach((v) => tr.appendChild(el("td", {}, String(v))));
      classes.appendChild(tr);
    });
    const tags = $("#progress-tags tbody");
    tags.replaceChildren();
    Object.entries(p.per_anomaly).forEach(([name, t]) => {
      const tr = el("tr", { "data-tag": name });
      [name, t.images, t.accepted, pct(t.acceptance_rate)].forEach((v) => tr.appendChild(el("td", {}, String(v))));
      tags.appendChild(tr);
    });
    $("#progress").dataset.reviewed = String(p.reviewed);
  }

  // ------------------------------------------------------------------------------------------------ synthesize
  async function synthesize() {
    const params = { class: $("#synth-class").value, count: Number($("#synth-count").value) };
    const form = new FormData();
    form.append("params", JSON.stringify(params));
    $("#synth-submit").disabled = true;
    $("#synth-result").textContent = `making ${params.count} ${params.class} image(s)...`;
    let res;
    try {
      res = await api("POST", "../infer/synthesize?image=new&output=json", form);
    } catch (err) {
      $("#synth-result").textContent = "";
      return;
    } finally {
      $("#synth-submit").disabled = false;
    }
    showError("");
    $("#synth-result").textContent = `made ${res.images.length} ${params.class} image(s) (seeds ${res.seeds.join(", ")})`;
    $("#synth-result").dataset.count = String(res.images.length);
    await refreshProgress();
    if (!state.current && state.view === "review") await nextImage();
  }

  // ---------------------------------------------------------------------------------------- blinded reading
  async function setView(view) {
    if (view === "turing" && !state.config.turing.available) {
      showError("The blinded reading needs real held-out images: start the server with --conf turing_datalist.");
      return;
    }
    state.view = view;
    $("#review-view").hidden = view !== "review";
    $("#turing-view").hidden = view !== "turing";
    $("#tab-review").classList.toggle("active", view === "review");
    $("#tab-turing").classList.toggle("active", view === "turing");
    status(view === "turing" ? "Blinded reading: R real, S synthetic, 1-9 class (optional), Enter submit." : "");
    if (view === "turing" && !state.trial) await nextTrial();
    if (view === "review" && !state.current) await nextImage();
  }

  async function nextTrial() {
    state.trial = null;
    state.trialAnswer = null;
    state.trialClass = null;
    document.querySelectorAll(".answer").forEach((b) => b.classList.remove("selected"));
    $("#trial").dataset.state = "empty";
    if (!reviewer()) {
      showError("Enter your name first: answers are recorded per reader.");
      return;
    }
    const trial = await api("POST", "api/turing/next", { reader: reviewer() });
    state.trial = trial;
    const box = $("#trial-classes");
    box.querySelectorAll("label").forEach((n) => n.remove());
    trial.classes.forEach((c, i) => {
      const label = el("label", { class: "tag" });
      const radio = el("input", { type: "radio", name: "trial-class", id: `trial-class-${c}`, value: c });
      radio.addEventListener("change", () => (state.trialClass = c));
      label.appendChild(radio);
      label.appendChild(document.createTextNode(` ${c} `));
      label.appendChild(el("kbd", {}, String(i + 1)));
      box.appendChild(label);
    });
    await imageInto($("#trial-img"), trial.image);
    $("#trial").dataset.state = "ready";
    showError("");
  }

  function setAnswer(answer) {
    if (!state.trial) return;
    state.trialAnswer = answer;
    document.querySelectorAll(".answer").forEach((b) => b.classList.toggle("selected", b.dataset.answer === answer));
  }

  function setTrialClass(index) {
    if (!state.trial || index >= state.trial.classes.length) return;
    const c = state.trial.classes[index];
    state.trialClass = state.trialClass === c ? null : c;
    state.trial.classes.forEach((name) => (document.getElementById(`trial-class-${name}`).checked = name === state.trialClass));
  }

  async function submitAnswer() {
    if (!state.trial || state.busy) return;
    if (!state.trialAnswer) {
      showError("Answer real (R) or synthetic (S) first.");
      return;
    }
    state.busy = true;
    let res;
    try {
      res = await api("POST", "api/turing/answer", {
        token: state.trial.token,
        reader: reviewer(),
        answer: state.trialAnswer,
        class: state.trialClass,
      });
    } catch (_) {
      return;
    } finally {
      state.busy = false;
    }
    state.trialsAnswered = res.answers;
    $("#trial-count").textContent = `${res.answers} answer(s) recorded for ${reviewer()}`;
    $("#trial-count").dataset.count = String(res.answers);
    await nextTrial();
  }

  // ---------------------------------------------------------------------------------------------- keyboard
  function toggleHelp(force) {
    const help = $("#help");
    help.hidden = force === undefined ? !help.hidden : !force;
  }

  async function onKey(ev) {
    const target = ev.target;
    const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && ["text", "number"].includes(target.type)));
    if (ev.key === "Escape") {
      toggleHelp(false);
      if (typing) target.blur();
      return;
    }
    if (target && (target.tagName === "SELECT" || (target.tagName === "BUTTON" && ev.key === "Enter"))) return;
    if (typing) {
      if (target.id === "comment" && ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        target.blur();
        await submitVerdict();
      } else if (target.id === "reviewer" && ev.key === "Enter") {
        ev.preventDefault();
        target.blur();
      }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (key === "?") return toggleHelp();
    if (key === "v") return setView("review");
    if (key === "t") return setView("turing");
    if (key === "b") {
      $("#blinded").checked = !$("#blinded").checked;
      $("#blinded").dispatchEvent(new Event("change"));
      return;
    }
    if (state.view === "turing") {
      if (key === "r") setAnswer("real");
      else if (key === "s") setAnswer("synthetic");
      else if (/^[1-9]$/.test(key)) setTrialClass(Number(key) - 1);
      else if (key === "Enter") {
        ev.preventDefault();
        await submitAnswer();
      }
      return;
    }
    if (key === "a") setVerdict("accept");
    else if (key === "r") setVerdict("reject");
    else if (/^[1-9]$/.test(key)) {
      const tag = state.config.anomaly_tags[Number(key) - 1];
      if (tag && state.current && !state.current.reviewed) toggleTag(tag);
    } else if (key === "c") {
      ev.preventDefault();
      $("#comment").focus();
    } else if (key === "Enter") {
      ev.preventDefault();
      await submitVerdict();
    } else if (key === "u") await undo();
    else if (key === "z") zoom();
    else if (key === "n") {
      await skipOrNext();
    }
  }

  window.addEventListener("DOMContentLoaded", () => {
    init().catch((err) => showError(`The page could not start: ${err.message}`));
  });
})();
