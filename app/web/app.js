// The playground: plain JavaScript against the service's own API (/v1), nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "diffusion-api-key";
const SAMPLES = ["cat", "coffee", "astronaut"];
const FORWARD_IMAGES = 11; // x_0, then ten timesteps to the schedule's last
const FORWARD_CONCURRENCY = 3;

// -- messages and the API --------------------------------------------------------------------------------
function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
  if (text) box.scrollIntoView({ block: "nearest" }); // on a phone the form may be far below it
}

class ApiError extends Error {
  constructor(message, status = 0, retryAfter = 0) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// JSON.parse reads a 63-bit seed as a rounded float: keep such seeds' digits, as strings.
function parseExact(text) {
  return JSON.parse(text.replace(/"seed":\s*(\d{16,})/g, '"seed":"$1"'));
}

async function describe(response) {
  // The API's error body is {"detail": [{"loc": [...], "msg": ..., "type": ...}]}: say it in words.
  let detail = "";
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      detail = body.detail
        .map((d) => {
          const where = (d.loc || []).filter((p) => p !== "body").join(".");
          return where ? `${where}: ${d.msg}` : d.msg;
        })
        .join("\n");
    } else if (body.detail) {
      detail = String(body.detail);
    } else if (body.error) {
      detail = String(body.error);
    }
  } catch (_) {
    detail = response.statusText;
  }
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After");
    return `Too many requests (429)${wait ? `: try again in ${wait} s` : ""}. ${detail}`;
  }
  if (response.status === 401) {
    return `This server needs an API key (401). ${detail}`;
  }
  if (response.status === 503) {
    const wait = response.headers.get("Retry-After");
    return `The service is busy (503)${wait ? `: try again in ${wait} s` : ""}. ${detail}`;
  }
  return `${response.status} ${response.statusText || STATUS_NAMES[response.status] || "error"}: ${detail}`;
}

