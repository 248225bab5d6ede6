// keyturn serve: the only script (embedded in the binary; the CSP allows no inline
// script). Progressive: every page works without it; with it, Rotate now and Resume
// POST to the JSON API with the page's CSRF token, and the rotation's progress shows
// live. Values are written with textContent only, never as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const enc = encodeURIComponent;

  function post(url) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Keyturn-Csrf": csrf },
    }).then((r) => r.json().then((body) => ({ status: r.status, body })));
  }

  function setOutcome(outcome, text, reason) {
    const cell = document.getElementById("outcome");
    if (!cell) return;
    const b = document.createElement("span");
    b.className = "badge o-" + outcome;
    b.dataset.outcome = outcome;
    b.textContent = text;
    cell.replaceChildren(b);
    const r = document.getElementById("reason");
    if (r && reason !== undefined) r.textContent = reason;
  }

  function poll(url, button, out, list) {
    fetch(url, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((job) => {
        list.replaceChildren(
          ...(job.Steps || []).map((s) => {
            const li = document.createElement("li");
            li.textContent = s;
            return li;
          })
        );
        if (job.State === "running") {
          out.textContent = "running…";
          setTimeout(() => poll(url, button, out, list), 500);
          return;
        }
        button.disabled = false;
        if (job.State === "finished" && job.Report) {
          out.textContent = "finished: " + job.Report.Outcome;
          setOutcome(job.Report.Outcome, job.Report.Outcome, job.Report.Reason);
        } else {
          out.textContent = "error: " + (job.Error || "unknown");
        }
      })
      .catch((e) => {
        button.disabled = false;
        out.textContent = "error: " + e;
      });
  }

  const rotate = document.getElementById("rotate");
  if (rotate) {
    rotate.addEventListener("click", () => {
      const out = document.getElementById("progress");
      const list = document.getElementById("steps");
      const url =
        "/api/users/" + enc(rotate.dataset.account) + "/" + enc(rotate.dataset.user);
      rotate.disabled = true;
      out.textContent = "starting…";
      post(url + "/rotate").then(({ status, body }) => {
        if (status === 202) {
          poll(url + "/rotation", rotate, out, list);
        } else {
          rotate.disabled = false;
          out.textContent = body.Error || "HTTP " + status;
        }
      });
    });
  }

  document.querySelectorAll("button.resume").forEach((button) => {
    button.addEventListener("click", () => {
      const out = button.nextElementSibling;
      button.disabled = true;
      out.textContent = "resuming…";
      post("/api/runs/" + enc(button.dataset.run) + "/resume").then(({ status, body }) => {
        button.disabled = false;
        out.textContent =
          status === 200
            ? "exit " + body.ExitCode + ": " + body.Messages
            : body.Error || "HTTP " + status;
      });
    });
  });
})();
