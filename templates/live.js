// The job page, live: links' expiry counts down, and while the job runs its events (SSE) bring
// the page up to date without a reload. Without this script the page is the same, as of when
// it was loaded.
(() => {
  const tick = () => {
    for (const t of document.querySelectorAll("time[data-countdown]")) {
      const s = Math.round((Date.parse(t.dateTime) - Date.now()) / 1000);
      t.textContent = s > 0 ? `in ${s} s` : "passed";
    }
  };
  tick();
  setInterval(tick, 1000);
  let job = document.getElementById("job");
  if (!job || job.dataset.terminal === "true" || !window.EventSource) return;
  const source = new EventSource(job.dataset.events);
  let busy = false, again = false;
  const refresh = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(job.dataset.job, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (!r.ok) return;
      const fresh = new DOMParser().parseFromString(await r.text(), "text/html").getElementById("job");
      if (!fresh) return;
      // A note being typed is kept.
      const typing = document.activeElement && job.contains(document.activeElement) && document.activeElement.tagName === "TEXTAREA";
      if (typing) return;
      job.replaceWith(fresh);
      job = fresh;
      tick();
      if (job.dataset.terminal === "true") source.close();
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  };
  for (const kind of ["status", "call", "task", "action"]) source.addEventListener(kind, refresh);
  // The job has ended: the page as it ended (the stream would otherwise be opened again).
  source.addEventListener("end", () => { source.close(); refresh(); });
})();
