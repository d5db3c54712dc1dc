// distillguard console: small progressive enhancement. Every page works without it.
// A job's page polls its JSON and moves the progress bar; the report link appears when done.
"use strict";
(function () {
  function poll(box) {
    var url = box.getAttribute("data-job-url");
    var bar = box.querySelector("progress");
    var stage = box.querySelector("[data-stage]");
    var status = box.querySelector("[data-status]");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (job) {
          if (!job) { return; }
          if (bar) { bar.value = job.progress; bar.textContent = Math.round(job.progress * 100) + "%"; }
          if (stage) { stage.textContent = job.stage; }
          if (status) { status.textContent = job.status; }
          if (job.status === "running" || job.status === "queued") {
            setTimeout(tick, 1000);
          } else {
            window.location.reload();
          }
        })
        .catch(function () { setTimeout(tick, 3000); });
    }
    setTimeout(tick, 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var boxes = document.querySelectorAll("[data-job-url]");
    for (var i = 0; i < boxes.length; i++) { poll(boxes[i]); }
    var noscript = document.querySelectorAll("[data-without-js]");
    for (var j = 0; j < noscript.length; j++) { noscript[j].hidden = true; }
  });
})();
