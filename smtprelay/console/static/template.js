// The template editor's live preview: the parts as typed and the sample data go to
// /console/templates/draft (the admin API's POST /templates/draft: render + check, nothing saved);
// the answer fills the subject, text and findings; the HTML goes to a frame through
// /console/templates/draft-frame, served in a CSP sandbox (no script, no remote load).
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("template-edit");
  if (!form) return;
  const $ = id => document.getElementById(id);
  let timer = null, seq = 0;
  async function refresh() {
    const mine = ++seq;
    const body = new URLSearchParams();
    for (const k of ["csrf", "subject", "html", "text", "data"]) body.set(k, form.elements[k] ? form.elements[k].value : "");
    let answer;
    try {
      const r = await fetch(form.dataset.draft, {method: "POST", body, credentials: "same-origin"});
      answer = await r.json();
    } catch (e) { answer = {error: "the preview is not available: " + e}; }
    if (mine !== seq) return;
    const err = $("data-error");
    if (answer.error) {
      err.hidden = false; err.textContent = answer.error;
      const field = answer.field && form.elements[answer.field];
      err.dataset.field = answer.field || "";
      if (field) field.setAttribute("aria-invalid", "true");
      return;
    }
    err.hidden = true; err.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    $("preview-subject").textContent = answer.subject || "";
    const frame = $("frame-form");      // the frame's document comes with its own sandbox policy
    for (const k of ["subject", "html", "text", "data"]) frame.elements[k].value = form.elements[k].value;
    frame.submit();
    $("preview-text").textContent = answer.text || "";
    const list = $("findings");
    list.replaceChildren();
    for (const f of answer.findings) {
      const li = document.createElement("li");
      li.className = f.level; li.textContent = `${f.level}: ${f.message}`;
      list.appendChild(li);
    }
    if (!answer.findings.length) { const li = document.createElement("li"); li.textContent = "No finding."; list.appendChild(li); }
    form.dataset.previewed = String(mine);
  }
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 250); });
  refresh();
});
