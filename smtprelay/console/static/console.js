// smtprelay console: the few things a page cannot do without a script.
// - Times: every <time datetime="...Z"> shows the browser's local time; UTC stays in the tooltip.
// - Copy buttons: copy a DNS record's value.
// - Tasks: the browser's time zone goes with a first-run time typed in local time.
document.addEventListener("DOMContentLoaded", () => {
  const zone = document.getElementById("zone");
  if (zone && !zone.value) { try { zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {} }
  for (const el of document.querySelectorAll("time[datetime]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (isNaN(d)) continue;
    el.title = el.getAttribute("datetime").replace("T", " ").replace("Z", " UTC");
    el.textContent = el.getAttribute("datetime").length <= 10 ? d.toLocaleDateString() : d.toLocaleString();
  }
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
      catch (e) { const r = document.createRange(); r.selectNodeContents(document.getElementById(button.dataset.copy));
                  const s = getSelection(); s.removeAllRanges(); s.addRange(r); button.textContent = "Selected"; }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
});
