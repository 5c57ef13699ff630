// The console's one script: confirmation dialogs that give focus back, and the overview's live
// charts, fed by the admin API's realtime event stream. Everything else is htmx or plain HTML.
"use strict";

(() => {
  let opener = null;

  document.addEventListener("click", (event) => {
    const opens = event.target.closest("[data-opens]");
    if (opens) {
      opener = opens;
      document.getElementById(opens.dataset.opens).showModal();
      return;
    }
    const closes = event.target.closest("[data-closes]");
    if (closes) closes.closest("dialog").close();
  });

  // "close" does not bubble: caught on the way down. Escape closes a dialog too.
  document.addEventListener("close", () => {
    if (opener) opener.focus();
    opener = null;
  }, true);

  document.addEventListener("focusin", (event) => {
    if (event.target.matches("[data-select-all]")) event.target.select();
  });

  const KEEP = 120; // readings drawn: two minutes
  const RATES = [
    ["messages_per_second", "Received", "#1d4ed8"],
    ["sent_per_second", "Sent", "#15803d"],
    ["deferred_per_second", "Deferred", "#b45309"],
    ["rejected_per_second", "Rejected", "#b91c1c"],
  ];

  function chart(element, title, series, data) {
    const options = {
      title,
      width: element.clientWidth || 600,
      height: 220,
      series: [{}, ...series.map(([, label, stroke]) => ({ label, stroke, width: 2 }))],
      // At least half a minute wide, so the first readings show as a line on whole-second ticks.
      scales: { x: { time: true, range: (plot, min, max) => [min, Math.max(max, min + 30)] } },
      axes: [{}, { size: 50 }],
    };
    return new uPlot(options, data, element);
  }

  function live() {
    const root = document.getElementById("live");
    if (!root || !window.uPlot || !window.EventSource) return;
    const throughputData = [[], ...RATES.map(() => [])];
    const depthData = [[], []];
    const throughput = chart(document.getElementById("throughput"), "Messages per second", RATES, throughputData);
    const depth = chart(document.getElementById("depth"), "Queue depth", [["queue_depth", "Queued", "#7c3aed"]], depthData);
    let readings = 0;

    const stream = new EventSource(root.dataset.stream);
    stream.addEventListener("metrics", (message) => {
      const reading = JSON.parse(message.data);
      throughputData[0].push(reading.at);
      RATES.forEach(([key], index) => throughputData[index + 1].push(reading[key]));
      depthData[0].push(reading.at);
      depthData[1].push(reading.queue_depth);
      for (const columns of [throughputData, depthData]) {
        if (columns[0].length > KEEP) columns.forEach((column) => column.shift());
      }
      throughput.setData(throughputData);
      depth.setData(depthData);
      for (const [key] of RATES) document.getElementById(`now-${key}`).textContent = reading[key].toFixed(1);
      document.getElementById("now-queue_depth").textContent = reading.queue_depth;
      readings += 1;
      root.dataset.readings = String(readings);
    });

    window.addEventListener("resize", () => {
      for (const plot of [throughput, depth]) plot.setSize({ width: plot.root.parentElement.clientWidth, height: 220 });
    });
  }

  document.addEventListener("DOMContentLoaded", live);
})();
