// Jobs page: keep each row's phase, steps and tokens live from the gateway's event stream.
const table = document.getElementById("jobs");
const body = table.querySelector("tbody");

function cell(tag, text, field) {
  const el = document.createElement(tag);
  if (field) el.dataset.field = field;
  el.textContent = text;
  return el;
}

function row(job) {
  const tr = document.createElement("tr");
  tr.dataset.job = job.job_id;
  const name = document.createElement("th");
  name.scope = "row";
  const link = document.createElement("a");
  link.href = `/ui/jobs/${job.job_id}`;
  link.textContent = job.name;
  name.append(link);
  const task = cell("td", job.task.slice(0, 120));
  task.className = "task";
  tr.append(name, cell("td", "", "phase"), cell("td", "", "steps"), cell("td", "", "tokens"),
    task, cell("td", "", "download"));
  return tr;
}

function update(job) {
  let tr = body.querySelector(`tr[data-job="${CSS.escape(job.job_id)}"]`);
  if (!tr) {
    tr = row(job);
    body.prepend(tr);
  }
  tr.querySelector('[data-field="phase"]').textContent = job.phase;
  tr.querySelector('[data-field="steps"]').textContent = job.steps;
  tr.querySelector('[data-field="tokens"]').textContent = job.tokens.used;
  const dl = tr.querySelector('[data-field="download"]');
  if (job.download_url && !dl.querySelector("a")) {
    const a = document.createElement("a");
    a.href = `/jobs/${job.job_id}/download`;
    a.textContent = "ZIP";
    dl.append(a);
  }
}

const events = new EventSource(`/watch?namespace=${encodeURIComponent(table.dataset.namespace)}`);
events.addEventListener("job", (e) => update(JSON.parse(e.data)));
events.addEventListener("deleted", (e) => {
  const job = JSON.parse(e.data);
  body.querySelector(`tr[data-job="${CSS.escape(job.job_id)}"]`)?.remove();
});
