// Refresh the dashboard's traffic cells every few seconds from the API (no libraries).
"use strict";
(function () {
  const PERIOD_MS = 2000;
  function rate(v, unit) {
    if (v === null || v === undefined) return "–";
    const steps = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [f, p] of steps) if (Math.abs(v) >= f) return (v / f).toFixed(1) + " " + p + unit;
    return Math.round(v) + " " + unit;
  }
  async function refresh() {
    try {
      const r = await fetch("/api/v1/status", {credentials: "same-origin"});
      if (!r.ok) return;
      const s = await r.json();
      for (const row of document.querySelectorAll("#traffic tr[data-tenant]")) {
        const t = (s.tenants || {})[row.dataset.tenant];
        if (!t) continue;
        for (const cell of row.querySelectorAll("td[data-k]")) {
          const k = cell.dataset.k;
          cell.textContent = rate(t[k], k.endsWith("bps") ? "bps" : "pps");
        }
      }
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) { /* the next poll retries */ }
  }
  setInterval(refresh, PERIOD_MS);
  refresh();
})();
