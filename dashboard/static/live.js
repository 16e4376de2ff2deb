// Live updates without a reload: poll the page's JSON (data-poll on <main>); when it
// changes, fetch the page once and swap every [data-live] block from that one copy, so
// the round counter and the tables always agree. Pages without data-poll only check
// that the dashboard is still there: when its process has ended, a banner says so and
// how to reopen it (instead of a silent "Failed to fetch").
(() => {
  "use strict";
  const root = document.querySelector("main");
  if (!root) return;
  const url = root.dataset.poll || "/api/ping";
  const watchesData = Boolean(root.dataset.poll);
  const everyMs = Number(root.dataset.pollMs || (watchesData ? 1500 : 3000));
  const gone = document.getElementById("server-gone");
  let last = null;
  let busy = false;

  function pageIsStale(data) {
    const shown = document.getElementById("rounds-done");
    if (shown && typeof data.rounds_done === "number" && shown.textContent.trim() !== String(data.rounds_done)) return true;
    return typeof data.status === "string" && root.dataset.status !== undefined && data.status !== root.dataset.status;
  }

  async function refreshBlocks() {
    const resp = await fetch(location.pathname + location.search, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (!resp.ok) return false;
    const fresh = new DOMParser().parseFromString(await resp.text(), "text/html");
    const ticked = new Set(Array.from(document.querySelectorAll("[data-live] input[type=checkbox]:checked"), (i) => i.value));
    for (const block of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(block.id);
      if (!next) continue;
      const pages = Array.from(block.querySelectorAll("table[data-page]"), (t) => [t.id, t.dataset.page]);
      block.innerHTML = next.innerHTML;
      for (const [id, page] of pages) { const t = document.getElementById(id); if (t) t.dataset.page = page; }
      for (const box of block.querySelectorAll("input[type=checkbox]")) box.checked = ticked.has(box.value);
      window.fedmerge?.enhance(block);
    }
    const freshMain = fresh.querySelector("main");
    if (freshMain && freshMain.dataset.status !== undefined) root.dataset.status = freshMain.dataset.status;
    return true;
  }

  function serverGone(isGone) {
    if (!gone) return;
    gone.hidden = !isGone;
    document.documentElement.classList.toggle("server-gone", isGone);
  }

  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    let resp;
    try {
      resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {  // no answer at all: the serving process has ended
      serverGone(true);
      busy = false;
      return;
    }
    serverGone(false);
    try {
      if (!resp.ok || !watchesData) return;
      const data = await resp.json();
      const signature = JSON.stringify(data);
      const changed = last === null ? pageIsStale(data) : signature !== last;
      if (!changed) { last = signature; return; }
      if (await refreshBlocks()) {
        last = signature;
        document.dispatchEvent(new CustomEvent("fedmerge:changed", { detail: data }));
      }
    } catch (err) {
      console.debug("live update skipped:", err);  // the next tick tries again
    } finally {
      busy = false;
    }
  }

  tick();
  setInterval(tick, everyMs);
})();
