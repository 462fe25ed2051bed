// Job page: live state from the event stream, the live desktop through noVNC, events and the
// transcript refreshed while the job runs.
const section = document.getElementById("job");
const id = section.dataset.job;
const status = document.getElementById("desktop-status");
let rfb = null;
let phase = section.querySelector('[data-field="phase"]').textContent;

function show(job) {
  phase = job.phase;
  for (const field of ["phase", "steps", "reason"]) {
    section.querySelector(`[data-field="${field}"]`).textContent = job[field] ?? "";
  }
  section.querySelector('[data-field="tokens"]').textContent = job.tokens.used;
  document.getElementById("download").hidden = !job.download_url;
  if (job.phase === "Running" && job.pod && !rfb) connectDesktop();
  refresh();
}

async function password() {
  const r = await fetch(`/jobs/${id}/desktop/password`);
  if (!r.ok) throw new Error(`VNC password: HTTP ${r.status} ${(await r.json()).detail ?? ""}`);
  return (await r.json()).password;
}

async function connectDesktop() {
  let RFB;
  try {
    RFB = (await import("/novnc/core/rfb.js")).default;
  } catch (e) {
    status.textContent = "This gateway has no noVNC: no live desktop.";
    return;
  }
  try {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    rfb = new RFB(document.getElementById("desktop"),
      `${scheme}://${location.host}/jobs/${id}/desktop/vnc`,
      { credentials: { password: await password() }, wsProtocols: ["binary"] });
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => { status.textContent = "Live desktop (view only)."; });
    rfb.addEventListener("disconnect", () => {
      status.textContent = "Desktop disconnected.";
      rfb = null;
      if (phase === "Running") setTimeout(connectDesktop, 3000);
    });
  } catch (e) {
    status.textContent = String(e.message ?? e);
    rfb = null;
  }
}

document.getElementById("show-password").addEventListener("click", async () => {
  const out = document.getElementById("password");
  out.textContent = await password();
  out.hidden = false;
});

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [events, transcript] = await Promise.all([
      fetch(`/jobs/${id}/events`).then((r) => (r.ok ? r.json() : [])),
      fetch(`/jobs/${id}/transcript`).then((r) => (r.ok ? r.text() : "")),
    ]);
    const list = document.getElementById("events");
    list.replaceChildren(...events.map((e) => {
      const li = document.createElement("li");
      li.textContent = `${e.time ?? ""} ${e.type} ${e.reason}: ${e.message}`;
      return li;
    }));
    const pre = document.getElementById("transcript");
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = transcript;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  } finally {
    refreshing = false;
  }
}

const stream = new EventSource(`/watch?job=${encodeURIComponent(id)}`);
stream.addEventListener("job", (e) => show(JSON.parse(e.data)));
setInterval(() => { if (phase === "Running") refresh(); }, 5000);
refresh();
