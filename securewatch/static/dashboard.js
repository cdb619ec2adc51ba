// The live dashboard: the selected tenant's chart (uPlot) from /api/v1/tenants/ID/series and, for
// the last 5 minutes, one point a second from the server-sent events of /api/v1/tenants/ID/live, which also
// carry the listed tenants' current rates and the active incidents. No page reload.
"use strict";
(function () {
  const el = document.getElementById("chart");
  const updated = document.getElementById("updated");
  let tenant = el.dataset.tenant, range = el.dataset.range, plot = null, data = null, span = 300;
  let source = null, last = 0, events = 0;
  const KEYS = ["passed_pps", "dropped_pps", "passed_bps", "dropped_bps"];

  function opts() {
    return {
      series: [{},
        SW.series("passed", "pps", "#2f855a"), SW.series("dropped", "pps", "#c53030"),
        SW.series("passed bits", "bps", "#68d391", {dash: [6, 4]}),
        SW.series("dropped bits", "bps", "#fc8181", {dash: [6, 4]})],
      axes: [SW.timeAxis(), SW.rateAxis("pps", 3, "currentColor"), SW.rateAxis("bps", 1, "currentColor")],
      scales: {pps: {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]},
               bps: {range: (u, lo, hi) => [0, Math.max(hi, 1) * 1.1]}},
    };
  }
  function columns(s) { return [s.time, ...KEYS.map(k => s[k])]; }

  async function load() {
    if (!tenant) return;
    const r = await fetch(`/api/v1/tenants/${encodeURIComponent(tenant)}/series?range=${range}`,
                          {credentials: "same-origin"});
    if (!r.ok) return;
    const s = await r.json();
    span = s.span_s;
    data = columns(s);
    last = s.time.length ? s.time[s.time.length - 1] : 0;
    if (plot) plot.destroy();
    el.textContent = "";
    plot = SW.chart(el, opts(), data);
    el.dataset.points = String(s.time.length);
    connect();
  }

  function append(points) {
    if (range !== "5m" || !data || !points.length) return;
    for (const p of points) {
      const t = Math.floor(p.time);
      if (data[0].length && t <= data[0][data[0].length - 1]) continue;   // already drawn (from the store)
      data[0].push(t);
      KEYS.forEach((k, i) => data[i + 1].push(p[k]));
    }
    const cut = data[0][data[0].length - 1] - span;
    while (data[0].length && data[0][0] <= cut) data.forEach(col => col.shift());
    plot.setData(data);
    el.dataset.points = String(data[0].length);
  }

  function rows(rates) {
    for (const row of document.querySelectorAll("#traffic tr[data-tenant]")) {
      const t = rates[row.dataset.tenant];
      if (!t) continue;
      for (const cell of row.querySelectorAll("td[data-k]")) {
        const k = cell.dataset.k;
        cell.textContent = SW.rate(t[k], k.endsWith("bps") ? "bps" : "pps");
      }
    }
  }

  function active(list) {
    const body = document.querySelector("#active tbody");
    body.textContent = "";
    if (!list.length) {
      const tr = body.insertRow(); tr.className = "none";
      const td = tr.insertCell(); td.colSpan = 6; td.className = "muted"; td.textContent = "No active incidents.";
      return;
    }
    for (const i of list) {
      const tr = body.insertRow();
      const link = (href, text) => { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; };
      tr.insertCell().append(link(`/incidents/${encodeURIComponent(i.id)}`, i.id));
      tr.insertCell().textContent = i.tenant;
      const target = tr.insertCell();
      if (i.target) target.append(link(`/tenants/${encodeURIComponent(i.tenant)}/servers/${encodeURIComponent(i.target)}`, i.target));
      else target.textContent = "–";
      tr.insertCell().textContent = (i.vectors || []).join(", ");
      const peak = tr.insertCell(); peak.className = "num"; peak.textContent = SW.rate(i.peak_pps, "pps");
      const started = tr.insertCell(); started.textContent = new Date(i.started * 1000).toLocaleString();
      started.title = new Date(i.started * 1000).toISOString();
    }
  }

  function connect() {
    if (source) source.close();
    const ids = [...document.querySelectorAll("#traffic tr[data-tenant]")].map(r => r.dataset.tenant);
    const q = new URLSearchParams({ids: ids.join(","), after: String(last)});
    source = new EventSource(`/api/v1/tenants/${encodeURIComponent(tenant)}/live?` + q.toString());
    source.addEventListener("tick", (e) => {
      const d = JSON.parse(e.data);
      if (d.tenant === tenant) {
        append(d.points);
        if (d.points.length) last = d.points[d.points.length - 1].time;
      }
      rows(d.rows);
      active(d.active);
      events += 1;
      document.body.dataset.liveEvents = String(events);
      updated.textContent = "live, updated " + new Date(d.now * 1000).toLocaleTimeString();
    });
    source.onerror = () => { updated.textContent = "reconnecting…"; };
  }

  for (const b of document.querySelectorAll("button.range")) {
    b.addEventListener("click", () => {
      document.querySelectorAll("button.range").forEach(x => x.classList.toggle("on", x === b));
      range = b.dataset.range;
      el.dataset.range = range;
      load();
    });
  }
  for (const a of document.querySelectorAll("#traffic a.select")) {
    a.addEventListener("click", (e) => {
      e.preventDefault();
      tenant = a.dataset.tenant;
      el.dataset.tenant = tenant;
      document.getElementById("chart-tenant").textContent = tenant;
      document.querySelectorAll("#traffic tr").forEach(r => r.classList.toggle("selected", r.dataset.tenant === tenant));
      history.replaceState(null, "", a.href);
      load();
    });
  }
  if (tenant) load();
})();
