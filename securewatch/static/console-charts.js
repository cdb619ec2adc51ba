// Shared chart helpers of SecureWatch's pages (dashboard, per-server view, incident) over the
// vendored uPlot: unit formatting with thousands separators, axes wide enough for their labels,
// hover values in the legend. No network access: data comes from this origin's API.
"use strict";
window.SW = (function () {
  const group = new Intl.NumberFormat(undefined, {maximumFractionDigits: 1});
  // 1,234 pps / 12.3 kpps / 4.5 Mbps: SI prefixes, one decimal, grouped digits below 1,000.
  function rate(v, unit) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (const [f, p] of steps) if (Math.abs(v) >= f) return group.format(v / f) + " " + p + unit;
    return group.format(v) + " " + unit;
  }
  // An axis as wide as its widest label (plus the tick and a margin): labels are never cut off.
  function axisSize(self, values, axisIdx, cycleNum) {
    const axis = self.axes[axisIdx];
    if (cycleNum > 1) return axis._size;   // uPlot asks again after laying out: keep the first answer
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
    if (longest) {
      self.ctx.font = axis.font[0];
      size += self.ctx.measureText(longest).width / devicePixelRatio;
    }
    return Math.ceil(size) + 8;   // px of margin
  }
  function rateAxis(unit, side, stroke) {
    return {scale: unit, side: side, size: axisSize, stroke: stroke,
            values: (u, splits) => splits.map(v => rate(v, unit)), grid: {show: side === 3}};
  }
  // Whole seconds and up: an incident of a few seconds must not get ticks at ":32.500".
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                      86400, 172800, 604800, 2592000];
  function timeAxis() {
    return {stroke: "currentColor", incrs: TIME_INCRS, space: 60};
  }
  function series(label, unit, colour, opts) {
    return Object.assign({label: label, scale: unit, stroke: colour, width: 2,
                          value: (u, v) => rate(v, unit)}, opts || {});
  }
  function chart(el, opts, data) {
    const width = () => Math.max(280, el.clientWidth);
    const plot = new uPlot(Object.assign({width: width(), height: 260, legend: {live: true},
                                          cursor: {drag: {x: true, y: false}}}, opts), data, el);
    window.addEventListener("resize", () => plot.setSize({width: width(), height: 260}));
    return plot;
  }
  return {rate: rate, rateAxis: rateAxis, timeAxis: timeAxis, series: series, chart: chart};
})();
