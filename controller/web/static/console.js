// Draws the telemetry charts from the JSON the page embeds (no inline scripts: the CSP allows only files from here).
(function () {
  "use strict";
  var el = document.getElementById("telemetry-data");
  if (!el || typeof uPlot === "undefined") { return; }
  var data = JSON.parse(el.textContent);
  var colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  function draw(target, series, values) {
    var box = document.getElementById(target);
    if (!box) { return; }
    if (!data.x.length) { box.textContent = "No telemetry windows for this model and cohort yet."; return; }
    var opts = { width: Math.max(box.clientWidth, 320), height: 240, series: [{}].concat(series), scales: { x: { time: true } } };
    new uPlot(opts, [data.x].concat(values), box);
  }
  draw("latency-chart",
    data.series.map(function (s, i) { return { label: s.label, stroke: colours[i % colours.length], spanGaps: true }; }),
    data.series.map(function (s) { return s.values; }));
  draw("count-chart", [{ label: "inferences", stroke: "#475569", fill: "rgba(71,85,105,0.15)" }], [data.counts]);
})();
