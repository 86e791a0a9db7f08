// Duet console: the overview's charts, drawn with uPlot (vendored) from
// /overview/charts.json, redrawn every minute.
(function () {
  "use strict";
  var colours = ["#1d6fd1", "#c0392b", "#8e6c00", "#666666"];
  var stateColours = { succeeded: "#1e8e3e", failed: "#c0392b", expired: "#8e6c00", cancelled: "#666666" };
  var plots = {};

  function draw(name, data) {
    var el = document.getElementById("chart-" + name);
    if (!el || !window.uPlot || !data || !data.x) { return; }
    var series = [{}];
    for (var i = 0; i < data.labels.length; i++) {
      var c = stateColours[data.labels[i]] || colours[i % colours.length];
      series.push({ label: data.labels[i], stroke: c, width: 2, points: { show: data.x.length < 40 } });
    }
    var rows = [data.x].concat(data.series);
    if (plots[name]) { plots[name].setData(rows); return; }
    var width = Math.max(260, el.clientWidth || 400);
    plots[name] = new window.uPlot({ width: width, height: 200, series: series, scales: { x: { time: true } },
      axes: [{}, { size: 50 }] }, rows, el);
    el.dataset.points = String(data.x.length);
  }

  function load() {
    var sec = document.getElementById("charts");
    if (!sec) { return; }
    fetch(sec.dataset.src, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("the controller answered " + r.status); }
        return r.json();
      })
      .then(function (d) {
        document.getElementById("charts-error").hidden = true;
        ["activity", "task_outcomes", "new_devices"].forEach(function (n) { draw(n, d[n]); });
        sec.dataset.loaded = "true";
      })
      .catch(function (e) {
        var p = document.getElementById("charts-error");
        p.textContent = "The charts could not be loaded (" + e.message + "); they are retried every minute.";
        p.hidden = false;
      });
  }
  document.addEventListener("DOMContentLoaded", function () {
    load();
    setInterval(load, 60000);
  });
})();
