// Duet console: the little script the pages need besides htmx. No inline
// script anywhere (the Content-Security-Policy forbids it).
(function () {
  "use strict";
  function flash(msg) {
    var el = document.getElementById("flash");
    if (!el) { return; }
    el.textContent = msg;
    el.className = "container-fluid error";
  }
  document.addEventListener("htmx:configRequest", function (e) {
    // Every htmx POST carries the session's CSRF token.
    var m = document.querySelector('meta[name="csrf-token"]');
    if (m) { e.detail.headers["X-CSRF-Token"] = m.content; }
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    var xhr = e.detail.xhr;
    if (xhr.status === 401 && xhr.getResponseHeader("HX-Redirect")) { return; }
    if (xhr.status >= 400) {
      // Show the server's explanation in the banner, leave the page as it is.
      e.detail.shouldSwap = false;
      var tmp = document.createElement("div");
      tmp.innerHTML = xhr.responseText;
      flash(tmp.textContent.trim() || ("The request failed (" + xhr.status + ")."));
    }
  });
  // A plain form with data-confirm asks first (htmx forms use hx-confirm).
  document.addEventListener("submit", function (e) {
    var m = e.target.dataset && e.target.dataset.confirm;
    if (m && !window.confirm(m)) { e.preventDefault(); }
  });
  // The device list's "select every device of this page".
  document.addEventListener("change", function (e) {
    if (e.target.id !== "select-all") { return; }
    var boxes = document.querySelectorAll('#selection input[name="ids"]');
    for (var i = 0; i < boxes.length; i++) { boxes[i].checked = e.target.checked; }
  });
  document.addEventListener("htmx:sendError", function () {
    flash("The controller cannot be reached. Check the network; the page retries live parts by itself.");
  });
  document.addEventListener("htmx:sseError", function () {
    flash("The live connection to the controller was lost; figures may be out of date. It reconnects by itself.");
  });
  document.addEventListener("htmx:sseOpen", function () {
    var el = document.getElementById("flash");
    if (el && el.className.indexOf("error") >= 0) { el.textContent = ""; el.className = "container-fluid"; }
  });
})();
