// The statistics chart: uPlot (vendored, MIT) over the numbers the page embeds in #stats-data,
// the same as the table below it. window.smtprelayStats keeps {days, series} for tests and tools.
document.addEventListener("DOMContentLoaded", () => {
  const data = JSON.parse(document.getElementById("stats-data").textContent);
  window.smtprelayStats = data;
  const el = document.getElementById("chart");
  if (typeof uPlot === "undefined" || !el) return;
  const colors = ["#1f5fbf", "#1d7a3e", "#b3261e", "#d9480f", "#8a5a00", "#6f42c1", "#0b7285", "#c2255c", "#495057"];
  const xs = data.days.map(d => Date.parse(d + "T00:00:00Z") / 1000);
  const width = () => Math.max(300, Math.min(el.parentElement.clientWidth - 32, 1150));
  const opts = {
    width: width(), height: 320, tzDate: ts => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    series: [{label: "Day", value: (u, v) => v == null ? "" : new Date(v * 1000).toISOString().slice(0, 10)},
             ...data.series.map((s, i) => ({label: s.label, stroke: colors[i % colors.length], width: 2,
                                             points: {show: true, size: 5}}))],
    axes: [{incrs: [86400, 7 * 86400, 28 * 86400], space: 70,
             values: (u, splits) => splits.map(v => new Date(v * 1000).toISOString().slice(0, 10))},
           {label: "Recipients"}],
    scales: {x: {time: true}},
  };
  const chart = new uPlot(opts, [xs, ...data.series.map(s => s.values)], el);
  window.smtprelayChart = chart;
  addEventListener("resize", () => chart.setSize({width: width(), height: 320}));
});
