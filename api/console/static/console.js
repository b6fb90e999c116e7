// stripe-ledger console: small progressive enhancements; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // "/" focuses the customer search, as in most consoles.
  const q = document.getElementById("q");
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && q && document.activeElement !== q && !(e.target instanceof HTMLInputElement)) {
      e.preventDefault();
      q.focus();
    }
  });
  // A form that takes a while (verify, diff) says so and is not sent twice.
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      const b = form.querySelector("button[type=submit]");
      if (b && form.dataset.sent) { return; }
      form.dataset.sent = "1";
      if (b) { b.setAttribute("aria-busy", "true"); b.textContent = b.textContent + "…"; }
    });
  }
});