// Over HTTP/2 a response has no status text: the names of those the API answers with
const STATUS_NAMES = {
  400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
  408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
  422: "Unprocessable Content", 500: "Internal Server Error", 502: "Bad Gateway", 504: "Gateway Timeout",
};

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Cannot reach the server: ${err.message}`);
  }
  if (response.status === 401) askForKey();
  if (!response.ok) {
    const wait = Number(response.headers.get("Retry-After")) || 0;
    throw new ApiError(await describe(response), response.status, wait);
  }
  return response;
}

async function apiJson(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Accept", "application/json");
  return parseExact(await (await api(path, { ...options, headers })).text());
}

// A sync request still running at the server's sync timeout is answered 202 with the job: follow it to its end.
async function finished(job, run) {
  if (job.status === "queued" || job.status === "running") {
    run.track(job.job_id); // Cancel (or leaving the page) cancels it on the server
    for await (const _ of jobEvents(job.job_id, run)); // to its final status
    job = await readJob(job.job_id, run);
    run.jobs.delete(job.job_id); // it has ended: nothing to cancel
  }
  if (job.status !== "succeeded") throw new ApiError(`The job ${job.status}${job.error ? `: ${job.error}` : ""}`);
  return job;
}

// A job's record. Every /v1 request counts against a key's requests per minute, these reads too: one the quota
// refuses (429) is asked for again after the server's wait, as the job runs on (it is not canceled for it).
function readJob(jobId, run) {
  return patiently(() => apiJson(`/v1/jobs/${jobId}`, { signal: run.signal }), run);
}

const TRANSIENT_EVENTS = new Set(["progress", "preview"]); // any other event is a job's final one
const STREAM_RETRIES = 6; // reconnections in a row (after 1, 2, 4, 8, 8, 8 s) before the job is given up on

// A job's events, to its final one. A stream that breaks or ends before it (an API node stopped by a rolling
// deploy, a proxy's idle timeout, the network for a moment) is asked for again, and the server answers with
// where the job stands now: the job runs on meanwhile, and is not canceled for a lost connection.
async function* jobEvents(jobId, run) {
  for (let failures = 0, refusals = 0; ; ) {
    let error = null;
    try {
      for await (const item of events(`/v1/jobs/${jobId}/events`, run)) {
        failures = 0;
        refusals = 0;
        yield item;
        if (!TRANSIENT_EVENTS.has(item.event)) return;
      }
    } catch (err) {
      if (run.signal.aborted) throw err;
      if (err instanceof ApiError && err.status === 429 && ++refusals < QUOTA_RETRIES) {
        await pause(quotaWait(err), run.signal); // the key's quota: asked again after its wait
        continue;
      }
      if (!reconnectable(err)) throw err;
      error = err;
    }
    if (++failures > STREAM_RETRIES) throw error || new ApiError("The job's progress stream kept ending early.");
    await pause(Math.min(2 ** (failures - 1), 8), run.signal);
  }
}

// The network, or a proxy or server in between that is going away: worth asking again.
function reconnectable(err) {
  return err instanceof TypeError || (err instanceof ApiError && [0, 502, 503, 504].includes(err.status));
}

// Server-Sent Events over fetch (EventSource cannot send the API key).
async function* events(path, run) {
  const response = await api(path, { headers: { Accept: "text/event-stream" }, signal: run.signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: parseExact(data.join("\n")) };
    }
  }
}

// An action in progress: its fetches stop on Cancel, and the jobs it follows are canceled on the server.
class Run {
  constructor() {
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.jobs = new Set();
    this.quiet = false; // canceled by something else the person did: its status line is not "canceled"
  }

  // A job this action made or follows: canceled on the server on Cancel, at once if Cancel came first.
  track(id) {
    this.jobs.add(id);
    if (this.signal.aborted) cancelJob(id);
  }

  cancel() {
    this.controller.abort();
    for (const id of this.jobs) cancelJob(id);
  }
}

function cancelJob(id) {
  const key = localStorage.getItem(KEY_STORE);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  // keepalive: the request still goes out when the page is being closed
  fetch(`/v1/jobs/${id}`, { method: "DELETE", headers, keepalive: true }).catch(() => {});
}

// A wait that Cancel ends early (as a canceled fetch does).
function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", done);
      resolve();
    }, seconds * 1000);
    signal.addEventListener("abort", done, { once: true });
    if (signal.aborted) done();
  });
}
const runs = new Set();
addEventListener("pagehide", () => runs.forEach((run) => run.cancel()));

// Actions that share a status line, a Cancel button and what they show (the Denoise tab's Add noise and
// Denoise) run one at a time: each disables the others' buttons while it runs.
// While a sample photo is on its way (arriving > 0) they stay disabled too: there is nothing yet to act on.
const photoLane = { buttons: ["dn-add-noise", "dn-submit"], run: null, arriving: 0 };

function guard(button, work, { status, cancel, lane } = {}) {
  // Run an action with its button disabled and its Cancel button shown; an error becomes a readable
  // message, and the action's status line says how it ended.
  return async (event) => {
    if (event) event.preventDefault();
    showMessage("");
    const hadFocus = document.activeElement === button;
    const run = new Run();
    runs.add(run);
    const buttons = lane ? lane.buttons.map($) : [button];
    buttons.forEach((b) => (b.disabled = true));
    if (lane) lane.run = run;
    const stop = () => run.cancel();
    if (cancel) {
      $(cancel).hidden = false;
      $(cancel).addEventListener("click", stop);
    }
    try {
      await work(run);
    } catch (err) {
      if (run.signal.aborted) {
        if (status && !run.quiet) $(status).textContent = "canceled";
      } else {
        const lost = err instanceof TypeError ? `Lost the connection to the server (${err.message}).` : null;
        const message = err instanceof ApiError ? err.message : lost || `Something went wrong: ${err.message}`;
        if (status && button.closest('[role="tabpanel"]')?.hidden) {
          // the person has gone to another tab: the message waits on this tab's status line, not over that one
          $(status).textContent = `failed: ${message}`;
        } else {
          if (status) $(status).textContent = "failed: see the message above";
          showMessage(message);
        }
        // what the run still has going (the forward tab's other images) is dropped, its jobs canceled:
        // nothing would show their results, and they would hold the key's places in its quota
        run.quiet = true;
        run.cancel();
      }
    } finally {
      runs.delete(run);
      if (!lane || !lane.arriving) buttons.forEach((b) => (b.disabled = false));
      if (lane && lane.run === run) lane.run = null;
      if (cancel) {
        $(cancel).removeEventListener("click", stop);
        $(cancel).hidden = true;
      }
      if (hadFocus) button.focus(); // a disabled button loses the focus: give it back
    }
  };
}

// -- API key ----------------------------------------------------------------------------------------------
function askForKey() {
  $("key-panel").hidden = false;
  $("key-open").hidden = false;
  $("key-status").textContent = "";
  $("api-key").focus();
}
if (localStorage.getItem(KEY_STORE)) $("key-open").hidden = false; // a saved key can be changed or forgotten

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!/^[\x21-\x7e]+$/.test(key)) {
    // an HTTP header carries no other characters: the browser would refuse every request made with it
    $("key-status").textContent = "An API key is made of printable ASCII characters, without spaces: check what was pasted.";
    return;
  }
  localStorage.setItem(KEY_STORE, key);
  $("api-key").value = "";
  $("key-panel").hidden = true;
  showMessage("");
  $("key-open").focus(); // the panel that held the focus is gone
  loadModels();
});
$("key-forget").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORE);
  $("api-key").value = "";
  $("key-status").textContent = "Key forgotten: this browser no longer holds it.";
});
$("key-open").addEventListener("click", askForKey);

// -- tabs (arrow keys move between them, as the ARIA tabs pattern says) ----------------------------------
const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  showMessage(""); // a message was about the tab left
  tab.focus();
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -i, End: tabs.length - 1 - i };
    if (event.key in moves) {
      event.preventDefault();
      selectTab(tabs[(i + moves[event.key] + tabs.length) % tabs.length]);
    }
  });
});

// -- helpers ----------------------------------------------------------------------------------------------
function option(select, value, text) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = text;
  select.append(item);
}

function dataUrl(image) {
  return `data:${image.media_type};base64,${image.data}`;
}

function b64ToBlob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function randomSeed() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return ((BigInt(words[0] & 0x7fffffff) << 32n) | BigInt(words[1])).toString();
}

function figure(src, alt, caption) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

// -- models -----------------------------------------------------------------------------------------------
let models = [];
let samplers = ["ddim"];
const MODEL_BUTTONS = ["gen-submit", "gen-curl-copy", "fw-submit"]; // what needs the model list to act

const MODELS_AGAIN_S = 5;
const NO_MODELS_YET = `No model is served yet (no worker has said what it serves): asking again every ${MODELS_AGAIN_S} s.`;
const NONE_READY = `No model on this server is ready (GET /v1/models says why): asking again every ${MODELS_AGAIN_S} s.`;
let modelLoads = 0; // a key saved again starts a new load: an older one's late answer is dropped
let modelsMessage = ""; // what the page said while the models did not come: cleared once they do

async function loadModels() {
  const load = ++modelLoads;
  let listed = 0;
  try {
    const [list, spec] = await Promise.all([apiJson("/v1/models"), fetch("/openapi.json").then((r) => r.json())]);
    if (load !== modelLoads) return;
    listed = list.models.length;
    models = list.models.filter((m) => m.status === "ready" && m.card);
    const sampler = spec.components.schemas.GenerateRequest.properties.sampler;
    samplers = (sampler.anyOf || [sampler]).flatMap((s) => s.enum || []);
  } catch (err) {
    if (load !== modelLoads) return;
    showMessage((modelsMessage = err.message));
    // busy (503), over the key's quota (429), not reached, or a proxy's page instead of the API document:
    // asked again after the wait the server gives
    const refused = err instanceof ApiError && err.status === 429;
    if (reconnectable(err) || refused || err instanceof SyntaxError) {
      const wait = err.retryAfter || MODELS_AGAIN_S;
      setTimeout(() => load === modelLoads && loadModels(), Math.min(wait, 60) * 1000);
    }
    return;
  }
  if (!models.length) {
    // none served yet (API nodes up before any worker has said what it serves): asked for again until some are
    showMessage((modelsMessage = listed ? NONE_READY : NO_MODELS_YET));
    setTimeout(() => load === modelLoads && loadModels(), MODELS_AGAIN_S * 1000);
    return;
  }
  if (modelsMessage && $("message").textContent === modelsMessage) showMessage(""); // said while they did not come
  modelsMessage = "";
  // an inpainting model needs an image and a mask (/v1/img2img): the Generate tab has neither to give it
  const generators = models.filter((m) => m.card.tasks.includes("generate") && !m.card.inpainting);
  const select = $("gen-model");
  select.replaceChildren();
  generators.forEach((m) => option(select, m.name, m.name));
  $("gen-sampler").replaceChildren();
  samplers.forEach((s) => option($("gen-sampler"), s, s));
  $("fw-model").replaceChildren();
  models.forEach((m) => option($("fw-model"), m.name, `${m.name} (${m.card.train_timesteps} steps)`));
  if (!generators.length) showMessage("No model on this server generates images.");
  fillModelFields();
  MODEL_BUTTONS.forEach((id) => ($(id).disabled = false)); // disabled in the page until the models are here
}

function currentModel() {
  return models.find((m) => m.name === $("gen-model").value);
}

function fillModelFields() {
  const model = currentModel();
  if (!model) return;
  const card = model.card;
  // a model without names for its classes (a DiT folder as DiTPipeline saves it) takes their numbers
  const numbered = () => Array.from({ length: card.class_count || 0 }, (_, i) => String(i));
  const classes = (card.conditioning === "class" && (card.class_names || numbered())) || [];
  $("gen-class-field").hidden = !classes.length;
  $("gen-class").replaceChildren();
  if (classes.length) {
    if (card.null_class !== null && card.null_class !== undefined) option($("gen-class"), "", "any (unconditional)");
    classes.forEach((name, i) => option($("gen-class"), String(i), name));
    $("gen-class").value = classes.length > 7 ? "7" : "0";
  }
  const text = card.conditioning === "text";
  $("gen-prompt-field").hidden = !text;
  $("gen-negative-field").hidden = !text;
  $("gen-guidance-field").hidden = !card.parameters.includes("guidance_scale");
  $("gen-steps").value = card.defaults.steps;
  $("gen-sampler").value = card.defaults.sampler;
  $("gen-guidance").value = card.defaults.guidance_scale;
  if (!$("gen-seed").value) $("gen-seed").value = randomSeed();
  guidanceFollowsClass();
}

function guidanceFollowsClass() {
  // guidance steers towards a class: with "any (unconditional)" there is none, and none is sent
  $("gen-guidance").disabled = !$("gen-class-field").hidden && $("gen-class").value === "";
}
$("gen-class").addEventListener("change", guidanceFollowsClass);

$("gen-model").addEventListener("change", fillModelFields);
$("gen-random").addEventListener("click", () => {
  $("gen-seed").value = randomSeed();
});

// -- generate ---------------------------------------------------------------------------------------------
function generateBody() {
  const model = currentModel();
  if (!model) throw new ApiError("Pick a model first.");
  if (!$("gen-seed").value) $("gen-seed").value = randomSeed();
  const body = {
    model: model.name,
    seed: Number(seedDigits()), // exact for seeds below 2^53; the request and the curl copy keep the digits
    sampler: $("gen-sampler").value,
  };
  // a field left empty is left out: the model's default (Number("") would send 0, which is refused)
  if ($("gen-steps").value.trim() !== "") body.steps = Number($("gen-steps").value);
  if ($("gen-count").value.trim() !== "") body.num_images = Number($("gen-count").value);
  const unconditional = !$("gen-class-field").hidden && $("gen-class").value === "";
  if (!$("gen-class-field").hidden && !unconditional) body.class_label = Number($("gen-class").value);
  // guidance steers towards a class: with "any (unconditional)" there is none to steer towards
  if (!$("gen-guidance-field").hidden && !unconditional && $("gen-guidance").value !== "") {
    body.guidance_scale = Number($("gen-guidance").value);
  }
  if (!$("gen-prompt-field").hidden) {
    body.prompt = $("gen-prompt").value;
    if ($("gen-negative").value) body.negative_prompt = $("gen-negative").value;
  }
  return body;
}

function seedDigits() {
  // the seed field's digits, as JSON writes a number: "007" is 7 (JSON has no leading zeros)
  const text = $("gen-seed").value.trim();
  if (!/^\d+$/.test(text)) throw new ApiError("The seed must be a whole number, 0 or more.");
  return BigInt(text).toString();
}

function jsonWithExactSeed(body) {
  // JSON.stringify would round a 63-bit seed; write the field's own digits.
  return JSON.stringify(body).replace(/"seed":\d+(\.\d+)?(e\+\d+)?/, `"seed":${seedDigits()}`);
}

function curlFor(body) {
  const key = localStorage.getItem(KEY_STORE) ? ` -H "Authorization: Bearer $DIFFUSION_API_KEY"` : "";
  const quoted = jsonWithExactSeed(body).replaceAll("'", "'\\''"); // a prompt's ' ends the shell's quotes
  return `curl -s ${location.origin}/v1/generate -H 'content-type: application/json'${key} -d '${quoted}'`;
}

async function copyCurl() {
  const text = curlFor(generateBody());
  const pre = $("gen-curl");
  pre.textContent = text;
  pre.hidden = false;
  try {
    await navigator.clipboard.writeText(text);
    $("gen-status").textContent = "curl command copied";
  } catch (_) {
    $("gen-status").textContent = "curl command shown below (the clipboard is not available here)";
  }
}
$("gen-curl-copy").addEventListener("click", guard($("gen-curl-copy"), copyCurl));

async function generate(run) {
  const body = generateBody();
  body.preview_every = Math.max(1, Math.floor((body.steps || currentModel().card.defaults.steps) / 10));
  const progress = $("gen-progress");
  $("gen-status").textContent = "sending…";
  // Not aborted by Cancel: the server may have taken the job already, and only its answer names it. A run
  // canceled meanwhile cancels the job as soon as it is named.
  const accepted = await apiJson("/v1/generate", {
    method: "POST",
    headers: { "Content-Type": "application/json", Prefer: "respond-async" },
    body: jsonWithExactSeed(body),
  });
  run.track(accepted.job_id);
  run.signal.throwIfAborted();
  // the last results stay until the server has taken the new request
  progress.value = 0;
  $("gen-preview").replaceChildren();
  $("gen-results").replaceChildren();
  $("gen-status").textContent = "queued";
  let outcome = null;
  for await (const { event, data } of jobEvents(accepted.job_id, run)) {
    if (event === "progress" && data.status === "queued") {
      $("gen-status").textContent = "queued"; // waiting for a place in a batch, or for a worker
    } else if (data.progress && data.progress.total) {
      const { step, total } = data.progress;
      progress.value = step / total;
      // said in tenths, not at every step (a screen reader reads each change of the status line)
      if (event === "progress" && (step === total || step % Math.max(1, Math.round(total / 10)) === 0)) {
        $("gen-status").textContent = `step ${step} of ${total}`;
      }
    }
    if (event === "preview") {
      $("gen-preview").replaceChildren(
        ...data.images.map((image) =>
          figure(dataUrl(image), `Preview of image ${image.index + 1} at step ${data.progress.step}`, `step ${data.progress.step}`),
        ),
      );
    } else if (event !== "progress") {
      outcome = event;
    }
  }
  const job = await readJob(accepted.job_id, run);
  if (outcome !== "succeeded" || job.status !== "succeeded") {
    throw new ApiError(`The job ${job.status}${job.error ? `: ${job.error}` : ""}`);
  }
  progress.value = 1;
  $("gen-status").textContent = `done in ${(job.timings.total_ms / 1000).toFixed(2)} s`;
  $("gen-results").replaceChildren(
    ...job.images.map((image) => {
      const fig = figure(dataUrl(image), `Generated image, seed ${image.seed}`, `seed ${image.seed}`);
      const link = document.createElement("a");
      link.href = dataUrl(image);
      link.download = `${job.model}-seed-${image.seed}.${image.media_type.split("/")[1]}`;
      link.textContent = `Download (seed ${image.seed})`;
      fig.append(link);
      return fig;
    }),
  );
}
$("gen-form").addEventListener("submit", guard($("gen-submit"), generate, { status: "gen-status", cancel: "gen-cancel" }));

// -- denoise ----------------------------------------------------------------------------------------------
const photo = { original: null, noisy: null, sigma: null }; // Blobs, and the sigma the noise was added at
let photoPicks = 0; // counts the photos picked (samples, uploads, drops): a sample that arrives late is not shown

function setOriginal(blob, label) {
  photoPicks += 1;
  if (photoLane.run) {
    // a new photo: what was being done to the last one is canceled, and its result never shown
    photoLane.run.quiet = true;
    photoLane.run.cancel();
  }
  photo.original = blob;
  photo.noisy = null;
  photo.sigma = null;
  showMessage("");
  $("dn-status").textContent = `${label} loaded: add noise, or tick "already noisy" and denoise`;
  showImage("dn-original", blob, `Original photo (${label})`, () => {
    // TIFF, PNM, TGA and QOI are read by the server but not shown by browsers: let the server say
    $("dn-status").textContent = `${label}: this browser cannot show it; the server says whether it can read it`;
  });
  $("dn-noisy-fig").hidden = true;
  $("dn-denoised-fig").hidden = true;
  $("dn-compare-box").hidden = true;
}

function forget(img) {
  // A blob: URL keeps its photo in the page's memory until it is revoked: one visit may show many photos.
  // An image already shown stays on screen (the before/after view borrows the noisy and denoised ones).
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
}

function showImage(id, blob, alt, unshown = () => {}) {
  const img = $(id);
  img.onerror = () => {
    showMessage(`${alt}: the browser cannot show this file; it may not be an image.`);
    unshown();
  };
  forget(img);
  img.src = URL.createObjectURL(blob);
  img.alt = alt;
  $(`${id}-fig`).hidden = false;
}

async function sample(name) {
  let response;
  try {
    response = await fetch(`/ui/samples/${name}.png`);
  } catch (err) {
    throw new ApiError(`Cannot reach the server: ${err.message}`);
  }
  if (!response.ok) throw new ApiError(`sample ${name} is missing (${response.status})`);
  return response.blob();
}

async function loadSample(name) {
  // Add noise and Denoise wait for the photo: clicked before it is here, they would act on none (or the last)
  const lane = photoLane.buttons.map($);
  photoLane.arriving += 1;
  lane.forEach((b) => (b.disabled = true));
  const pick = ++photoPicks;
  try {
    const blob = await sample(name);
    if (pick === photoPicks) setOriginal(blob, `sample: ${name}`); // else a photo picked since replaced it
  } finally {
    photoLane.arriving -= 1;
    // a run of the lane still going (or being canceled) gives them back when it ends
    if (!photoLane.arriving && !photoLane.run) lane.forEach((b) => (b.disabled = false));
  }
}

for (const name of SAMPLES) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = `Sample: ${name}`;
  button.addEventListener("click", guard(button, () => loadSample(name)));
  $("dn-samples").append(button);
}

$("dn-file").addEventListener("change", () => {
  const file = $("dn-file").files[0];
  if (file) setOriginal(file, file.name);
});
const drop = $("dn-drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) setOriginal(file, file.name);
});

function sigmaValue() {
  const sigma = Number($("dn-sigma").value);
  if (!(sigma > 0 && sigma <= 255)) throw new ApiError("Noise σ must be between 1 and 255.");
  return sigma;
}

async function addNoise(run) {
  if (!photo.original) throw new ApiError("Upload a photo or pick a sample first.");
  const sigma = sigmaValue();
  const form = new FormData();
  form.append("file", photo.original, "photo");
  form.append("sigma", String(sigma));
  form.append("seed", "0");
  $("dn-status").textContent = "adding noise…";
  // the noise added here is known: denoise with its σ (set now, so what is chosen while it comes stays chosen)
  $("dn-noisy-given").checked = false;
  $("dn-sigma-mode").value = "known";
  const job = await finished(await apiJson("/v1/noise", { method: "POST", body: form, signal: run.signal }), run);
  run.signal.throwIfAborted();
  photo.noisy = b64ToBlob(job.images[0].data, job.images[0].media_type);
  photo.sigma = sigma;
  showImage("dn-noisy", photo.noisy, `Noisy photo (σ ${sigma})`);
  $("dn-noisy-caption").textContent = `Noisy (σ ${sigma})`;
  $("dn-original-fig").hidden = false; // hidden by a denoise of an upload marked "already noisy"
  $("dn-denoised-fig").hidden = true;
  $("dn-compare-box").hidden = true; // it compared the noisy image before this one
  $("dn-status").textContent = "noise added: now denoise it";
  await scoreAgainstOriginal("dn-noisy", "dn-noisy-caption", `Noisy (σ ${sigma})`);
}
$("dn-add-noise").addEventListener(
  "click",
  guard($("dn-add-noise"), addNoise, { status: "dn-status", cancel: "dn-cancel", lane: photoLane }),
);
$("dn-sigma").addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault(); // the σ field's Enter adds noise, not the form's Denoise
    $("dn-add-noise").click();
  }
});

async function denoise(run) {
  const given = $("dn-noisy-given").checked;
  const noisy = given ? photo.original : photo.noisy;
  if (!noisy) throw new ApiError(photo.original ? 'Add noise first, or tick "My photo is already noisy".' : "Upload a photo or pick a sample first.");
  const form = new FormData();
  form.append("file", noisy, "noisy");
  form.append("mode", $("dn-mode").value);
  form.append("sigma", $("dn-sigma-mode").value === "auto" ? "auto" : String(given ? sigmaValue() : photo.sigma));
  $("dn-status").textContent = "denoising…";
  const job = await finished(await apiJson("/v1/denoise", { method: "POST", body: form, signal: run.signal }), run);
  run.signal.throwIfAborted();
  const denoised = b64ToBlob(job.images[0].data, job.images[0].media_type);
  if (given) {
    // the upload is the noisy image: there is no clean original to compare with
    $("dn-original-fig").hidden = true;
    showImage("dn-noisy", noisy, "Noisy photo (your upload)");
    $("dn-noisy-caption").textContent = "Noisy (your upload)";
  }
  showImage("dn-denoised", denoised, "Denoised photo");
  const sigma = job.info && job.info.sigma !== undefined ? ` (σ ${Number(job.info.sigma).toFixed(1)})` : "";
  $("dn-denoised-caption").textContent = `Denoised${sigma}`;
  $("dn-compare-before").src = $("dn-noisy").src;
  $("dn-compare-after").src = $("dn-denoised").src;
  $("dn-compare-box").hidden = false;
  updateCompare();
  $("dn-status").textContent = `done in ${(job.timings.total_ms / 1000).toFixed(2)} s`;
  if (!given) await scoreAgainstOriginal("dn-denoised", "dn-denoised-caption", `Denoised${sigma}`);
}
$("dn-form").addEventListener("submit", guard($("dn-submit"), denoise, { status: "dn-status", cancel: "dn-cancel", lane: photoLane }));

function updateCompare() {
  const cut = 100 - Number($("dn-compare").value);
  $("dn-compare-after").style.clipPath = `inset(0 ${cut}% 0 0)`;
}
$("dn-compare").addEventListener("input", updateCompare);

// PSNR and SSIM against the original, on the browser's decoded pixels.
async function pixelsOf(img) {
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

async function scoreAgainstOriginal(id, captionId, label) {
  let a, b;
  try {
    [a, b] = await Promise.all([pixelsOf($("dn-original")), pixelsOf($(id))]);
  } catch (_) {
    return; // an original the browser cannot show (TIFF, PNM, TGA, QOI) has no pixels here to compare with
  }
  if (a.width !== b.width || a.height !== b.height) return;
  if (!opaque(a)) {
    // the server drops alpha, keeping each pixel's colour, which the browser's canvas does not keep where a
    // pixel is transparent: the two would not be the same pixels
    $(captionId).textContent = `${label} (no PSNR or SSIM: the original has transparent pixels)`;
    return;
  }
  $(captionId).textContent = `${label}: PSNR ${psnr(a, b).toFixed(2)} dB, SSIM ${ssim(a, b).toFixed(3)}`;
}

function opaque(image) {
  for (let i = 3; i < image.data.length; i += 4) if (image.data[i] !== 255) return false;
  return true;
}

function psnr(a, b) {
  let sum = 0;
  let n = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    for (let c = 0; c < 3; c++) {
      const d = a.data[i + c] - b.data[i + c];
      sum += d * d;
      n++;
    }
  }
  const mse = sum / n;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

function luma(image) {
  const out = new Float64Array(image.width * image.height);
  for (let p = 0, i = 0; p < out.length; p++, i += 4) {
    out[p] = 0.299 * image.data[i] + 0.587 * image.data[i + 1] + 0.114 * image.data[i + 2];
  }
  return out;
}

function ssim(a, b, win = 7) {
  // Mean SSIM (Wang et al. 2004) on luma over win x win windows, as scikit-image's default (uniform windows,
  // sample covariance, the windows that fit inside the image). Each window's five sums come from running
  // sums, down the columns and then along each row: time in proportion to the pixels, not to win² times
  // them, so a 16-megapixel photo is scored without freezing the page.
  const x = luma(a);
  const y = luma(b);
  const w = a.width;
  const h = a.height;
  if (w < win || h < win) return 1;
  const c1 = (0.01 * 255) ** 2;
  const c2 = (0.03 * 255) ** 2;
  const n = win * win;
  const columns = [x, y, null, null, null].map(() => new Float64Array(w)); // sums over win rows, per column
  const add = (row, sign) => {
    const [cx, cy, cxx, cyy, cxy] = columns;
    for (let c = 0, p = row * w; c < w; c++, p++) {
      const u = x[p];
      const v = y[p];
      cx[c] += sign * u;
      cy[c] += sign * v;
      cxx[c] += sign * u * u;
      cyy[c] += sign * v * v;
      cxy[c] += sign * u * v;
    }
  };
  for (let r = 0; r < win - 1; r++) add(r, 1);
  let total = 0;
  for (let top = 0; top + win <= h; top++) {
    add(top + win - 1, 1);
    const [cx, cy, cxx, cyy, cxy] = columns;
    let sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    for (let c = 0; c < w; c++) {
      sx += cx[c]; sy += cy[c]; sxx += cxx[c]; syy += cyy[c]; sxy += cxy[c];
      if (c >= win) {
        const o = c - win;
        sx -= cx[o]; sy -= cy[o]; sxx -= cxx[o]; syy -= cyy[o]; sxy -= cxy[o];
      }
      if (c < win - 1) continue;
      const mx = sx / n;
      const my = sy / n;
      const vx = (sxx - n * mx * mx) / (n - 1);
      const vy = (syy - n * my * my) / (n - 1);
      const cov = (sxy - n * mx * my) / (n - 1);
      total += ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
    }
    add(top, -1);
  }
  return total / ((h - win + 1) * (w - win + 1));
}

// -- forward process ----------------------------------------------------------------------------------------
SAMPLES.forEach((name) => option($("fw-image"), name, `sample: ${name}`));
let forwardUpload = null;
$("fw-file").addEventListener("change", () => {
  forwardUpload = $("fw-file").files[0] || null;
});
$("fw-image").addEventListener("change", () => {
  forwardUpload = null; // the sample picked now, not the file chosen before
  $("fw-file").value = "";
});

// A request a key's quota refused (429) is sent again after the wait the server gives, a few times.
const QUOTA_RETRIES = 20;
function quotaWait(err) {
  return Math.min(Math.max(err.retryAfter, 1), 60);
}

async function patiently(send, run, waiting = () => {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 429) || attempt >= QUOTA_RETRIES || run.signal.aborted) throw err;
      const wait = quotaWait(err);
      waiting(wait);
      await pause(wait, run.signal); // Cancel ends the wait
    }
  }
}

async function forward(run) {
  const model = models.find((m) => m.name === $("fw-model").value);
  if (!model) throw new ApiError("Pick a model for its noise schedule first.");
  const seed = $("fw-seed").value.trim() || "0";
  if (!/^\d+$/.test(seed)) throw new ApiError("The seed must be a whole number, 0 or more.");
  const image = forwardUpload || (await sample($("fw-image").value));
  run.signal.throwIfAborted(); // canceled while the sample came: the last strip stays
  const steps = forwardSteps(model.card.train_timesteps);
  const last = model.card.train_timesteps - 1;
  const strip = $("fw-strip");
  // One /v1/noise call per timestep, all with the same seed: the same noise n at every t, growing as
  // alpha_bar_t falls. t = 0 is x_0 itself; the last timestep of the schedule is T - 1. The new strip takes
  // the last one's place once the server has given its first image: a refused request keeps the last strip.
  const cells = steps.map(() => document.createElement("li"));
  let shown = false;
  const show = () => {
    if (shown) return;
    shown = true;
    strip.querySelectorAll("img").forEach(forget);
    strip.replaceChildren(...cells);
  };
  let done = 0;
  // a few requests at a time: a key may hold only so many jobs at once (the README's example: 4)
  try {
    await inTurns(
      FORWARD_CONCURRENCY,
      steps.map((t, i) => async (stopped) => {
        let src;
        if (t === 0) {
          src = URL.createObjectURL(image);
        } else {
          const form = new FormData();
          form.append("file", image, "image");
          form.append("timestep", String(t));
          form.append("model", model.name);
          form.append("seed", seed);
          const send = () => apiJson("/v1/noise", { method: "POST", body: form, signal: run.signal });
          const waiting = (wait) => {
            $("fw-status").textContent = `${done} of ${steps.length} images; the key's quota asks to wait ${wait} s`;
          };
          const job = await finished(await patiently(send, run, waiting), run);
          if (stopped()) return; // another image failed: the strip says so, and stays as it was then
          src = dataUrl(job.images[0]);
          show();
        }
        const label = t === 0 ? "t = 0 (x₀)" : t === last ? `t = ${t} (T − 1)` : `t = ${t}`;
        const img = document.createElement("img");
        img.src = src;
        img.alt = `x at ${label}`;
        const caption = document.createElement("span");
        caption.textContent = label;
        cells[i].append(img, caption);
        done++;
        $("fw-status").textContent = `${done} of ${steps.length} images`;
      }),
    );
  } finally {
    if (!shown) cells.forEach((cell) => cell.querySelectorAll("img").forEach(forget)); // x_0's, never shown
  }
}

// x_0, then tenths of the schedule's T timesteps (0, 100, ..., 900 and T - 1 = 999 for T = 1000), each once
function forwardSteps(T) {
  const steps = Array.from({ length: FORWARD_IMAGES }, (_, k) => Math.min(Math.round((k * T) / (FORWARD_IMAGES - 1)), T - 1));
  return [...new Set(steps)];
}

async function inTurns(limit, tasks) {
  // Run the tasks with at most `limit` at once; the first error stops the others from starting, and tells
  // those already running (their argument: a function that says whether to stop).
  let next = 0;
  let failed = false;
  const stopped = () => failed;
  const lane = async () => {
    while (!failed && next < tasks.length) {
      try {
        await tasks[next++](stopped);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, lane));
}
$("fw-form").addEventListener("submit", guard($("fw-submit"), forward, { status: "fw-status", cancel: "fw-cancel" }));

loadModels();
