// Page helpers that need no server round trip: local and relative times, paged tables,
// the tags-and-notes form. Without JavaScript the page shows UTC times and every row.
(() => {
  "use strict";
  document.documentElement.classList.add("js");

  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const UNITS = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];

  function ago(date) {
    const s = (date.getTime() - Date.now()) / 1000;
    for (const [unit, size] of UNITS) {
      if (Math.abs(s) >= size || unit === "second") return relative.format(Math.round(s / size), unit);
    }
    return "";
  }

  function localTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      const date = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) continue;
      if (!el.dataset.utc) el.dataset.utc = el.textContent.trim();
      el.textContent = date.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
      el.title = `${el.dataset.utc} · ${ago(date)}`;
    }
  }

  // Tables with data-page-size show that many body rows at a time, with a pager below.
  function pageTables(root) {
    for (const table of root.querySelectorAll("table[data-page-size]")) {
      const size = Number(table.dataset.pageSize);
      const rows = Array.from(table.tBodies[0]?.rows || []);
      const scroller = table.closest(".table-scroll") || table;
      scroller.parentElement.querySelector(`.pager[data-for="${table.id}"]`)?.remove();
      if (rows.length <= size) continue;
      const pages = Math.ceil(rows.length / size);
      let page = Math.min(Number(table.dataset.page || 1), pages);
      const pager = document.createElement("nav");
      pager.className = "pager";
      pager.dataset.for = table.id;
      pager.setAttribute("aria-label", `${table.id} pages`);
      const prev = button("‹ Previous", () => show(page - 1));
      const next = button("Next ›", () => show(page + 1));
      const label = document.createElement("span");
      pager.append(prev, label, next);
      scroller.after(pager);

      function show(p) {
        page = Math.max(1, Math.min(pages, p));
        table.dataset.page = String(page);
        rows.forEach((row, i) => { row.hidden = Math.floor(i / size) + 1 !== page; });
        label.textContent = `rows ${(page - 1) * size + 1}–${Math.min(page * size, rows.length)} of ${rows.length}`;
        prev.disabled = page === 1;
        next.disabled = page === pages;
      }
      show(page);
    }
  }

  function button(text, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "button small-button";
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }

  function annotations() {
    const form = document.getElementById("annotations-form");
    if (!form) return;
    const status = document.getElementById("annotations-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const tags = form.elements.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
      status.textContent = "saving…";
      try {
        const resp = await fetch(form.dataset.url, {
          method: "PUT", credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ tags, notes: form.elements.notes.value }),
        });
        const body = await resp.json();
        status.textContent = resp.ok ? "saved" : `not saved: ${JSON.stringify(body.detail)}`;
      } catch (err) {
        status.textContent = "not saved: the dashboard is not reachable";
      }
    });
  }

  function enhance(root) {
    localTimes(root);
    pageTables(root);
  }

  window.fedmerge = Object.assign(window.fedmerge || {}, { enhance });
  enhance(document);  // deferred: the document is parsed
  annotations();
})();
