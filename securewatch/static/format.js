// The browser side of securewatch/formatting.py: rates and counts as the pages show them, and every
// <time datetime> element in the viewer's time zone (the UTC text the server wrote stays on hover).
"use strict";
window.SeawallFormat = (function () {
  const STEPS = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  const grouped1 = new Intl.NumberFormat("en-US", {minimumFractionDigits: 1, maximumFractionDigits: 1});
  const grouped0 = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});
  function rate(v, unit) {
    if (v === null || v === undefined) return "–";
    for (const [f, p] of STEPS) if (Math.abs(v) >= f) return grouped1.format(v / f) + " " + p + unit;
    return grouped0.format(v) + " " + unit;
  }
  function number(v) {
    if (v === null || v === undefined) return "–";
    return Number.isInteger(v) ? grouped0.format(v) : grouped1.format(v);
  }
  const local = new Intl.DateTimeFormat("en-CA", {year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short"});
  function localTime(date) {
    const p = {};
    for (const part of local.formatToParts(date)) p[part.type] = part.value;
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
  }
  function localiseTimes(root) {
    for (const el of (root || document).querySelectorAll("time[datetime]")) {
      const d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = localTime(d);
    }
  }
  // A card whose table is wider than a phone scrolls sideways (securewatch.css); keyboard users
  // reach that scroll only if the card can take the focus, so such cards become named regions.
  function markScrollers() {
    for (const card of document.querySelectorAll(".card")) {
      const scrolls = card.scrollWidth > card.clientWidth + 1;
      if (scrolls && !card.hasAttribute("tabindex")) {
        const heading = card.querySelector("h1, h2");
        card.setAttribute("tabindex", "0");
        card.setAttribute("role", "region");
        card.setAttribute("aria-label", (heading ? heading.textContent.trim() : "table") + " (scrolls sideways)");
        card.dataset.scrollRegion = "1";
      } else if (!scrolls && card.dataset.scrollRegion) {
        for (const a of ["tabindex", "role", "aria-label", "data-scroll-region"]) card.removeAttribute(a);
      }
    }
  }
  document.addEventListener("DOMContentLoaded", () => { localiseTimes(document); markScrollers(); });
  window.addEventListener("resize", markScrollers);
  return {rate, number, localTime, localiseTimes, markScrollers};
})();
