// The IAMA playground: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every call goes to this server's /v1 API with the key the key form stored (a bearer token).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let limits = { max_budget: 16, max_tokens: 256 };

function apiKey() {
  const c = document.cookie.split("; ").find((x) => x.startsWith("iama_key="));
  return c ? decodeURIComponent(c.slice("iama_key=".length)) : "";
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(`/v1${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = data.error || {};
    const where = err.param ? ` (${err.param})` : "";
    throw new Error(`${response.status}: ${err.message || response.statusText}${where}`);
  }
  return data;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits = 3) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  // small scores keep their significant digits (a length reward's differences can be 1e-4)
  return x !== 0 && Math.abs(x) < 0.01 ? x.toExponential(2) : x.toFixed(digits);
}

// ---------------------------------------------------------------- controls

function addRewardSlider(reward, weight) {
  const row = el("div", { class: "reward" });
  const id = `weight-${reward.name}`;
  const label = el("label", { for: id }, reward.name);
  const slider = el("input", {
    id, type: "range", min: "-1", max: "2", step: "0.05", value: String(weight),
    "data-testid": id, "data-reward": reward.name,
  });
  const out = el("output", { for: id, "data-testid": `${id}-value` }, fmt(weight, 2));
  slider.addEventListener("input", () => { out.textContent = fmt(Number(slider.value), 2); });
  row.append(label, slider, out, el("div", { class: "desc" }, reward.description || reward.type));
  $("rewards").append(row);
}

let rubricCount = 0;

// A rubric: a name, its text (what the judge reads) and its weight, sent as `rubrics` and
// weighted in `reward_weights` under its name.
function addRubric(name = `rubric${rubricCount + 1}`, text = "", weight = 1) {
  const k = ++rubricCount;
  const row = el("div", { class: "rubric", "data-testid": `rubric-${k}` });
  const nameInput = el("input", { class: "rubric-name", "data-testid": `rubric-${k}-name`, value: name, "aria-label": "rubric name" });
  const textArea = el("textarea", { class: "rubric-text", "data-testid": `rubric-${k}-text`, rows: "2",
    placeholder: "e.g. answers as you would to a ten-year-old", "aria-label": "rubric text" });
  textArea.value = text;
  const slider = el("input", { type: "range", min: "0", max: "2", step: "0.05", value: String(weight),
    class: "rubric-weight", "data-testid": `rubric-${k}-weight`, "aria-label": "rubric weight" });
  const out = el("output", { "data-testid": `rubric-${k}-weight-value` }, fmt(weight, 2));
  slider.addEventListener("input", () => { out.textContent = fmt(Number(slider.value), 2); });
  const remove = el("button", { type: "button", "data-testid": `rubric-${k}-remove` }, "remove");
  remove.addEventListener("click", () => row.remove());
  row.append(nameInput, textArea, slider, out, remove);
  $("rubrics").append(row);
  return row;
}

function rubrics() {
  const out = {};
  for (const row of document.querySelectorAll("#rubrics .rubric")) {
    const name = row.querySelector(".rubric-name").value.trim();
    const text = row.querySelector(".rubric-text").value.trim();
    const weight = Number(row.querySelector(".rubric-weight").value);
    if (name && text && weight !== 0) out[name] = { text, weight };
  }
  return out;
}

async function loadServer() {
  const [models, rewards] = await Promise.all([api("/models"), api("/rewards")]);
  $("model").textContent = models.data.length ? models.data[0].id : "";
  limits = rewards.limits || limits;
  $("budget").max = String(limits.max_budget);
  $("max-tokens").max = String(limits.max_tokens);
  const defaults = rewards.default_reward_weights || {};
  const anyDefault = Object.keys(defaults).length > 0;
  rewards.data.forEach((r, i) => addRewardSlider(r, r.name in defaults ? defaults[r.name] : (!anyDefault && i === 0 ? 1 : 0)));
}

function weights() {
  const w = {};
  for (const s of document.querySelectorAll("#rewards input[type=range]")) {
    const v = Number(s.value);
    if (v !== 0) w[s.dataset.reward] = v;
  }
  return w;
}

function request() {
  const prompt = $("prompt").value;
  const system = $("system").value.trim();
  const body = {
    reward_weights: weights(),
    budget: Number($("budget").value),
    algorithm: $("algorithm").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    return_candidates: true,
  };
  if (system && !$("raw").checked) {
    body.messages = [{ role: "system", content: system }, { role: "user", content: prompt }];
  } else {
    body.prompt = prompt;
    body.raw_prompt = $("raw").checked;
  }
  const written = rubrics();
  if (Object.keys(written).length) {
    body.rubrics = {};
    for (const [name, r] of Object.entries(written)) {
      body.rubrics[name] = r.text;
      body.reward_weights[name] = r.weight;
    }
  }
  if (body.algorithm === "soft_bon") body.alignment_temperature = Number($("tau").value);
  if (body.algorithm === "vote") body.vote = { regex: $("vote-regex").value };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("er").checked) {
    body.early_rejection = {
      checkpoints: $("er-checkpoints").value.split(/[\s,]+/).filter(Boolean).map(Number),
      keep: Number($("er-keep").value),
    };
  }
  return body;
}

// ---------------------------------------------------------------- results

function summary(d) {
  const box = $("summary");
  box.replaceChildren();
  const item = (label, value, testid) => {
    const span = el("span", testid ? { "data-testid": testid } : {});
    span.append(`${label} `, el("b", {}, value));
    box.append(span);
  };
  item("chosen", `#${d.chosen_index}`, "chosen-index");
  item("weighted score", fmt(d.weighted_score), "chosen-score");
  item("KL bound", `${fmt(d.kl_bound)} nats`, "kl-bound");
  item("budget", String(d.budget));
  const judged = d.usage.judge_tokens ? `, ${d.usage.judge_tokens} judge` : "";
  item("tokens", `${d.usage.completion_tokens} generated, ${d.usage.prompt_tokens} prompt${judged}`, "tokens");
  const t = d.timings;
  item("time", `${fmt(t.total_s, 2)} s (queue ${fmt(t.queue_s, 2)}, generation ${fmt(t.generation_s, 2)}, scoring ${fmt(t.scoring_s, 2)})`, "timings");
  const used = Object.entries(d.reward_weights).map(([k, v]) => `${k}=${v}`).join(", ");
  item("weights", used, "weights-used");
  if (d.vote) {
    const counts = Object.entries(d.vote.counts).map(([a, n]) => `${a}: ${n}`).join(", ");
    item("vote", `${d.vote.answer ?? "no answer"} (${counts || "no votes"})`, "vote");
  }
  if (d.eligible !== undefined && d.eligible !== null) item("eligible", String(d.eligible), "eligible");
  if (d.early_rejection) {
    const er = d.early_rejection;
    item("early rejection", `${er.generated_tokens} of ≤ ${er.plain_bon_tokens_bound} tokens`, "er-summary");
  }
}

function chart(cands) {
  const svg = $("chart");
  svg.replaceChildren();
  const w = svg.clientWidth || 600, h = svg.clientHeight || 140, pad = 14;
  const scores = cands.map((c) => c.weighted_score);
  const lo = Math.min(...scores), hi = Math.max(...scores);
  const span = hi - lo || 1;
  const bw = (w - pad) / cands.length;
  cands.forEach((c, i) => {
    const bh = 4 + ((c.weighted_score - lo) / span) * (h - 2 * pad - 4);
    const cls = c.chosen ? "bar chosen" : (c.rejected_at != null ? "bar rejected" : "bar");
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("class", cls);
    rect.setAttribute("x", String(pad + i * bw + 1));
    rect.setAttribute("y", String(h - pad - bh));
    rect.setAttribute("width", String(Math.max(bw - 2, 1)));
    rect.setAttribute("height", String(bh));
    rect.setAttribute("data-index", String(c.index));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `#${c.index}: ${fmt(c.weighted_score)}`;
    rect.append(title);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", String(pad + i * bw + bw / 2 - 3));
    label.setAttribute("y", String(h - 2));
    label.textContent = String(c.index);
    svg.append(rect, label);
  });
}

function table(d) {
  const names = Object.keys(d.reward_weights);
  const head = $("candidates-head");
  head.replaceChildren(...["rank", "#", "chosen", "weighted", ...names.map((n) => `${n} raw / norm`), "tokens", "finish", "text"].map((h) => el("th", {}, h)));
  const ranked = [...d.candidates].sort((a, b) =>
    (a.rejected_at != null) - (b.rejected_at != null) || b.weighted_score - a.weighted_score);
  const body = document.querySelector("#candidates tbody");
  body.replaceChildren();
  ranked.forEach((c, rank) => {
    const cls = c.chosen ? "chosen" : (c.rejected_at != null ? "rejected" : "");
    const row = el("tr", { class: cls, "data-index": String(c.index), "data-chosen": String(c.chosen), "data-testid": "candidate" });
    row.append(
      el("td", { class: "num" }, String(rank + 1)),
      el("td", { class: "num" }, String(c.index)),
      el("td", {}, c.chosen ? "★" : ""),
      el("td", { class: "num", "data-testid": "weighted" }, fmt(c.weighted_score)),
      ...names.map((n) => {
        const s = c.scores[n];
        return el("td", { class: "num" }, s ? `${fmt(s.raw)} / ${fmt(s.normalized)}` : "–");
      }),
      el("td", { class: "num" }, String(c.completion_tokens)),
      el("td", {}, c.rejected_at != null ? `rejected at ${c.rejected_at}` : (c.finish_reason || "")),
      el("td", { class: "text" }, c.text),
    );
    body.append(row);
  });
}

async function run() {
  document.body.dataset.state = "running";  // what a test (or a user) waits on changes at once
  $("error").textContent = "";
  const button = $("run");
  button.disabled = true;
  try {
    const body = request();
    if (Object.keys(body.reward_weights).length === 0) throw new Error("set at least one reward weight");
    const d = await api("/align", body);
    summary(d);
    table(d);
    chart(d.candidates);
    document.body.dataset.state = "done";
  } catch (e) {
    $("error").textContent = e.message;
    document.body.dataset.state = "error";
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

$("algorithm").addEventListener("change", () => {
  $("tau").disabled = $("algorithm").value !== "soft_bon";
  $("vote-regex").disabled = $("algorithm").value !== "vote";
});
$("er").addEventListener("change", () => {
  $("er-checkpoints").disabled = !$("er").checked;
  $("er-keep").disabled = !$("er").checked;
});
$("run").addEventListener("click", run);
$("add-rubric").addEventListener("click", () => addRubric());
loadServer()
  .then(() => { document.body.dataset.state = "ready"; })
  .catch((e) => { $("error").textContent = e.message; document.body.dataset.state = "error"; });
