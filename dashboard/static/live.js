// Live updates without a reload: poll the page's JSON (data-poll on <main>); when it
// changes, update #rounds-done at once and swap every [data-live] block for a fresh copy.
(() => {
  "use strict";
  const root = document.querySelector("main[data-poll]");
  if (!root) return;
  const url = root.dataset.poll;
  const everyMs = Number(root.dataset.pollMs || 1500);
  let last = null;
  let busy = false;

  function pageIsStale(data) {
    const shown = document.getElementById("rounds-done");
    if (shown && typeof data.rounds_done === "number" && shown.textContent.trim() !== String(data.rounds_done)) return true;
    return typeof data.status === "string" && root.dataset.status !== undefined && data.status !== root.dataset.status;
  }

  async function refreshBlocks() {
    const resp = await fetch(location.pathname, { headers: { Accept: "text/html" }, cache: "no-store" });
    if (!resp.ok) return;
    const fresh = new DOMParser().parseFromString(await resp.text(), "text/html");
    for (const block of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(block.id);
      if (next) block.innerHTML = next.innerHTML;
    }
    const freshMain = fresh.querySelector("main[data-poll]");
    if (freshMain && freshMain.dataset.status !== undefined) root.dataset.status = freshMain.dataset.status;
  }

  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!resp.ok) return;
      const data = await resp.json();
      const signature = JSON.stringify(data);
      const changed = last === null ? pageIsStale(data) : signature !== last;
      last = signature;
      if (!changed) return;
      const shown = document.getElementById("rounds-done");
      if (shown && typeof data.rounds_done === "number") shown.textContent = String(data.rounds_done);
      await refreshBlocks();
    } catch (err) {
      console.debug("live update skipped:", err);  // the next tick tries again
    } finally {
      busy = false;
    }
  }

  tick();
  setInterval(tick, everyMs);
})();
