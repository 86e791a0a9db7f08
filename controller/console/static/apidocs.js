// Renders the REST API's OpenAPI document with the vendored Redoc.
(function () {
  "use strict";
  var el = document.getElementById("redoc");
  if (el && window.Redoc) {
    window.Redoc.init(el.dataset.spec, { hideDownloadButton: false, disableSearch: false }, el);
  }
})();
