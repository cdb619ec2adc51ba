// The incident's per-second chart: attack, dropped and passed packets/s (left axis) and bits/s
// (right axis), from the incident's timeline in /api/v1/incidents/ID. The bits/s of each series are
// its packets/s times the second's mean packet size (the engine records the total bits/s).
"use strict";
(function () {
  const el = document.getElementById("incident-chart");
  async function load() {
    const r = await fetch(`/api/v1/incidents/${encodeURIComponent(el.dataset.incident)}`, {credentials: "same-origin"});
    if (!r.ok) return;
    const points = (await r.json()).timeline;
    const bitsPerPacket = points.map(p => (p.pps > 0 ? p.bps / p.pps : 0));
    const col = k => points.map(p => p[k]);
    const bits = k => points.map((p, i) => p[k] * bitsPerPacket[i]);
    const data = [col("t"), col("attack_pps"), col("dropped_pps"), col("passed_pps"),
                  bits("attack_pps"), bits("dropped_pps"), bits("passed_pps")];
    const opts = {
      series: [{},
        SW.series("attack", "pps", "#c53030"), SW.series("dropped", "pps", "#2b6cb0"),
        SW.series("passed", "pps", "#2f855a"),
        SW.series("attack bits", "bps", "#fc8181", {dash: [6, 4]}),
        SW.series("dropped bits", "bps", "#90cdf4", {dash: [6, 4]}),
        SW.series("passed bits", "bps", "#9ae6b4", {dash: [6, 4]})],
      axes: [SW.timeAxis(), SW.rateAxis("pps", 3, "currentColor"), SW.rateAxis("bps", 1, "currentColor")],
      scales: {pps: {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]},
               bps: {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]}},
    };
    SW.chart(el, opts, data);
    el.dataset.points = String(points.length);
  }
  load();
})();
