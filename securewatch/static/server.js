// The per-server chart: each class's packets/s, the learned baseline band (mean ± k·σ) and the
// threshold of the class closest to triggering, from /api/v1/tenants/ID/servers/ADDRESS; redrawn
// every few seconds (the series are stored each 5 s).
"use strict";
(function () {
  const el = document.getElementById("server-chart");
  const COLOURS = {tcp_syn: "#c53030", tcp_other: "#dd6b20", udp: "#2b6cb0", icmp: "#805ad5",
                   fragment: "#d69e2e", other: "#718096"};
  const REFRESH_MS = 5000;
  let range = el.dataset.range, plot = null;

  async function load() {
    const url = `/api/v1/tenants/${encodeURIComponent(el.dataset.tenant)}/servers/${encodeURIComponent(el.dataset.address)}?range=${range}`;
    const r = await fetch(url, {credentials: "same-origin"});
    if (!r.ok) return;
    const d = await r.json();
    const shown = d.classes.filter(c => d.pps[c].some(v => v > 0));
    const focus = d.current ? d.current.closest_class : (shown[0] || "udp");
    const low = d.mean[focus].map((m, i) => Math.max(0, m - d.sigma[focus][i]));
    const high = d.mean[focus].map((m, i) => m + d.sigma[focus][i]);
    const data = [d.time, ...shown.map(c => d.pps[c]), low, high, d.threshold[focus]];
    const n = shown.length;
    const opts = {
      series: [{}, ...shown.map(c => SW.series(c.replace("_", " "), "pps", COLOURS[c])),
               SW.series(`${focus.replace("_", " ")} baseline low`, "pps", "#a0aec0", {width: 1}),
               SW.series(`${focus.replace("_", " ")} baseline high`, "pps", "#a0aec0", {width: 1}),
               SW.series(`${focus.replace("_", " ")} threshold`, "pps", "#1a202c", {dash: [6, 4], width: 1.5})],
      bands: [{series: [n + 2, n + 1], fill: "rgba(160, 174, 192, 0.25)"}],
      axes: [SW.timeAxis(), SW.rateAxis("pps", 3, "currentColor")],
      scales: {pps: {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]}},
    };
    if (plot) plot.destroy();
    el.textContent = "";
    plot = SW.chart(el, opts, data);
    el.dataset.points = String(d.time.length);
    el.dataset.resolution = d.resolution;
  }
  for (const b of document.querySelectorAll("button.range")) {
    b.addEventListener("click", () => {
      document.querySelectorAll("button.range").forEach(x => x.classList.toggle("on", x === b));
      range = b.dataset.range;
      load();
    });
  }
  load();
  setInterval(load, REFRESH_MS);
})();
